/* SPDX-License-Identifier: MIT */
/*
 * vhdx.c - the VHDX format driver (Microsoft Hyper-V virtual hard disk v2), the reader: the file
 * identifier, the two headers (CRC-32C; the valid one with the higher sequence number is current), the
 * two region tables (the BAT and metadata regions; an unknown region marked required is refused), the
 * metadata items (file parameters, virtual disk size, logical and physical sector sizes, page 83 data,
 * parent locator), the BAT with its payload and sector-bitmap entries interleaved by the chunk ratio, and
 * every payload block state.  A header naming a log (non-zero LogGuid) has its active sequence found and
 * replayed into an in-memory overlay of the file, never onto the file by a read-only open: metadata, BAT
 * and payload reads go through the overlay (a writable open has write.c put the overlay onto the file once
 * everything has been checked through it).  Differencing disks name their parent in the parent locator
 * (relative, volume and absolute Win32 paths, as backing candidates for lib/backing.c to resolve) and are
 * checked against the parent's DataWriteGuid once the chain is attached.  Every field is untrusted:
 * offsets are checked against the file, the BAT, the log scan and the replay overlay have memory and
 * work budgets, bad BAT entries read as EIO.  It knows nothing of FUSE; writes, write-zeroes, discard, flush and the writable
 * open's checks and log replay are write.c's (reads take its lock shared when the image is writable).
 */
#include "block.h"
#include "util.h"

#include <errno.h>
#include <inttypes.h>
#include <limits.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "vhdx.h"


/* ---------------------------------------------------------------- small helpers */


/* ---------------------------------------------------------------- the file through the replayed log */

/* Does [off, off + len) of the file touch a piece of the replayed log? */
static bool overlay_touches(const VhdxState *s, uint64_t off, uint64_t len)
{
    if (!s->n_overlay || !ranges_overlap(off, len, s->overlay_lo, s->overlay_hi - s->overlay_lo))
        return false;
    for (size_t i = 0; i < s->n_overlay; i++)
        if (ranges_overlap(off, len, s->overlay[i].off, s->overlay[i].len))
            return true;
    return false;
}

/* Reads the file as the replayed log leaves it: the file's bytes (zeros past its end), then every
 * overlay piece in the order the log applied them. */
static int vhdx_file_read(BlockNode *bs, uint64_t off, uint64_t len, void *buf)
{
    VhdxState *s = bs->opaque;
    if (off > (uint64_t)INT64_MAX || len > (uint64_t)INT64_MAX - off)
        return -EIO;
    int r = bdrv_pread(bs->file, (int64_t)off, (int64_t)len, buf);
    if (r < 0 || !overlay_touches(s, off, len))
        return r;
    for (size_t i = 0; i < s->n_overlay; i++) {
        const OverlayRec *o = &s->overlay[i];
        if (!ranges_overlap(off, len, o->off, o->len))
            continue;
        uint64_t from = MAX(off, o->off), to = MIN(off + len, o->off + o->len);
        uint8_t *dst = (uint8_t *)buf + (from - off);
        if (o->data)
            memcpy(dst, o->data + (from - o->off), to - from);
        else
            memset(dst, 0, to - from);
    }
    return 0;
}

/* ---------------------------------------------------------------- probe, file identifier, headers */

static int vhdx_probe(const uint8_t *buf, size_t len, const char *filename)
{
    (void)filename;
    return len >= 8 && memcmp(buf, "vhdxfile", 8) == 0 ? 100 : 0;
}

static int vhdx_read_identifier(BlockNode *bs, VhdxState *s, Error *err)
{
    uint8_t id[520];
    if (s->file_size < VHDX_RT2_OFF + VHDX_RT_BYTES) {
        error_set(err, EINVAL, "file too short for a VHDX image (%" PRId64 " bytes, headers and region tables need "
                  "%lld)", s->file_size, VHDX_RT2_OFF + VHDX_RT_BYTES);
        return -EINVAL;
    }
    int r = bdrv_pread(bs->file, 0, sizeof(id), id);
    if (r < 0) {
        error_set(err, -r, "cannot read the file identifier: %s", strerror(-r));
        return r;
    }
    if (memcmp(id, "vhdxfile", 8) != 0) {
        error_set(err, EINVAL, "no VHDX file identifier ('vhdxfile') at offset 0");
        return -EINVAL;
    }
    utf16_to_utf8(id + 8, 512, false, false, s->creator, sizeof(s->creator));
    return 0;
}

static bool header_valid(const uint8_t *h)
{
    return memcmp(h + HD_SIG, "head", 4) == 0 && vhdx_crc(h, VHDX_HEADER_BYTES, HD_CRC) == ld_le32(h + HD_CRC);
}

/* The current header: the only valid one, or the valid one with the higher sequence number. */
static int vhdx_read_headers(BlockNode *bs, VhdxState *s, Error *err)
{
    uint8_t h[2][VHDX_HEADER_BYTES];
    int r = bdrv_pread(bs->file, VHDX_HEADER1_OFF, VHDX_HEADER_BYTES, h[0]);
    if (r == 0)
        r = bdrv_pread(bs->file, VHDX_HEADER2_OFF, VHDX_HEADER_BYTES, h[1]);
    if (r < 0) {
        error_set(err, -r, "cannot read the headers: %s", strerror(-r));
        return r;
    }
    bool v1 = header_valid(h[0]), v2 = header_valid(h[1]);
    if (!v1 && !v2) {
        error_set(err, EINVAL, "neither header is valid (signature 'head' and CRC-32C at 64 KiB and 128 KiB)");
        return -EINVAL;
    }
    int pick = !v1 ? 1 : !v2 ? 0 : ld_le64(h[1] + HD_SEQ) > ld_le64(h[0] + HD_SEQ) ? 1 : 0;
    memcpy(s->header, h[pick], VHDX_HEADER_BYTES);
    s->header_index = pick + 1;
    uint16_t version = ld_le16(s->header + HD_VERSION), log_version = ld_le16(s->header + HD_LOG_VERSION);
    if (version != 1 || log_version != 0) {
        error_set(err, ENOTSUP, "unsupported header version %u (log version %u); version 1 (log version 0) is known",
                  version, log_version);
        return -ENOTSUP;
    }
    s->log_length = ld_le32(s->header + HD_LOG_LENGTH);
    s->log_offset = ld_le64(s->header + HD_LOG_OFFSET);
    uint64_t end;
    if (s->log_length % VHDX_ALIGN || s->log_offset % VHDX_ALIGN ||
        (s->log_length && (s->log_offset < VHDX_ALIGN || !add_ok_u64(s->log_offset, s->log_length, &end) ||
                           end > (uint64_t)s->file_size))) {
        error_set(err, EINVAL, "log (offset %" PRIu64 ", %" PRIu32 " bytes) is not 1 MiB aligned or lies outside "
                  "the file (%" PRId64 " bytes)", s->log_offset, s->log_length, s->file_size);
        return -EINVAL;
    }
    return 0;
}

/* ---------------------------------------------------------------- the log */

/* What one valid log entry says. */
typedef struct LogEntry {
    uint64_t pos;    /* offset inside the log */
    uint32_t length;
    uint32_t tail;
    uint64_t seq;
    uint64_t flushed, last;
} LogEntry;

typedef struct LogScan {
    uint64_t budget; /* bytes of entries that may still be checksummed */
    uint8_t *buf;    /* one entry (at most log_length bytes) */
} LogScan;

/* Reads len bytes of the log ring from pos on (wrapping at its end) into buf. */
static int log_read(BlockNode *bs, VhdxState *s, uint64_t pos, uint64_t len, uint8_t *buf)
{
    while (len > 0) {
        pos %= s->log_length;
        uint64_t n = MIN(len, s->log_length - pos);
        int r = bdrv_pread(bs->file, (int64_t)(s->log_offset + pos), (int64_t)n, buf);
        if (r < 0)
            return r;
        pos += n;
        buf += n;
        len -= n;
    }
    return 0;
}

/* Sectors an entry with count descriptors spends on its header and descriptors. */
static uint64_t desc_sectors(uint32_t count)
{
    return ((uint64_t)count * LD_BYTES + LE_HEADER_BYTES + VHDX_LOG_SECTOR - 1) / VHDX_LOG_SECTOR;
}

/* Checks the descriptors and data sectors of the entry in buf (its CRC already verified). */
static bool log_entry_body_valid(const uint8_t *buf, uint32_t length, uint32_t count, uint64_t seq)
{
    uint64_t data_sector = desc_sectors(count);
    for (uint32_t i = 0; i < count; i++) {
        const uint8_t *d = buf + LE_HEADER_BYTES + (uint64_t)i * LD_BYTES;
        uint64_t off = ld_le64(d + LD_FILE_OFF);
        if (ld_le64(d + LD_SEQ) != seq || off % VHDX_LOG_SECTOR)
            return false;
        if (memcmp(d, "zero", 4) == 0) {
            if (ld_le64(d + LD_ZERO_LENGTH) % VHDX_LOG_SECTOR)
                return false;
            continue;
        }
        if (memcmp(d, "desc", 4) != 0 || (data_sector + 1) * VHDX_LOG_SECTOR > length)
            return false;
        const uint8_t *ds = buf + data_sector * VHDX_LOG_SECTOR;
        if (memcmp(ds, "data", 4) != 0 || ld_le32(ds + 4) != (uint32_t)(seq >> 32) ||
            ld_le32(ds + VHDX_LOG_SECTOR - 4) != (uint32_t)seq)
            return false;
        data_sector++;
    }
    return true;
}

/* Whether a valid entry starts at pos of the log; fills e. A negative errno on a read failure. */
static int log_entry_at(BlockNode *bs, VhdxState *s, LogScan *ls, uint64_t pos, LogEntry *e)
{
    uint8_t *h = ls->buf;
    int r = log_read(bs, s, pos, VHDX_LOG_SECTOR, h);
    if (r < 0)
        return r;
    uint32_t length = ld_le32(h + LE_LENGTH), tail = ld_le32(h + LE_TAIL), count = ld_le32(h + LE_DESC_COUNT);
    uint64_t seq = ld_le64(h + LE_SEQ);
    if (memcmp(h, "loge", 4) != 0 || !length || length % VHDX_LOG_SECTOR || length > s->log_length ||
        length > VHDX_MAX_LOG_ENTRY_BYTES ||
        tail % VHDX_LOG_SECTOR || tail >= s->log_length || seq == 0 ||
        memcmp(h + LE_LOG_GUID, s->header + HD_LOG_GUID, 16) != 0 ||
        desc_sectors(count) * VHDX_LOG_SECTOR > length)
        return 0;
    if (length > ls->budget)
        return -E2BIG;
    ls->budget -= length;
    if (length > VHDX_LOG_SECTOR && (r = log_read(bs, s, pos, length, h)) < 0)
        return r;
    if (vhdx_crc(h, length, LE_CRC) != ld_le32(h + LE_CRC) || !log_entry_body_valid(h, length, count, seq))
        return 0;
    *e = (LogEntry){ .pos = pos, .length = length, .tail = tail, .seq = seq,
                     .flushed = ld_le64(h + LE_FLUSHED), .last = ld_le64(h + LE_LAST) };
    return 1;
}

/*
 * The active sequence: from each position, a run of valid entries whose sequence numbers go up by one,
 * each starting where the last ended (around the ring). A run whose last entry's tail is the position of
 * one of its entries is complete, from that entry to the last; the complete run with the highest sequence
 * number is the active one. *first and *last receive its ends; *n its entry count (0: none found).
 */
static int log_find_active(BlockNode *bs, VhdxState *s, LogScan *ls, LogEntry *first, LogEntry *last, uint64_t *n)
{
    uint64_t max_run = s->log_length / VHDX_LOG_SECTOR;
    LogEntry *run = malloc(max_run * sizeof(*run));
    if (!run)
        return -ENOMEM;
    *n = 0;
    uint64_t pos = 0;
    int r = 0;
    while (pos < s->log_length) {
        uint64_t k = 0, at = pos, used = 0;
        while (k < max_run && used < s->log_length) {
            LogEntry e;
            r = log_entry_at(bs, s, ls, at, &e);
            if (r < 0)
                goto out;
            if (r == 0 || (k && e.seq != run[k - 1].seq + 1))
                break;
            run[k++] = e;
            used += e.length;
            at = (at + e.length) % s->log_length;
        }
        r = 0;
        for (uint64_t i = 0; i < k; i++) {
            if (run[i].pos != run[k - 1].tail || (*n && run[k - 1].seq <= last->seq))
                continue;
            *first = run[i];
            *last = run[k - 1];
            *n = k - i;
            break;
        }
        if (k && pos + used >= s->log_length)
            break; /* the run wrapped: every later start lies inside it (a suffix, or no entry) */
        pos += k ? used : VHDX_LOG_SECTOR;
    }
out:
    free(run);
    return r;
}

static int overlay_add(VhdxState *s, uint64_t off, uint64_t len, const uint8_t *data)
{
    if (s->n_overlay >= VHDX_MAX_OVERLAY_RECORDS || (data && s->overlay_bytes + len > VHDX_MAX_OVERLAY_BYTES))
        return -E2BIG;
    if (s->n_overlay % 256 == 0) {
        OverlayRec *o = realloc(s->overlay, (s->n_overlay + 256) * sizeof(*o));
        if (!o)
            return -ENOMEM;
        s->overlay = o;
    }
    uint8_t *copy = NULL;
    if (data && !(copy = malloc(len)))
        return -ENOMEM;
    if (copy) {
        memcpy(copy, data, len);
        s->overlay_bytes += len;
    }
    s->overlay_lo = s->n_overlay ? MIN(s->overlay_lo, off) : off;
    s->overlay_hi = s->n_overlay ? MAX(s->overlay_hi, off + len) : off + len;
    s->overlay[s->n_overlay++] = (OverlayRec){ .off = off, .len = len, .data = copy };
    return 0;
}

/* Applies the descriptors of the entry in buf (validated by log_entry_at) to the overlay. */
static int log_apply_entry(VhdxState *s, const uint8_t *buf, uint64_t *end)
{
    uint32_t count = ld_le32(buf + LE_DESC_COUNT);
    uint64_t data_sector = desc_sectors(count);
    uint8_t sector[VHDX_LOG_SECTOR];
    for (uint32_t i = 0; i < count; i++) {
        const uint8_t *d = buf + LE_HEADER_BYTES + (uint64_t)i * LD_BYTES;
        uint64_t off = ld_le64(d + LD_FILE_OFF), len = VHDX_LOG_SECTOR, e;
        const uint8_t *data = NULL;
        if (memcmp(d, "zero", 4) == 0) {
            len = ld_le64(d + LD_ZERO_LENGTH);
        } else {
            const uint8_t *ds = buf + data_sector++ * VHDX_LOG_SECTOR;
            memcpy(sector, d + LD_LEADING, 8);
            memcpy(sector + 8, ds + 8, VHDX_LOG_SECTOR - 12);
            memcpy(sector + VHDX_LOG_SECTOR - 4, d + LD_TRAILING, 4);
            data = sector;
        }
        if (!add_ok_u64(off, len, &e) || e > (uint64_t)INT64_MAX)
            return -EINVAL;
        if (len == 0)
            continue;
        int r = overlay_add(s, off, len, data);
        if (r < 0)
            return r;
        *end = MAX(*end, e);
    }
    return 0;
}

/* Replays the n entries of the active sequence from first on, each read and checked again (the file may
 * have changed since the scan) before its descriptors are applied. */
static int log_replay(BlockNode *bs, VhdxState *s, LogScan *ls, const LogEntry *first, uint64_t n, Error *err)
{
    uint64_t pos = first->pos, end = (uint64_t)s->file_size;
    LogScan again = { .budget = UINT64_MAX, .buf = ls->buf };
    for (uint64_t i = 0; i < n; i++) {
        LogEntry e = { 0 };
        int r = log_entry_at(bs, s, &again, pos, &e);
        uint32_t length = e.length;
        if (r == 0 || (r == 1 && e.seq != first->seq + i))
            r = -EIO;
        if (r == 1)
            r = log_apply_entry(s, ls->buf, &end);
        if (r == -E2BIG) {
            error_set(err, EFBIG, "replaying the log needs more than %lld MiB or %d pieces in memory",
                      VHDX_MAX_OVERLAY_BYTES / MiB, VHDX_MAX_OVERLAY_RECORDS);
            return -EFBIG;
        }
        if (r < 0) {
            error_set(err, -r, "cannot replay the log: %s", strerror(-r));
            return r;
        }
        pos = (pos + length) % s->log_length;
    }
    s->eff_size = (int64_t)MAX(end, (uint64_t)s->eff_size);
    return 0;
}

/* A non-zero LogGuid: find the active sequence and replay it into the overlay (the file is never written). */
static int vhdx_open_log(BlockNode *bs, VhdxState *s, Error *err)
{
    if (vhdx_guid_is_zero(s->header + HD_LOG_GUID))
        return 0;
    if (s->log_length == 0 || s->log_length > VHDX_MAX_LOG_BYTES) {
        error_set(err, EINVAL, "the log must be replayed, but its length (%" PRIu32 " bytes) is %s", s->log_length,
                  s->log_length ? "more than this driver scans (256 MiB)" : "zero");
        return -EINVAL;
    }
    LogScan ls = { .budget = (uint64_t)VHDX_LOG_SCAN_FACTOR * s->log_length,
                   .buf = malloc(MIN(s->log_length, (uint32_t)VHDX_MAX_LOG_ENTRY_BYTES)) };
    if (!ls.buf) {
        error_set(err, ENOMEM, "out of memory for the log");
        return -ENOMEM;
    }
    LogEntry first = { 0 }, last = { 0 };
    uint64_t n = 0;
    int r = log_find_active(bs, s, &ls, &first, &last, &n);
    if (r == -E2BIG) {
        error_set(err, EINVAL, "log entries overlap: scanning them would checksum more than %d times the log's "
                  "length", VHDX_LOG_SCAN_FACTOR);
        r = -EINVAL;
    } else if (r < 0) {
        error_set(err, -r, "cannot read the log: %s", strerror(-r));
    } else if (n == 0) {
        error_set(err, EINVAL, "the header names a log (LogGuid set) but the log holds no valid sequence of entries");
        r = -EINVAL;
    } else if (last.flushed > (uint64_t)s->file_size) {
        error_set(err, EINVAL, "the file (%" PRId64 " bytes) is shorter than the log's flushed file offset %" PRIu64
                  ": it was truncated", s->file_size, last.flushed);
        r = -EINVAL;
    } else if ((r = log_replay(bs, s, &ls, &first, n, err)) == 0) {
        s->log_entries = n;
        s->log_seq_first = first.seq;
        s->log_seq_last = last.seq;
        s->eff_size = (int64_t)MAX((uint64_t)s->eff_size, MIN(last.last, (uint64_t)INT64_MAX));
    }
    free(ls.buf);
    return r;
}

/* ---------------------------------------------------------------- region table */

static bool region_table_valid(const uint8_t *t)
{
    return memcmp(t, "regi", 4) == 0 && vhdx_crc(t, VHDX_RT_BYTES, 4) == ld_le32(t + 4) &&
           ld_le32(t + 8) <= VHDX_RT_MAX_ENTRIES;
}

/* One region: 1 MiB aligned, inside the file, clear of the headers and the log. */
static int region_check(VhdxState *s, const char *what, uint64_t off, uint64_t len, Error *err)
{
    uint64_t end;
    if (off % VHDX_ALIGN || len % VHDX_ALIGN || off < VHDX_ALIGN || len == 0 || !add_ok_u64(off, len, &end) ||
        end > (uint64_t)s->eff_size || (s->log_length && ranges_overlap(off, len, s->log_offset, s->log_length))) {
        error_set(err, EINVAL, "%s region (offset %" PRIu64 ", %" PRIu64 " bytes) is not 1 MiB aligned, lies "
                  "outside the file (%" PRId64 " bytes) or overlaps the log", what, off, len, s->eff_size);
        return -EINVAL;
    }
    return 0;
}

static int region_parse(VhdxState *s, const uint8_t *t, Error *err)
{
    uint32_t count = ld_le32(t + 8);
    bool have_bat = false, have_md = false;
    for (uint32_t i = 0; i < count; i++) {
        const uint8_t *e = t + 16 + (size_t)i * 32;
        uint64_t off = ld_le64(e + 16), len = ld_le32(e + 24);
        bool required = ld_le32(e + 28) & 1;
        bool bat = vhdx_guid_eq(e, &GUID_BAT), md = vhdx_guid_eq(e, &GUID_METADATA);
        char g[VHDX_GUID_STR];
        if (!bat && !md) {
            if (!required)
                continue;
            vhdx_format_guid(e, g);
            error_set(err, ENOTSUP, "unknown required region %s in the region table", g);
            return -ENOTSUP;
        }
        if ((bat && have_bat) || (md && have_md)) {
            error_set(err, EINVAL, "the region table lists the %s region twice", bat ? "BAT" : "metadata");
            return -EINVAL;
        }
        int r = region_check(s, bat ? "BAT" : "metadata", off, len, err);
        if (r < 0)
            return r;
        if (bat) {
            s->bat_offset = off, s->bat_length = len, have_bat = true;
        } else {
            s->md_offset = off, s->md_length = len, have_md = true;
        }
    }
    if (!have_bat || !have_md) {
        error_set(err, EINVAL, "the region table has no %s region", have_bat ? "metadata" : "BAT");
        return -EINVAL;
    }
    if (ranges_overlap(s->bat_offset, s->bat_length, s->md_offset, s->md_length)) {
        error_set(err, EINVAL, "the BAT and metadata regions overlap");
        return -EINVAL;
    }
    return 0;
}

/* The first region table if valid, else the second. */
static int vhdx_read_regions(BlockNode *bs, VhdxState *s, Error *err)
{
    uint8_t *t = malloc(VHDX_RT_BYTES);
    if (!t) {
        error_set(err, ENOMEM, "out of memory");
        return -ENOMEM;
    }
    int r = vhdx_file_read(bs, VHDX_RT1_OFF, VHDX_RT_BYTES, t);
    s->region_table_index = 1;
    if (r == 0 && !region_table_valid(t)) {
        r = vhdx_file_read(bs, VHDX_RT2_OFF, VHDX_RT_BYTES, t);
        s->region_table_index = 2;
        if (r == 0 && !region_table_valid(t)) {
            error_set(err, EINVAL, "neither region table is valid (signature 'regi', CRC-32C, at most 2047 entries)");
            r = -EINVAL;
        }
    }
    if (r < 0)
        error_set(err, -r, "cannot read the region tables: %s", strerror(-r));
    else
        r = region_parse(s, t, err);
    free(t);
    return r;
}

/* ---------------------------------------------------------------- metadata */

typedef struct MdItem {
    uint32_t off, len;
    bool found;
} MdItem;

enum { MD_FILE_PARAMS, MD_DISK_SIZE, MD_PAGE83, MD_LOGICAL, MD_PHYSICAL, MD_LOCATOR, MD_KNOWN };
static const Guid *const md_guids[MD_KNOWN] = { &GUID_FILE_PARAMS, &GUID_DISK_SIZE, &GUID_PAGE83,
                                                &GUID_LOGICAL_SECTOR, &GUID_PHYSICAL_SECTOR, &GUID_PARENT_LOCATOR };
static const char *const md_names[MD_KNOWN] = { "file parameters", "virtual disk size", "page 83 data",
                                                "logical sector size", "physical sector size", "parent locator" };
static const uint32_t md_min_len[MD_KNOWN] = { 8, 8, 16, 4, 4, 20 };

static int md_parse_table(VhdxState *s, const uint8_t *t, MdItem items[MD_KNOWN], Error *err)
{
    if (memcmp(t, "metadata", 8) != 0) {
        error_set(err, EINVAL, "no metadata table (signature 'metadata') at offset %" PRIu64, s->md_offset);
        return -EINVAL;
    }
    uint16_t count = ld_le16(t + 10);
    if (count > VHDX_MD_MAX_ENTRIES) {
        error_set(err, EINVAL, "metadata table has %u entries (at most 2047)", count);
        return -EINVAL;
    }
    for (uint16_t i = 0; i < count; i++) {
        const uint8_t *e = t + 32 + (size_t)i * 32;
        uint32_t off = ld_le32(e + 16), len = ld_le32(e + 20), flags = ld_le32(e + 24);
        int k = 0;
        while (k < MD_KNOWN && !vhdx_guid_eq(e, md_guids[k]))
            k++;
        char g[VHDX_GUID_STR];
        vhdx_format_guid(e, g);
        if (k == MD_KNOWN) {
            if (flags & 4) {
                error_set(err, ENOTSUP, "unknown required metadata item %s", g);
                return -ENOTSUP;
            }
            continue;
        }
        if (items[k].found || len < md_min_len[k] || len > VHDX_MD_MAX_ITEM || off < VHDX_MD_TABLE_BYTES ||
            (uint64_t)off + len > s->md_length) {
            error_set(err, EINVAL, "metadata item %s (%s) is listed twice, too short or outside the metadata region",
                      md_names[k], g);
            return -EINVAL;
        }
        items[k] = (MdItem){ .off = off, .len = len, .found = true };
    }
    return 0;
}

/* Reads a metadata item of at most len bytes (validated) into buf. */
static int md_read(BlockNode *bs, VhdxState *s, const MdItem *it, void *buf, uint32_t len)
{
    return vhdx_file_read(bs, s->md_offset + it->off, MIN(len, it->len), buf);
}

static int md_check_values(VhdxState *s, Error *err)
{
    if (!is_pow2(s->block_size) || s->block_size < VHDX_MIN_BLOCK || s->block_size > VHDX_MAX_BLOCK) {
        error_set(err, EINVAL, "invalid block size %" PRIu32 " (a power of two from 1 MiB to 256 MiB)", s->block_size);
        return -EINVAL;
    }
    if ((s->logical_sector != 512 && s->logical_sector != 4096) ||
        (s->physical_sector != 512 && s->physical_sector != 4096)) {
        error_set(err, EINVAL, "invalid sector size (logical %" PRIu32 ", physical %" PRIu32 "; 512 or 4096)",
                  s->logical_sector, s->physical_sector);
        return -EINVAL;
    }
    if (s->size > (uint64_t)VHDX_MAX_SIZE || s->size % s->logical_sector) {
        error_set(err, EINVAL, "invalid virtual disk size %" PRIu64 " (a multiple of the logical sector size, at "
                  "most 64 TiB)", s->size);
        return -EINVAL;
    }
    s->chunk_ratio = ((uint64_t)1 << 23) * s->logical_sector / s->block_size;
    return 0;
}

static int vhdx_read_metadata(BlockNode *bs, VhdxState *s, MdItem items[MD_KNOWN], Error *err)
{
    uint8_t *t = malloc(VHDX_MD_TABLE_BYTES);
    if (!t) {
        error_set(err, ENOMEM, "out of memory");
        return -ENOMEM;
    }
    int r = vhdx_file_read(bs, s->md_offset, VHDX_MD_TABLE_BYTES, t);
    if (r < 0)
        error_set(err, -r, "cannot read the metadata table: %s", strerror(-r));
    else
        r = md_parse_table(s, t, items, err);
    free(t);
    for (int k = 0; r == 0 && k < MD_LOCATOR; k++)
        if (!items[k].found) {
            error_set(err, EINVAL, "the metadata has no %s item", md_names[k]);
            r = -EINVAL;
        }
    uint8_t fp[8], sz[8], ls[4], ps[4];
    if (r == 0 && ((r = md_read(bs, s, &items[MD_FILE_PARAMS], fp, 8)) < 0 ||
                   (r = md_read(bs, s, &items[MD_DISK_SIZE], sz, 8)) < 0 ||
                   (r = md_read(bs, s, &items[MD_PAGE83], s->page83.b, 16)) < 0 ||
                   (r = md_read(bs, s, &items[MD_LOGICAL], ls, 4)) < 0 ||
                   (r = md_read(bs, s, &items[MD_PHYSICAL], ps, 4)) < 0))
        error_set(err, -r, "cannot read the metadata: %s", strerror(-r));
    if (r < 0)
        return r;
    s->block_size = ld_le32(fp);
    s->leave_allocated = ld_le32(fp + 4) & 1;
    s->has_parent = ld_le32(fp + 4) & 2;
    s->size = ld_le64(sz);
    s->logical_sector = ld_le32(ls);
    s->physical_sector = ld_le32(ps);
    return md_check_values(s, err);
}

/* ---------------------------------------------------------------- parent locator */

/* A locator path as a POSIX name: "..\d\p.vhdx" -> "../d/p.vhdx", "\\?\Volume{..}\d\p.vhdx" -> "/d/p.vhdx",
 * "\\?\C:\d\p.vhdx" and "C:\d\p.vhdx" -> "/d/p.vhdx" (an absolute name outside the allowed directories is
 * looked up by its base name there, lib/backing.c). In place, after '\' became '/'. */
static void locator_to_posix(char *p)
{
    if (strncmp(p, "//?/", 4) == 0 || strncmp(p, "//./", 4) == 0)
        memmove(p, p + 4, strlen(p + 4) + 1);
    if (strncmp(p, "Volume{", 7) == 0) {
        char *slash = strchr(p, '/');
        memmove(p, slash ? slash : p + strlen(p), strlen(slash ? slash : "") + 1);
    }
    if (((p[0] >= 'A' && p[0] <= 'Z') || (p[0] >= 'a' && p[0] <= 'z')) && p[1] == ':')
        memmove(p, p + 2, strlen(p + 2) + 1);
}

static int locator_key(const uint8_t *item, uint32_t item_len, const uint8_t *e, char *key, size_t keylen,
                       char *val, size_t vallen, bool path)
{
    uint32_t koff = ld_le32(e), voff = ld_le32(e + 4);
    uint16_t klen = ld_le16(e + 8), vlen = ld_le16(e + 10);
    if (!klen || !vlen || koff > item_len || klen > item_len - koff || voff > item_len || vlen > item_len - voff)
        return -EINVAL;
    if (!utf16_to_utf8(item + koff, klen, false, false, key, keylen))
        return -EINVAL;
    utf16_to_utf8(item + voff, vlen, false, path, val, vallen);
    return 0;
}

static int vhdx_read_locator(BlockNode *bs, VhdxState *s, const MdItem *it, Error *err)
{
    uint8_t *item = malloc(it->len);
    char paths[LOC_PATHS][PATH_MAX] = { "", "", "" };
    int r = item ? md_read(bs, s, it, item, it->len) : -ENOMEM;
    if (r < 0) {
        error_set(err, -r, "cannot read the parent locator: %s", strerror(-r));
        free(item);
        return r;
    }
    uint16_t count = ld_le16(item + 18);
    if (!vhdx_guid_eq(item, &GUID_LOCATOR_VHDX) || count > VHDX_MAX_LOCATOR_KEYS || 20 + (uint32_t)count * 12 > it->len) {
        error_set(err, EINVAL, "parent locator is not of the VHDX type or has %u entries outside the item", count);
        free(item);
        return -EINVAL;
    }
    for (uint16_t i = 0; i < count && r == 0; i++) {
        char key[64], val[PATH_MAX];
        const uint8_t *e = item + 20 + (size_t)i * 12;
        if (locator_key(item, it->len, e, key, sizeof(key), val, sizeof(val), false) < 0) {
            error_set(err, EINVAL, "parent locator entry %u lies outside the item", i);
            r = -EINVAL;
        } else if (strcmp(key, "parent_linkage") == 0 || strcmp(key, "parent_linkage2") == 0) {
            char *dst = strcmp(key, "parent_linkage") == 0 ? s->parent_linkage : s->parent_linkage2;
            size_t len = MIN(strlen(val), (size_t)VHDX_GUID_STR - 1);
            memcpy(dst, val, len);
            dst[len] = '\0';
        } else {
            for (int k = 0; k < LOC_PATHS; k++)
                if (strcmp(key, loc_keys[k]) == 0)
                    locator_key(item, it->len, e, key, sizeof(key), paths[k], PATH_MAX, true);
        }
    }
    free(item);
    if (r == 0 && !s->parent_linkage[0]) {
        error_set(err, EINVAL, "parent locator has no parent_linkage");
        r = -EINVAL;
    }
    int n = 0;
    for (int k = 0; r == 0 && k < LOC_PATHS; k++) {
        locator_to_posix(paths[k]);
        if (!paths[k][0])
            continue;
        if (!(bs->backing_candidates[n] = strdup(paths[k])))
            r = -ENOMEM;
        snprintf(s->parent_source[n++], sizeof(s->parent_source[0]), "%s", loc_keys[k]);
    }
    if (r == 0 && n == 0) {
        error_set(err, EINVAL, "differencing disk names no parent (no relative_path, volume_path or "
                  "absolute_win32_path in its parent locator)");
        r = -EINVAL;
    }
    if (r == 0 && (!(bs->backing_name = strdup(bs->backing_candidates[0])) ||
                   !(bs->backing_format_hint = strdup("vhdx"))))
        r = -ENOMEM;
    if (r == -ENOMEM)
        error_set(err, ENOMEM, "out of memory");
    return r;
}

/* ---------------------------------------------------------------- BAT */

/* Does [off, off + len) of the file overlap the headers, the log, the BAT or the metadata region? */
static bool overlaps_metadata(const VhdxState *s, uint64_t off, uint64_t len)
{
    return off < VHDX_ALIGN || (s->log_length && ranges_overlap(off, len, s->log_offset, s->log_length)) ||
           ranges_overlap(off, len, s->bat_offset, s->bat_length) || ranges_overlap(off, len, s->md_offset, s->md_length);
}

/* A payload or sector-bitmap entry's block must lie inside the file and clear of the metadata. */
static bool entry_usable(const VhdxState *s, uint64_t e, uint64_t len)
{
    uint64_t off = BAT_OFFSET(e);
    return off <= (uint64_t)s->eff_size && len <= (uint64_t)s->eff_size - off && !overlaps_metadata(s, off, len);
}

static uint64_t bat_index(const VhdxState *s, uint64_t block)
{
    return block + block / s->chunk_ratio;
}

/* Sorts each payload entry: usable, or marked bad (state reserved, a partially present block outside a
 * differencing disk or without a sector bitmap, a block past the file or over metadata). */
static void bat_validate(VhdxState *s)
{
    for (uint64_t b = 0; b < s->data_blocks; b++) {
        uint64_t *e = &s->bat[bat_index(s, b)];
        unsigned st = BAT_STATE(*e);
        bool ok = st != PAYLOAD_BAD;
        if (st == PAYLOAD_FULLY_PRESENT || st == PAYLOAD_PARTIALLY_PRESENT)
            ok = entry_usable(s, *e, s->block_size);
        if (ok && st == PAYLOAD_PARTIALLY_PRESENT) { /* only a differencing disk's BAT has bitmap entries for all */
            uint64_t c = b / s->chunk_ratio, sb = 0;
            if (s->has_parent)
                sb = s->bat[c * (s->chunk_ratio + 1) + s->chunk_ratio];
            ok = s->has_parent && BAT_STATE(sb) == SB_PRESENT && entry_usable(s, sb, VHDX_SECTOR_BITMAP_BYTES);
        }
        if (!ok) {
            *e = PAYLOAD_BAD;
            s->bad_entries++;
        } else if (st == PAYLOAD_FULLY_PRESENT || st == PAYLOAD_PARTIALLY_PRESENT) {
            s->allocated_blocks++;
        }
    }
}

static int vhdx_load_bat(BlockNode *bs, VhdxState *s, Error *err)
{
    s->data_blocks = (s->size + s->block_size - 1) / s->block_size;
    if (s->has_parent)
        s->bat_entries = (s->data_blocks + s->chunk_ratio - 1) / s->chunk_ratio * (s->chunk_ratio + 1);
    else
        s->bat_entries = s->data_blocks ? s->data_blocks + (s->data_blocks - 1) / s->chunk_ratio : 0;
    if (s->bat_entries > VHDX_MAX_BAT_ENTRIES) {
        error_set(err, EFBIG, "the BAT would need %" PRIu64 " entries, more than the %u this driver holds in memory",
                  s->bat_entries, VHDX_MAX_BAT_ENTRIES);
        return -EFBIG;
    }
    if (s->bat_entries * 8 > s->bat_length) {
        error_set(err, EINVAL, "the BAT region (%" PRIu64 " bytes) is too small for %" PRIu64 " entries",
                  s->bat_length, s->bat_entries);
        return -EINVAL;
    }
    s->bat = malloc(MAX(s->bat_entries, 1) * 8);
    if (!s->bat) {
        error_set(err, ENOMEM, "out of memory for the BAT (%" PRIu64 " entries)", s->bat_entries);
        return -ENOMEM;
    }
    int r = s->bat_entries ? vhdx_file_read(bs, s->bat_offset, s->bat_entries * 8, s->bat) : 0;
    if (r < 0) {
        error_set(err, -r, "cannot read the BAT: %s", strerror(-r));
        return r;
    }
    for (uint64_t i = 0; i < s->bat_entries; i++)
        s->bat[i] = ld_le64(&s->bat[i]);
    bat_validate(s);
    return 0;
}

/* ---------------------------------------------------------------- mapping */

static int vhdx_bad_block(BlockNode *bs, VhdxState *s, uint64_t block)
{
    if (!__atomic_exchange_n(&s->bad_logged, 1, __ATOMIC_RELAXED))
        log_msg("%s: BAT entry of block %" PRIu64 " is invalid (a reserved state, a block outside the file or over "
                "metadata, or a partially present block without a sector bitmap); reading it fails with EIO",
                bs->filename, block);
    return -EIO;
}

/* Within a partially present block: the run of sectors from in_block (at most max bytes) that the sector
 * bitmap gives to this file (1) or to the parent (0). */
static int bitmap_run(BlockNode *bs, VhdxState *s, uint64_t block, uint64_t in_block, uint64_t max, uint64_t *n)
{
    uint64_t c = block / s->chunk_ratio, sb = s->bat[c * (s->chunk_ratio + 1) + s->chunk_ratio];
    uint64_t first = (block % s->chunk_ratio) * (s->block_size / s->logical_sector) + in_block / s->logical_sector;
    uint64_t last = first + (max - 1) / s->logical_sector;
    uint64_t from = first / 8;
    last = MIN(last, (from + VHDX_SCAN_BYTES) * 8 - 1);
    uint8_t bitmap[VHDX_SCAN_BYTES];
    int r = vhdx_file_read(bs, BAT_OFFSET(sb) + from, last / 8 - from + 1, bitmap);
    if (r < 0)
        return r;
#define SBIT(sec) ((bitmap[(sec) / 8 - from] >> ((sec) % 8)) & 1)
    int present = SBIT(first);
    uint64_t sec = first + 1;
    while (sec <= last && SBIT(sec) == present)
        sec++;
#undef SBIT
    *n = MIN((sec - first) * s->logical_sector - in_block % s->logical_sector, max);
    return present;
}

/* The kind of run a payload state gives: 0 backing (or zeros without a parent), 1 zero, 2 host, -errno. */
enum { RUN_BACKING, RUN_ZERO, RUN_HOST };
static int state_run(const VhdxState *s, unsigned st)
{
    switch (st) {
    case PAYLOAD_NOT_PRESENT:
        return s->has_parent ? RUN_BACKING : RUN_ZERO;
    case PAYLOAD_UNDEFINED:
    case PAYLOAD_ZERO:
    case PAYLOAD_UNMAPPED:
    case PAYLOAD_UNMAPPED_V095:
        return RUN_ZERO;
    case PAYLOAD_FULLY_PRESENT:
        return RUN_HOST;
    default:
        return -EIO;
    }
}

/* Fills st for one run: guest bytes from offset (at most bytes), whole blocks of one kind merged, present
 * blocks while they lie back to back in the file. */
static int vhdx_map(BlockNode *bs, int64_t offset, int64_t bytes, BlockStatus *st, void *opaque)
{
    VhdxState *s = bs->opaque;
    (void)opaque;
    uint64_t block = (uint64_t)offset / s->block_size, in_block = (uint64_t)offset % s->block_size;
    if (block >= s->data_blocks) { /* cannot happen: the core keeps requests inside the disk */
        st->bytes = bytes;
        return 0;
    }
    uint64_t max = MIN((uint64_t)bytes, s->block_size - in_block), e = s->bat[bat_index(s, block)], n = max;
    int kind;
    if (BAT_STATE(e) == PAYLOAD_PARTIALLY_PRESENT) {
        int present = bitmap_run(bs, s, block, in_block, max, &n);
        if (present < 0)
            return present;
        kind = present ? RUN_HOST : RUN_BACKING;
    } else {
        if ((kind = state_run(s, BAT_STATE(e))) < 0)
            return vhdx_bad_block(bs, s, block);
        for (uint64_t b = block + 1; n < (uint64_t)bytes && b < s->data_blocks && b - block < 4096; b++) {
            uint64_t f = s->bat[bat_index(s, b)];
            if (BAT_STATE(f) == PAYLOAD_PARTIALLY_PRESENT || state_run(s, BAT_STATE(f)) != kind ||
                (kind == RUN_HOST && BAT_OFFSET(f) != BAT_OFFSET(e) + (b - block) * s->block_size))
                break;
            n += s->block_size;
        }
        n = MIN(n, (uint64_t)bytes);
    }
    st->bytes = (int64_t)n;
    if (kind == RUN_ZERO)
        st->flags = BDRV_BLOCK_ZERO | BDRV_BLOCK_ALLOCATED;
    if (kind != RUN_HOST)
        return 0;
    uint64_t host = BAT_OFFSET(e) + in_block;
    st->flags = BDRV_BLOCK_DATA | BDRV_BLOCK_ALLOCATED;
    st->host_offset = (int64_t)host;
    if (!overlay_touches(s, host, n)) { /* else the replayed log changed it: decode reads through the overlay */
        st->flags |= BDRV_BLOCK_OFFSET_VALID;
        st->host_file = bs->file;
    }
    return 0;
}

/* A present run the replayed log touched: the file's bytes with the overlay on top. */
static int vhdx_decode(BlockNode *bs, int64_t offset, int64_t bytes, void *buf, const BlockStatus *st, void *opaque)
{
    (void)opaque;
    (void)offset;
    return vhdx_file_read(bs, (uint64_t)st->host_offset, (uint64_t)bytes, buf);
}

static const BlockReadMap vhdx_read_map = { .map = vhdx_map, .decode = vhdx_decode };

/* A writable image's BAT and sector bitmaps change under the writer's lock: reads take it shared. */
static int vhdx_read(BlockNode *bs, int64_t offset, int64_t bytes, void *buf)
{
    VhdxState *s = bs->opaque;
    return bdrv_read_mapped_locked(bs, offset, bytes, buf, &vhdx_read_map, s->writable ? &s->lock : NULL, s->size);
}

static int vhdx_block_status(BlockNode *bs, int64_t offset, int64_t bytes, BlockStatus *st)
{
    VhdxState *s = bs->opaque;
    return bdrv_status_mapped_locked(bs, offset, bytes, st, &vhdx_read_map, s->writable ? &s->lock : NULL);
}

/* ---------------------------------------------------------------- parent check */

extern const BlockDriver bdrv_vhdx;

/* The parent's DataWriteGuid must be the child's parent_linkage (or parent_linkage2); its logical sector
 * size the child's. A parent that is not a VHDX (named with --backing) cannot be checked: one log line. */
static int vhdx_backing_attached(BlockNode *bs, Error *err)
{
    VhdxState *s = bs->opaque;
    if (!s->has_parent || !bs->backing)
        return 0;
    if (bs->backing->drv != &bdrv_vhdx) {
        log_msg("%s: warning: parent %s is not a VHDX image; its identity cannot be checked", bs->filename,
                bs->backing->filename);
        return 0;
    }
    const VhdxState *p = bs->backing->opaque;
    char got[VHDX_GUID_STR];
    vhdx_format_guid(p->header + HD_DATA_WRITE, got);
    if (strcasecmp(got, s->parent_linkage) != 0 && strcasecmp(got, s->parent_linkage2) != 0) {
        error_set(err, EINVAL, "%s: parent %s has DataWriteGuid %s, but this differencing disk's parent_linkage is %s",
                  bs->filename, bs->backing->filename, got, s->parent_linkage);
        return -EINVAL;
    }
    if (p->logical_sector != s->logical_sector) {
        error_set(err, EINVAL, "%s: parent %s has %" PRIu32 "-byte logical sectors, this differencing disk %" PRIu32,
                  bs->filename, bs->backing->filename, p->logical_sector, s->logical_sector);
        return -EINVAL;
    }
    return 0;
}

/* ---------------------------------------------------------------- open, close */

static void vhdx_close(BlockNode *bs)
{
    VhdxState *s = bs->opaque;
    if (!s)
        return;
    vhdx_close_writable(bs, s);
    free(s->bat);
    s->bat = NULL;
    for (size_t i = 0; i < s->n_overlay; i++)
        free(s->overlay[i].data);
    free(s->overlay);
    s->overlay = NULL;
    s->n_overlay = 0;
}

static int vhdx_do_open(BlockNode *bs, VhdxState *s, const BlockOpenOpts *opts, Error *err)
{
    MdItem items[MD_KNOWN];
    memset(items, 0, sizeof(items));
    s->file_size = s->eff_size = bdrv_getlength(bs->file);
    if (s->file_size < 0) {
        error_set(err, (int)-s->file_size, "cannot get the file size: %s", strerror((int)-s->file_size));
        return (int)s->file_size;
    }
    int r = vhdx_read_identifier(bs, s, err);
    if (r == 0)
        r = vhdx_read_headers(bs, s, err);
    if (r == 0)
        r = vhdx_open_log(bs, s, err);
    if (r == 0)
        r = vhdx_read_regions(bs, s, err);
    if (r == 0)
        r = vhdx_read_metadata(bs, s, items, err);
    if (r == 0 && s->has_parent && !items[MD_LOCATOR].found) {
        error_set(err, EINVAL, "differencing disk (HasParent) without a parent locator");
        r = -EINVAL;
    }
    if (r == 0)
        r = vhdx_load_bat(bs, s, err);
    if (r == 0 && s->has_parent)
        r = vhdx_read_locator(bs, s, &items[MD_LOCATOR], err);
    if (r == 0 && !s->has_parent && opts && opts->backing && bs->depth == 0) {
        error_set(err, EINVAL, "a VHDX without a parent (not a differencing disk) does not support backing files");
        r = -EINVAL;
    }
    if (r == 0 && !bs->read_only)
        r = vhdx_open_writable(bs, s, err);
    return r;
}

static int vhdx_open(BlockNode *bs, const BlockOpenOpts *opts, Error *err)
{
    VhdxState *s = bs->opaque;
    int r = vhdx_do_open(bs, s, opts, err);
    if (r < 0) {
        vhdx_close(bs);
        return r;
    }
    if (s->bad_entries)
        log_debug("%s: %" PRIu64 " BAT entries are invalid; those blocks read as EIO", bs->filename, s->bad_entries);
    bs->request_alignment = s->has_parent ? s->logical_sector : 1;
    return 0;
}

/* ---------------------------------------------------------------- info */

static int64_t vhdx_getlength(BlockNode *bs)
{
    VhdxState *s = bs->opaque;
    return (int64_t)s->size;
}

static int64_t vhdx_memory_used(BlockNode *bs)
{
    VhdxState *s = bs->opaque;
    return (int64_t)(sizeof(*s) + s->bat_entries * 8 + s->n_overlay * sizeof(OverlayRec) + s->overlay_bytes);
}

static void vhdx_get_facts(BlockNode *bs, BlockDriverFacts *facts)
{
    const VhdxState *s = bs->opaque;
    facts->cluster_size = s->block_size;
}

static bool vhdx_has_zero_init(BlockNode *bs)
{
    (void)bs;
    return false;
}

static const char *vhdx_parent_source(BlockNode *bs, const VhdxState *s)
{
    for (int i = 0; i < BDRV_MAX_BACKING_CANDIDATES && bs->backing_candidates[i]; i++)
        if (bs->backing_name && strcmp(bs->backing_name, bs->backing_candidates[i]) == 0)
            return s->parent_source[i];
    return s->parent_source[0];
}

static void vhdx_get_info(BlockNode *bs, InfoList *info)
{
    VhdxState *s = bs->opaque;
    char g[VHDX_GUID_STR];
    info_add_str(info, "subformat", "%s", s->has_parent ? "differencing" : s->leave_allocated ? "fixed" : "dynamic");
    if (s->creator[0])
        info_add_str(info, "creator", "%s", s->creator);
    info_add_int(info, "block_size", s->block_size);
    info_add_int(info, "logical_sector_size", s->logical_sector);
    info_add_int(info, "physical_sector_size", s->physical_sector);
    vhdx_format_guid(s->page83.b, g);
    info_add_str(info, "virtual_disk_id", "%s", g);
    info_add_int(info, "header", s->header_index);
    info_add_int(info, "header_sequence", (int64_t)MIN(ld_le64(s->header + HD_SEQ), (uint64_t)INT64_MAX));
    vhdx_format_guid(s->header + HD_DATA_WRITE, g);
    info_add_str(info, "data_write_guid", "%s", g);
    info_add_int(info, "log_offset", (int64_t)MIN(s->log_offset, (uint64_t)INT64_MAX));
    info_add_int(info, "log_length", s->log_length);
    if (s->log_replayed)
        info_add_str(info, "log", "replayed onto the file at open (%" PRIu64 " entries, sequence %" PRIu64 " to %"
                     PRIu64 ")", s->log_replayed, s->log_seq_first, s->log_seq_last);
    else if (s->log_entries)
        info_add_str(info, "log", "replayed in memory (%" PRIu64 " entries, sequence %" PRIu64 " to %" PRIu64
                     "; the file is unchanged)", s->log_entries, s->log_seq_first, s->log_seq_last);
    else
        info_add_str(info, "log", "clean");
    info_add_int(info, "bat_entries", (int64_t)s->bat_entries);
    info_add_int(info, "allocated_blocks", (int64_t)s->allocated_blocks);
    if (s->bad_entries)
        info_add_int(info, "bad_bat_entries", (int64_t)s->bad_entries);
    if (s->has_parent) {
        info_add_str(info, "parent_linkage", "%s", s->parent_linkage);
        info_add_str(info, "parent_locator", "%s", vhdx_parent_source(bs, s));
    }
}

/* ---------------------------------------------------------------- check */

/* As qemu-img checks a VHDX: every payload block the map names must lie inside its file. -r is taken and repairs
 * nothing. */
static int vhdx_check(BlockNode *bs, BlockCheckResult *res, int fix)
{
    return fix == BDRV_FIX_QUERY ? 1 : bdrv_check_host_runs(bs, res, 0, false); /* -r repairs nothing, as in qemu-img */
}

const BlockDriver bdrv_vhdx = {
    .name = "vhdx",
    .instance_size = sizeof(VhdxState),
    .supports_backing = true,
    .probe = vhdx_probe,
    .open = vhdx_open,
    .close = vhdx_close,
    .read = vhdx_read,
    .block_status = vhdx_block_status,
    .getlength = vhdx_getlength,
    .get_info = vhdx_get_info,
    .check = vhdx_check,
    .backing_attached = vhdx_backing_attached,
    .get_facts = vhdx_get_facts,
    .memory_used = vhdx_memory_used,
    .has_zero_init = vhdx_has_zero_init,
    .create = vhdx_create,
    .create_options = vhdx_create_options,
    .write = vhdx_write,
    .write_zeroes = vhdx_write_zeroes,
    .discard = vhdx_discard,
    .flush = vhdx_flush,
};
