/* SPDX-License-Identifier: MIT */
/*
 * write.c - the VHDX writer: a writable open (damaged images refused before anything is written, a dirty
 * log written onto the file), the header updates (the non-current header, sequence number + 1, CRC-32C,
 * flushed: FileWriteGuid and DataWriteGuid renewed on the first write, LogGuid set and cleared), the
 * metadata log (one entry per metadata update: descriptors and data sectors of the 4 KiB sectors it
 * changes, flushed before those sectors are written in place), writes (in place into present blocks; new
 * blocks appended on 1 MiB boundaries, their data flushed before the BAT names them; a differencing disk's
 * partially present blocks keep their sector bitmaps) and write-zeroes and discard by block state.
 * Locking: the lock in VhdxState is held shared by reads and in-place writes, exclusive by everything that
 * changes metadata (allocations, sector bitmaps, block states, the header). It knows the on-disk layout
 * (vhdx.h) and nothing of FUSE; the reader (vhdx.c) parses and validates the image first.
 */
#include "block.h"
#include "util.h"

#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>

#include "vhdx.h"

/* Sectors a metadata update may change in one log entry: the BAT sectors of a payload and a sector-bitmap
 * entry and the sector-bitmap sectors of one block (a 256 MiB block of 512-byte sectors: 16). */
#define VHDX_MAX_META_SECTORS 24
#define VHDX_ZERO_CHUNK (64 * KiB)

static const uint8_t vhdx_zero_buf[VHDX_ZERO_CHUNK];

static uint64_t bat_idx(const VhdxState *s, uint64_t block)
{
    return block + block / s->chunk_ratio;
}

static uint64_t sb_idx(const VhdxState *s, uint64_t block)
{
    return block / s->chunk_ratio * (s->chunk_ratio + 1) + s->chunk_ratio;
}

/* ---------------------------------------------------------------- GUIDs and the header */

/* A random (version 4) GUID. */
static int new_guid(uint8_t g[16])
{
    if (getrandom(g, 16, 0) != 16)
        return -EIO;
    g[7] = (uint8_t)((g[7] & 0x0f) | 0x40); /* the version nibble: the third field is stored little-endian */
    g[8] = (uint8_t)((g[8] & 0x3f) | 0x80);
    return 0;
}

enum { HDR_FILE_GUID = 1, HDR_DATA_GUID = 2, HDR_SET_LOG = 4, HDR_CLEAR_LOG = 8 };

/* Writes the header that is not current with the sequence number + 1 and what flags ask, then flushes:
 * it becomes the current one (a torn write leaves the old one current). */
static int header_update(BlockNode *bs, VhdxState *s, unsigned flags)
{
    uint8_t h[VHDX_HEADER_BYTES];
    memcpy(h, s->header, sizeof(h));
    st_le64(h + HD_SEQ, ld_le64(h + HD_SEQ) + 1);
    int r = 0;
    if (flags & HDR_FILE_GUID)
        r = new_guid(h + HD_FILE_WRITE);
    if (r == 0 && (flags & HDR_DATA_GUID))
        r = new_guid(h + HD_DATA_WRITE);
    if (r < 0)
        return r;
    if (flags & HDR_SET_LOG)
        memcpy(h + HD_LOG_GUID, s->log_guid.b, 16);
    if (flags & HDR_CLEAR_LOG)
        memset(h + HD_LOG_GUID, 0, 16);
    st_le32(h + HD_CRC, 0);
    st_le32(h + HD_CRC, vhdx_crc(h, sizeof(h), HD_CRC));
    int64_t off = s->header_index == 1 ? VHDX_HEADER2_OFF : VHDX_HEADER1_OFF;
    bdrv_debug_event(bs->file, "vhdx_header_update");
    r = bdrv_pwrite(bs->file, off, sizeof(h), h, 0);
    if (r == 0)
        r = bdrv_flush(bs->file);
    if (r < 0)
        return r;
    memcpy(s->header, h, sizeof(h));
    s->header_index = 3 - s->header_index;
    return 0;
}

/* The first write of a session renews FileWriteGuid and DataWriteGuid (MS-VHDX: before the file and the
 * data a user sees change). Caller holds the lock exclusive. */
static int guids_renew(BlockNode *bs, VhdxState *s)
{
    if (__atomic_load_n(&s->guids_done, __ATOMIC_ACQUIRE))
        return 0;
    if (s->broken)
        return -EIO;
    int r = header_update(bs, s, HDR_FILE_GUID | HDR_DATA_GUID);
    if (r < 0)
        return r;
    __atomic_store_n(&s->guids_done, true, __ATOMIC_RELEASE);
    return 0;
}

/* ---------------------------------------------------------------- the log */

/* One 4 KiB sector of metadata and its new content. */
typedef struct MetaSector {
    uint64_t off;
    uint8_t data[VHDX_LOG_SECTOR];
} MetaSector;

typedef struct MetaUpdate {
    MetaSector *sec;
    int n;
} MetaUpdate;

/* The sector of the file at off (4 KiB aligned) in the update, read from the file the first time. */
static uint8_t *meta_sector(BlockNode *bs, MetaUpdate *u, uint64_t off, int *err)
{
    for (int i = 0; i < u->n; i++)
        if (u->sec[i].off == off)
            return u->sec[i].data;
    if (u->n == VHDX_MAX_META_SECTORS) {
        *err = -EIO;
        return NULL;
    }
    MetaSector *m = &u->sec[u->n];
    int r = bdrv_pread(bs->file, (int64_t)off, VHDX_LOG_SECTOR, m->data);
    if (r < 0) {
        *err = r;
        return NULL;
    }
    m->off = off;
    u->n++;
    return m->data;
}

/* Sets BAT entry idx to e in the update. */
static int meta_bat(BlockNode *bs, VhdxState *s, MetaUpdate *u, uint64_t idx, uint64_t e)
{
    uint64_t at = s->bat_offset + idx * 8;
    int r = 0;
    uint8_t *p = meta_sector(bs, u, at / VHDX_LOG_SECTOR * VHDX_LOG_SECTOR, &r);
    if (p)
        st_le64(p + at % VHDX_LOG_SECTOR, e);
    return r;
}

/* The log entry of the update into buf (length bytes): header, descriptors, data sectors, CRC-32C. */
static void log_entry_build(VhdxState *s, const MetaUpdate *u, uint8_t *buf, uint32_t length, uint32_t dsec)
{
    uint64_t seq = s->log_seq;
    memset(buf, 0, (size_t)dsec * VHDX_LOG_SECTOR);
    memcpy(buf + LE_SIG, "loge", 4);
    st_le32(buf + LE_LENGTH, length);
    st_le32(buf + LE_TAIL, s->log_head); /* every earlier entry's sectors are on the file and flushed */
    st_le64(buf + LE_SEQ, seq);
    st_le32(buf + LE_DESC_COUNT, (uint32_t)u->n);
    memcpy(buf + LE_LOG_GUID, s->log_guid.b, 16);
    st_le64(buf + LE_FLUSHED, s->file_len);
    st_le64(buf + LE_LAST, s->file_len);
    for (int i = 0; i < u->n; i++) {
        const uint8_t *src = u->sec[i].data;
        uint8_t *d = buf + LE_HEADER_BYTES + (size_t)i * LD_BYTES;
        uint8_t *ds = buf + ((size_t)dsec + (size_t)i) * VHDX_LOG_SECTOR;
        memcpy(d + LD_SIG, "desc", 4);
        memcpy(d + LD_TRAILING, src + VHDX_LOG_SECTOR - 4, 4);
        memcpy(d + LD_LEADING, src, 8);
        st_le64(d + LD_FILE_OFF, u->sec[i].off);
        st_le64(d + LD_SEQ, seq);
        memcpy(ds, "data", 4);
        st_le32(ds + 4, (uint32_t)(seq >> 32));
        memcpy(ds + 8, src + 8, VHDX_LOG_SECTOR - 12);
        st_le32(ds + VHDX_LOG_SECTOR - 4, (uint32_t)seq);
    }
    st_le32(buf + LE_CRC, vhdx_crc(buf, length, LE_CRC));
}

/* Writes the entry and flushes it; a log not yet named by the header gets a new LogGuid, set in the header
 * (flushed) once its first entry is on the file, so a crash in between leaves a header naming no log. */
static int log_write_entry(BlockNode *bs, VhdxState *s, const MetaUpdate *u)
{
    uint32_t dsec = (uint32_t)((LE_HEADER_BYTES + (uint64_t)u->n * LD_BYTES + VHDX_LOG_SECTOR - 1) / VHDX_LOG_SECTOR);
    uint32_t length = (dsec + (uint32_t)u->n) * VHDX_LOG_SECTOR;
    if (length > s->log_length)
        return -ENOSPC;
    int r;
    if (!s->log_active) {
        if ((r = new_guid(s->log_guid.b)) < 0)
            return r;
        s->log_head = 0;
        s->log_seq = 0;
    }
    if ((uint64_t)s->log_head + length > s->log_length)
        s->log_head = 0; /* entries never wrap: the next one starts the log again */
    uint8_t *buf = malloc(length);
    if (!buf)
        return -ENOMEM;
    s->log_seq++;
    log_entry_build(s, u, buf, length, dsec);
    bdrv_debug_event(bs->file, "vhdx_log_write");
    r = bdrv_pwrite(bs->file, (int64_t)(s->log_offset + s->log_head), length, buf, 0);
    free(buf);
    if (r == 0)
        r = bdrv_flush(bs->file);
    if (r == 0 && !s->log_active && (r = header_update(bs, s, HDR_SET_LOG)) == 0)
        __atomic_store_n(&s->log_active, true, __ATOMIC_RELEASE); /* vhdx_flush looks without the lock */
    if (r == 0)
        s->log_head += length;
    return r;
}

/* A metadata update: its log entry written and flushed, then its sectors in place, flushed (so the next
 * entry's tail may be itself). Caller holds the lock exclusive. A failure leaves the image to the log:
 * later metadata updates of this session fail with EIO. */
static int meta_commit(BlockNode *bs, VhdxState *s, const MetaUpdate *u)
{
    if (s->broken)
        return -EIO;
    if (u->n == 0)
        return 0;
    int r = log_write_entry(bs, s, u);
    bdrv_debug_event(bs->file, "vhdx_log_written");
    for (int i = 0; r == 0 && i < u->n; i++)
        r = bdrv_pwrite(bs->file, (int64_t)u->sec[i].off, VHDX_LOG_SECTOR, u->sec[i].data, 0);
    if (r == 0)
        r = bdrv_flush(bs->file);
    if (r < 0) {
        s->broken = true;
        log_msg("%s: a metadata update failed (%s); the log keeps the image consistent, further allocations "
                "fail", bs->filename, strerror(-r));
        return r;
    }
    s->entries_written++;
    return 0;
}

/* The log holds nothing the file lacks: the header stops naming it (on flush and close). */
static int log_reset(BlockNode *bs, VhdxState *s)
{
    if (!s->log_active || s->broken)
        return 0;
    int r = header_update(bs, s, HDR_CLEAR_LOG);
    if (r == 0)
        __atomic_store_n(&s->log_active, false, __ATOMIC_RELEASE);
    return r;
}

/* ---------------------------------------------------------------- the writable open */

/* A dirty log replayed into the overlay goes onto the file in the order the log applied it, the file is
 * grown to the size the log gives it, all flushed; then the header stops naming the log. */
static int replay_onto_file(BlockNode *bs, VhdxState *s)
{
    int r = 0;
    for (size_t i = 0; r == 0 && i < s->n_overlay; i++) {
        const OverlayRec *o = &s->overlay[i];
        if (o->data)
            r = bdrv_pwrite(bs->file, (int64_t)o->off, (int64_t)o->len, o->data, 0);
        else
            r = bdrv_pwrite_zeroes(bs->file, (int64_t)o->off, (int64_t)o->len, 0);
    }
    int64_t len = r == 0 ? bdrv_getlength(bs->file) : 0;
    if (len < 0)
        r = (int)len;
    if (r == 0 && s->eff_size > len)
        r = bdrv_truncate(bs->file, s->eff_size);
    if (r == 0)
        r = bdrv_flush(bs->file);
    if (r == 0)
        r = header_update(bs, s, HDR_CLEAR_LOG | HDR_FILE_GUID);
    if (r < 0)
        return r;
    for (size_t i = 0; i < s->n_overlay; i++)
        free(s->overlay[i].data);
    free(s->overlay);
    s->overlay = NULL;
    s->n_overlay = 0;
    s->overlay_bytes = 0;
    s->file_size = s->eff_size;
    s->log_replayed = s->log_entries;
    return 0;
}

/* Extents of the file, sorted for the overlap check: offset | kind in the low bits (all are 1 MiB aligned). */
enum { EXT_BLOCK, EXT_BITMAP, EXT_HEADERS, EXT_LOG, EXT_BAT, EXT_MD };

static uint64_t ext_len(const VhdxState *s, uint64_t x)
{
    switch (x & 7) {
    case EXT_BLOCK: return s->block_size;
    case EXT_BITMAP: return VHDX_SECTOR_BITMAP_BYTES;
    case EXT_HEADERS: return VHDX_ALIGN;
    case EXT_LOG: return s->log_length;
    case EXT_BAT: return s->bat_length;
    default: return s->md_length;
    }
}

static const char *const ext_names[] = { "a payload block", "a sector-bitmap block", "the headers", "the log",
                                         "the BAT region", "the metadata region" };

static int cmp_u64(const void *a, const void *b)
{
    uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;
    return x < y ? -1 : x > y;
}

/* The blocks the BAT names (payload and sector-bitmap), the headers, the log and the two regions: inside
 * the file, never overlapping. Sets data_end past all of them. */
static int check_extents(VhdxState *s, Error *err)
{
    uint64_t n = 4, *x = malloc((s->bat_entries + 4) * sizeof(*x));
    if (!x) {
        error_set(err, ENOMEM, "out of memory for the BAT check (%" PRIu64 " entries)", s->bat_entries);
        return -ENOMEM;
    }
    x[0] = EXT_HEADERS, x[1] = s->log_offset | EXT_LOG, x[2] = s->bat_offset | EXT_BAT, x[3] = s->md_offset | EXT_MD;
    for (uint64_t i = 0; i < s->bat_entries; i++) {
        unsigned st = BAT_STATE(s->bat[i]);
        bool sb = (i + 1) % (s->chunk_ratio + 1) == 0;
        if (sb ? st == SB_PRESENT : st == PAYLOAD_FULLY_PRESENT || st == PAYLOAD_PARTIALLY_PRESENT)
            x[n++] = BAT_OFFSET(s->bat[i]) | (sb ? EXT_BITMAP : EXT_BLOCK);
    }
    qsort(x, n, sizeof(*x), cmp_u64);
    int r = 0;
    uint64_t end = 0;
    for (uint64_t i = 0; i < n && r == 0; i++) {
        uint64_t off = x[i] & ~(uint64_t)7, len = ext_len(s, x[i]);
        if (i && off < end) {
            error_set(err, EINVAL, "%s at file offset %" PRIu64 " overlaps %s before it; refusing to write "
                      "(a read-only mount reads it)", ext_names[x[i] & 7], off, ext_names[x[i - 1] & 7]);
            r = -EINVAL;
        } else if (off + len > (uint64_t)s->file_size) {
            error_set(err, EINVAL, "%s at file offset %" PRIu64 " ends past the end of the file (%" PRId64 " bytes); "
                      "refusing to write (a read-only mount reads it)", ext_names[x[i] & 7], off, s->file_size);
            r = -EINVAL;
        }
        end = MAX(end, off + len);
    }
    free(x);
    s->data_end = (uint64_t)align_up((int64_t)MAX(end, (uint64_t)s->file_size), VHDX_ALIGN);
    return r;
}

/* Entries this driver cannot follow, and sector-bitmap entries in a state the format does not give them. */
static int check_entries(VhdxState *s, Error *err)
{
    uint64_t bad_sb = 0;
    for (uint64_t i = s->chunk_ratio; i < s->bat_entries; i += s->chunk_ratio + 1) {
        unsigned st = BAT_STATE(s->bat[i]);
        if (st != PAYLOAD_NOT_PRESENT && (st != SB_PRESENT || !s->has_parent))
            bad_sb++;
    }
    if (s->bad_entries || bad_sb) {
        error_set(err, EINVAL, "%" PRIu64 " BAT entries are invalid (a reserved state, a block outside the file or "
                  "over metadata, a sector bitmap where none belongs); refusing to write (a read-only mount reads "
                  "the rest)", s->bad_entries + bad_sb);
        return -EINVAL;
    }
    return 0;
}

/* A replay onto the file may change metadata and blocks, never the headers, the region tables or the log. */
static int check_replay_targets(const VhdxState *s, Error *err)
{
    for (size_t i = 0; i < s->n_overlay; i++) {
        const OverlayRec *o = &s->overlay[i];
        if (o->off < VHDX_ALIGN || ranges_overlap(o->off, o->len, s->log_offset, s->log_length)) {
            error_set(err, EINVAL, "the log writes over the headers, the region tables or the log itself (file "
                      "offset %" PRIu64 "); refusing to replay it onto the file (a read-only mount replays it in "
                      "memory)", o->off);
            return -EINVAL;
        }
    }
    return 0;
}

int vhdx_open_writable(BlockNode *bs, VhdxState *s, Error *err)
{
    if (s->log_length == 0) {
        error_set(err, EINVAL, "the header names no log (LogLength 0): writes need one; refusing to write");
        return -EINVAL;
    }
    int r = check_entries(s, err);
    if (r == 0 && s->log_entries) {
        int64_t keep = s->file_size;
        s->file_size = s->eff_size; /* the checks below see the file the replay leaves */
        r = check_replay_targets(s, err);
        if (r == 0)
            r = check_extents(s, err);
        s->file_size = keep;
        if (r == 0 && (r = replay_onto_file(bs, s)) < 0)
            error_set(err, -r, "cannot write the replayed log onto the file: %s", strerror(-r));
        if (r == 0)
            log_msg("%s: the log (%" PRIu64 " entries) was replayed onto the file", bs->filename, s->log_replayed);
    }
    if (r == 0)
        r = check_extents(s, err);
    if (r < 0)
        return r;
    s->file_len = (uint64_t)s->file_size;
    pthread_rwlock_init(&s->lock, NULL);
    s->writable = true;
    return 0;
}

void vhdx_close_writable(BlockNode *bs, VhdxState *s)
{
    if (!s->writable)
        return;
    int r = bdrv_flush(bs->file);
    if (r == 0)
        r = log_reset(bs, s);
    if (r < 0)
        log_msg("%s: cannot close the log cleanly (%s): the next open replays it", bs->filename, strerror(-r));
    pthread_rwlock_destroy(&s->lock);
    s->writable = false;
}

int vhdx_flush(BlockNode *bs)
{
    VhdxState *s = bs->opaque;
    if (!s->writable)
        return 0;
    int r = bdrv_flush(bs->file);
    if (r < 0 || !__atomic_load_n(&s->log_active, __ATOMIC_ACQUIRE))
        return r;
    pthread_rwlock_wrlock(&s->lock);
    r = log_reset(bs, s);
    pthread_rwlock_unlock(&s->lock);
    return r;
}

/* ---------------------------------------------------------------- sector bitmaps */

/* Bits [first, first + count) of the sector bitmap at sb (a file offset) set to 1 (or 0) in the update;
 * *changed tells whether any bit changed. */
static int meta_bits(BlockNode *bs, MetaUpdate *u, uint64_t sb, uint64_t first, uint64_t count, int value,
                     bool *changed)
{
    int r = 0;
    for (uint64_t bit = first; bit < first + count && r == 0;) {
        uint64_t byte = bit / 8, sec = byte / VHDX_LOG_SECTOR * VHDX_LOG_SECTOR;
        uint8_t *p = meta_sector(bs, u, sb + sec, &r);
        if (!p)
            break;
        uint64_t stop = MIN(first + count, (sec + VHDX_LOG_SECTOR) * 8);
        for (; bit < stop; bit++) {
            uint8_t *q = p + (bit / 8 - sec), m = (uint8_t)(1u << (bit % 8));
            uint8_t v = value ? (uint8_t)(*q | m) : (uint8_t)(*q & ~m);
            *changed |= v != *q;
            *q = v;
        }
    }
    return r;
}

/* The sector-bitmap bit of block's first sector. */
static uint64_t sb_first_bit(const VhdxState *s, uint64_t block)
{
    return (block % s->chunk_ratio) * (s->block_size / s->logical_sector);
}

/* Within a partially present block: how many bytes from in_block (at most max) the bitmap gives to this
 * file (returns 1) or to the parent (0). */
static int sb_run(BlockNode *bs, VhdxState *s, uint64_t block, uint64_t in_block, uint64_t max, uint64_t *n)
{
    uint64_t sb = BAT_OFFSET(s->bat[sb_idx(s, block)]);
    uint64_t first = sb_first_bit(s, block) + in_block / s->logical_sector;
    uint64_t last = first + (max - 1) / s->logical_sector, from = first / 8;
    last = MIN(last, (from + VHDX_SCAN_BYTES) * 8 - 1);
    uint8_t bm[VHDX_SCAN_BYTES];
    int r = bdrv_pread(bs->file, (int64_t)(sb + from), (int64_t)(last / 8 - from + 1), bm);
    if (r < 0)
        return r;
    int present = (bm[0] >> (first % 8)) & 1;
    uint64_t sec = first + 1;
    while (sec <= last && ((bm[sec / 8 - from] >> (sec % 8)) & 1) == present)
        sec++;
    *n = MIN((sec - first) * s->logical_sector - in_block % s->logical_sector, max);
    return present;
}

/* ---------------------------------------------------------------- writes */

/* A new block of the file at data_end (grown to hold it whole, zeros); *host receives it. The space is
 * taken even when a later step fails (never handed out twice). */
static int block_new(BlockNode *bs, VhdxState *s, uint64_t len, uint64_t *host)
{
    uint64_t end;
    if (!add_ok_u64(s->data_end, len, &end) || end > (uint64_t)INT64_MAX || BAT_OFFSET(s->data_end) != s->data_end)
        return -ENOSPC;
    *host = s->data_end;
    s->data_end = end;
    int r = bdrv_truncate(bs->file, (int64_t)end);
    if (r == 0)
        s->file_len = MAX(s->file_len, end);
    return r;
}

/* The metadata of write_new's write (data already flushed): sector bits, BAT entries, one log entry. */
static int write_new_meta(BlockNode *bs, VhdxState *s, uint64_t block, uint64_t host, uint64_t in, uint64_t n,
                          bool partial, MetaUpdate *u)
{
    uint64_t idx = bat_idx(s, block), e = s->bat[idx], sb = 0;
    unsigned st = BAT_STATE(e);
    int r = 0;
    if (partial) {
        uint64_t sbe = s->bat[sb_idx(s, block)];
        if (BAT_STATE(sbe) == SB_PRESENT) {
            sb = BAT_OFFSET(sbe);
        } else if ((r = block_new(bs, s, VHDX_SECTOR_BITMAP_BYTES, &sb)) < 0 || (r = bdrv_flush(bs->file)) < 0) {
            return r;
        }
        bool changed = false;
        uint64_t first = sb_first_bit(s, block), spb = s->block_size / s->logical_sector;
        if (st != PAYLOAD_PARTIALLY_PRESENT) /* bits a former life of the block left behind */
            r = meta_bits(bs, u, sb, first, spb, 0, &changed);
        if (r == 0)
            r = meta_bits(bs, u, sb, first + in / s->logical_sector, n / s->logical_sector, 1, &changed);
        if (r == 0 && BAT_STATE(sbe) != SB_PRESENT)
            r = meta_bat(bs, s, u, sb_idx(s, block), sb | SB_PRESENT);
        if (r < 0)
            return r;
        if (st == PAYLOAD_PARTIALLY_PRESENT && !changed)
            u->n = 0; /* those sectors were this file's already */
    }
    uint64_t ne = host | (partial ? PAYLOAD_PARTIALLY_PRESENT : PAYLOAD_FULLY_PRESENT);
    if (ne != e && (r = meta_bat(bs, s, u, idx, ne)) < 0)
        return r;
    if ((r = meta_commit(bs, s, u)) < 0)
        return r;
    if (sb)
        s->bat[sb_idx(s, block)] = sb | SB_PRESENT;
    if (ne != e) {
        s->bat[idx] = ne;
        s->allocated_blocks += st != PAYLOAD_PARTIALLY_PRESENT;
        s->blocks_allocated += st != PAYLOAD_PARTIALLY_PRESENT;
    }
    return 0;
}

/* A write into block (no data there for at least part of [in, in + n)): a partially present block gets
 * the data in place and its bits; any other state a new block, the data flushed before the log entry that
 * names it (a differencing disk's block not present: partially present with bits for this write only,
 * so the rest stays the parent's). Caller holds the lock exclusive. */
static int write_new(BlockNode *bs, VhdxState *s, uint64_t block, uint64_t in, uint64_t n, const void *buf)
{
    uint64_t e = s->bat[bat_idx(s, block)], host = 0;
    unsigned st = BAT_STATE(e);
    uint64_t vblock = MIN((uint64_t)s->block_size, s->size - block * s->block_size);
    bool partial = st == PAYLOAD_PARTIALLY_PRESENT ||
                   (s->has_parent && st == PAYLOAD_NOT_PRESENT && (in != 0 || n < vblock));
    MetaUpdate u = { .sec = malloc(VHDX_MAX_META_SECTORS * sizeof(MetaSector)), .n = 0 };
    if (!u.sec)
        return -ENOMEM;
    int r = 0;
    if (st == PAYLOAD_PARTIALLY_PRESENT)
        host = BAT_OFFSET(e);
    else
        r = block_new(bs, s, s->block_size, &host);
    if (r == 0)
        r = bdrv_pwrite(bs->file, (int64_t)(host + in), (int64_t)n, buf, 0);
    if (r == 0)
        r = bdrv_flush(bs->file);
    if (r == 0)
        r = write_new_meta(bs, s, block, host, in, n, partial, &u);
    free(u.sec);
    return r;
}

/* In place when the block (or this run of a partially present block's sectors) is the file's; 0 sends the
 * piece to vhdx_write_allocate, as does the first write of the session (the header's GUIDs first). */
static int vhdx_write_place(BlockNode *bs, uint64_t off, uint64_t left, uint64_t *n, uint64_t *host)
{
    VhdxState *s = bs->opaque;
    uint64_t block = off / s->block_size, in = off % s->block_size;
    uint64_t e = s->bat[bat_idx(s, block)];
    *n = MIN(left, s->block_size - in);
    if (!__atomic_load_n(&s->guids_done, __ATOMIC_ACQUIRE))
        return 0;
    if (BAT_STATE(e) == PAYLOAD_FULLY_PRESENT) {
        *host = BAT_OFFSET(e) + in;
        return 1;
    }
    if (BAT_STATE(e) != PAYLOAD_PARTIALLY_PRESENT)
        return 0;
    int present = sb_run(bs, s, block, in, *n, n);
    if (present > 0)
        *host = BAT_OFFSET(e) + in;
    return present;
}

static int vhdx_write_allocate(BlockNode *bs, uint64_t off, uint64_t left, const void *buf, uint64_t *n)
{
    VhdxState *s = bs->opaque;
    uint64_t block = off / s->block_size, in = off % s->block_size;
    *n = MIN(left, s->block_size - in);
    int r = guids_renew(bs, s);
    if (r < 0)
        return r;
    uint64_t e = s->bat[bat_idx(s, block)];
    if (BAT_STATE(e) == PAYLOAD_FULLY_PRESENT) /* present already (another writer, or the GUIDs only) */
        return bdrv_pwrite(bs->file, (int64_t)(BAT_OFFSET(e) + in), (int64_t)*n, buf, 0);
    if (s->broken)
        return -EIO;
    return write_new(bs, s, block, in, *n, buf);
}

static const BlockWriteMap vhdx_write_map = { .place = vhdx_write_place, .allocate = vhdx_write_allocate,
                                              .flush = vhdx_flush };

int vhdx_write(BlockNode *bs, int64_t offset, int64_t bytes, const void *buf, int flags)
{
    VhdxState *s = bs->opaque;
    return bdrv_write_mapped_locked(bs, offset, bytes, buf, flags, &vhdx_write_map, s->writable ? &s->lock : NULL,
                                    s->size);
}

/* ---------------------------------------------------------------- write-zeroes and discard */

/* Does block read as zeros in this layer alone, never showing the parent? */
static bool block_reads_zero(const VhdxState *s, unsigned st)
{
    return st == PAYLOAD_ZERO || st == PAYLOAD_UNMAPPED || st == PAYLOAD_UNDEFINED ||
           (st == PAYLOAD_NOT_PRESENT && !s->has_parent);
}

/* Zero bytes written over [off, off + len) of one block unless it reads as zeros already. */
static int zero_part(BlockNode *bs, VhdxState *s, uint64_t off, uint64_t len)
{
    pthread_rwlock_rdlock(&s->lock);
    unsigned st = BAT_STATE(s->bat[bat_idx(s, off / s->block_size)]);
    pthread_rwlock_unlock(&s->lock);
    if (block_reads_zero(s, st))
        return 0;
    int r = 0;
    while (r == 0 && len > 0) {
        uint64_t k = MIN(len, (uint64_t)VHDX_ZERO_CHUNK);
        r = vhdx_write(bs, (int64_t)off, (int64_t)k, vhdx_zero_buf, 0);
        off += k;
        len -= k;
    }
    return r;
}

/* The new state of a whole block that must read as zeros, under the lock held exclusive: ZERO (UNMAPPED
 * when unmap is allowed: it reads as zeros too). A differencing disk's block not present gets a new block
 * of zeros instead (its file space is a hole): MS-VHDX gives ZERO zeros there as well, but libvhdi reads
 * those blocks from the parent, and a discard must never show the parent. 1: done; 0: write zero bytes. */
static int zero_state(BlockNode *bs, VhdxState *s, uint64_t block, bool unmap)
{
    uint64_t idx = bat_idx(s, block), e = s->bat[idx], ne = unmap ? PAYLOAD_UNMAPPED : PAYLOAD_ZERO;
    unsigned st = BAT_STATE(e);
    if (block_reads_zero(s, st))
        return 1;
    if (s->has_parent && st != PAYLOAD_NOT_PRESENT)
        return 0;
    MetaSector sec[1];
    MetaUpdate u = { .sec = sec, .n = 0 };
    int r = guids_renew(bs, s);
    uint64_t host;
    if (r == 0 && s->has_parent && (r = block_new(bs, s, s->block_size, &host)) == 0) {
        ne = host | PAYLOAD_FULLY_PRESENT;
        r = bdrv_flush(bs->file);
    }
    if (r == 0)
        r = meta_bat(bs, s, &u, idx, ne);
    if (r == 0)
        r = meta_commit(bs, s, &u);
    if (r < 0)
        return r;
    s->bat[idx] = ne;
    if (s->has_parent)
        s->allocated_blocks++, s->blocks_allocated++;
    else if (st == PAYLOAD_FULLY_PRESENT)
        s->allocated_blocks--;
    return 1;
}

static int zero_block(BlockNode *bs, VhdxState *s, uint64_t block, uint64_t vblock, bool unmap)
{
    pthread_rwlock_wrlock(&s->lock);
    int r = zero_state(bs, s, block, unmap);
    pthread_rwlock_unlock(&s->lock);
    if (r == 0)
        r = zero_part(bs, s, block * s->block_size, vblock);
    return r < 0 ? r : 0;
}

/* Block by block: whole blocks change state, parts of blocks get zero bytes (discard: left alone). */
static int zero_range(BlockNode *bs, int64_t offset, int64_t bytes, bool unmap, bool parts)
{
    VhdxState *s = bs->opaque;
    if (!s->writable)
        return -EROFS;
    if (offset < 0 || bytes < 0 || (uint64_t)offset + (uint64_t)bytes > s->size)
        return -EINVAL;
    uint64_t off = (uint64_t)offset, left = (uint64_t)bytes;
    int r = 0;
    while (r == 0 && left > 0) {
        uint64_t block = off / s->block_size, in = off % s->block_size;
        uint64_t vblock = MIN((uint64_t)s->block_size, s->size - block * s->block_size);
        uint64_t n = MIN(left, vblock - in);
        if (in == 0 && n == vblock)
            r = zero_block(bs, s, block, vblock, unmap);
        else if (parts)
            r = zero_part(bs, s, off, n);
        off += n;
        left -= n;
    }
    return r;
}

int vhdx_write_zeroes(BlockNode *bs, int64_t offset, int64_t bytes, int flags)
{
    return zero_range(bs, offset, bytes, flags & BDRV_REQ_MAY_UNMAP, true);
}

int vhdx_discard(BlockNode *bs, int64_t offset, int64_t bytes)
{
    return zero_range(bs, offset, bytes, true, false);
}
