/* SPDX-License-Identifier: MIT */
/*
 * emulate.c - output emulation (--emulate vmdk,vhd,vdi): a filter over a node (what disk.raw shows)
 * whose bytes are an image file of another format around that node's bytes, for VM software.
 *   vmdk: a monolithicFlat descriptor (text only) whose one FLAT extent names the raw file beside it;
 *   vhd:  the node's bytes, then a fixed-VHD footer (creator "win ", so QEMU and VirtualBox take its
 *         current size rather than the CHS product);
 *   vdi:  a static VDI 1.1 header and an identity block map, then the node's bytes.
 * The data area is the node itself: reads and writes there go to it (on a writable mount), the headers
 * are built in memory at open and never written (EPERM).  The VDI block map is computed on read, so no
 * disk size makes the header cost memory.  The facts of the three layouts are the specifications' (VMDK
 * descriptor, VHD 1.0, VirtualBox VDI 1.1); the VHD footer and the VDI header are built by their drivers
 * (vpc_fixed_footer, vdi_static_header: layouts.h), this file only chooses sizes, creator and text.
 * Opened by bdrv_open_emulated only (it takes no options and is not in the driver table: nothing probes
 * as it); it knows no FUSE.
 */
#include "block.h"
#include "layouts.h"
#include "util.h"

#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>

#define EMU_SECTOR 512
#define VDI_BLOCK ((int64_t)1 << 20)
#define VDI_MAP_OFFSET VDI_HEADER_BYTES
#define VDI_MAX_BLOCKS 0x3fffffffLL           /* the largest block count QEMU opens */
#define VHD_MAX_BYTES (VPC_MAX_CREATE_SECTORS * EMU_SECTOR)
#define VMDK_DESC_MAX 4096

typedef struct EmulateState {
    enum { EMU_VMDK, EMU_VHD, EMU_VDI } kind;
    uint8_t *head;       /* head_len bytes before the node's: descriptor, or VDI header (map computed) */
    int64_t head_len;
    int64_t data_len;    /* the data area: the node's size rounded up (VDI: to whole blocks) */
    int64_t disk_len;    /* the node's size at open; data past it reads as zeros */
    uint8_t tail[VPC_FOOTER_SIZE]; /* the VHD footer */
    int64_t tail_len;
    int64_t vdi_blocks;
} EmulateState;

static void random_bytes(uint8_t *p, size_t n)
{
    if (getrandom(p, n, GRND_NONBLOCK) != (ssize_t)n)
        for (size_t i = 0; i < n; i++)
            p[i] = (uint8_t)(rand() >> 7);
}

static int build_vhd(EmulateState *s, Error *err, const char *name)
{
    s->data_len = align_up(s->disk_len, EMU_SECTOR);
    if (s->data_len > VHD_MAX_BYTES) {
        error_set(err, EFBIG, "%s: --emulate vhd: the disk (%" PRId64 " bytes) is larger than a VHD may be "
                  "(2040 GiB)", name, s->disk_len);
        return -EFBIG;
    }
    /* creator "win " (Hyper-V, version 10.0): one whose current size QEMU and VirtualBox use */
    vpc_fixed_footer(s->tail, s->data_len / EMU_SECTOR, "win ", 0x000a0000);
    s->tail_len = VPC_FOOTER_SIZE;
    return 0;
}

static int build_vdi(EmulateState *s, Error *err, const char *name)
{
    s->vdi_blocks = s->disk_len / VDI_BLOCK + (s->disk_len % VDI_BLOCK != 0);
    if (s->vdi_blocks > VDI_MAX_BLOCKS) {
        error_set(err, EFBIG, "%s: --emulate vdi: the disk (%" PRId64 " bytes) has more 1 MiB blocks than a VDI "
                  "may hold", name, s->disk_len);
        return -EFBIG;
    }
    s->data_len = s->vdi_blocks * VDI_BLOCK;
    s->head_len = align_up(VDI_MAP_OFFSET + s->vdi_blocks * 4, VDI_BLOCK); /* data at a 1 MiB boundary */
    if (!(s->head = calloc(1, VDI_MAP_OFFSET)))
        return -ENOMEM;
    vdi_static_header(s->head, "<<< imgfuse emulated VirtualBox Disk Image >>>\n",
                      (uint64_t)align_up(s->disk_len, EMU_SECTOR), (uint32_t)s->head_len);
    return 0;
}

static int build_vmdk(EmulateState *s, const char *raw_name)
{
    int64_t sectors = s->disk_len / EMU_SECTOR + (s->disk_len % EMU_SECTOR != 0);
    uint32_t cid;
    random_bytes((uint8_t *)&cid, sizeof cid);
    int64_t cyl = MIN(sectors / (16 * 63), (int64_t)16383);
    if (!(s->head = malloc(VMDK_DESC_MAX)))
        return -ENOMEM;
    int n = snprintf((char *)s->head, VMDK_DESC_MAX,
                     "# Disk DescriptorFile\nversion=1\nCID=%08" PRIx32 "\nparentCID=ffffffff\n"
                     "createType=\"monolithicFlat\"\n\n# Extent description\nRW %" PRId64 " FLAT \"%s\" 0\n\n"
                     "# The Disk Data Base\n#DDB\n\nddb.virtualHWVersion = \"4\"\n"
                     "ddb.geometry.cylinders = \"%" PRId64 "\"\nddb.geometry.heads = \"16\"\n"
                     "ddb.geometry.sectors = \"63\"\nddb.adapterType = \"ide\"\n",
                     cid, sectors, raw_name, MAX(cyl, (int64_t)1));
    if (n < 0 || n >= VMDK_DESC_MAX)
        return -ENAMETOOLONG;
    s->head_len = n;
    s->data_len = 0;
    return 0;
}

static int64_t emulate_getlength(BlockNode *bs)
{
    EmulateState *s = bs->opaque;
    return s->head_len + s->data_len + s->tail_len;
}

/* Header bytes [offset, offset + bytes) of the head (VDI: header, computed map, padding). */
static void read_head(EmulateState *s, int64_t offset, int64_t bytes, uint8_t *buf)
{
    if (s->kind != EMU_VDI) {
        memcpy(buf, s->head + offset, (size_t)bytes);
        return;
    }
    for (int64_t i = 0; i < bytes; i++) {
        int64_t o = offset + i, m = o - VDI_MAP_OFFSET;
        if (o < VDI_MAP_OFFSET)
            buf[i] = s->head[o];
        else if (m < s->vdi_blocks * 4)
            buf[i] = (uint8_t)((uint32_t)(m / 4) >> (8 * (m % 4))); /* entry i = block i */
        else
            buf[i] = 0;
    }
}

static int emulate_read(BlockNode *bs, int64_t offset, int64_t bytes, void *buf)
{
    EmulateState *s = bs->opaque;
    uint8_t *out = buf;
    while (bytes > 0) {
        int64_t n;
        if (offset < s->head_len) {
            n = MIN(bytes, s->head_len - offset);
            read_head(s, offset, n, out);
        } else if (offset < s->head_len + s->data_len) {
            int64_t d = offset - s->head_len;
            n = MIN(bytes, s->data_len - d);
            int64_t in_disk = MAX(MIN(n, s->disk_len - d), (int64_t)0);
            int r = in_disk ? bdrv_pread(bs->file, d, in_disk, out) : 0;
            if (r < 0)
                return r;
            memset(out + in_disk, 0, (size_t)(n - in_disk));
        } else {
            int64_t t = offset - s->head_len - s->data_len;
            n = MIN(bytes, s->tail_len - t);
            if (n <= 0)
                return -EIO;
            memcpy(out, s->tail + t, (size_t)n);
        }
        offset += n;
        out += n;
        bytes -= n;
    }
    return 0;
}

/* The node's offset for a data-area range that lies inside the node, else -EPERM (headers, padding). */
static int64_t data_offset(EmulateState *s, int64_t offset, int64_t bytes)
{
    int64_t d = offset - s->head_len;
    return d >= 0 && d <= s->disk_len && bytes <= s->disk_len - d ? d : -EPERM;
}

static int emulate_write(BlockNode *bs, int64_t offset, int64_t bytes, const void *buf, int flags)
{
    int64_t d = data_offset(bs->opaque, offset, bytes);
    return d < 0 ? (int)d : bdrv_pwrite(bs->file, d, bytes, buf, flags);
}

static int emulate_write_zeroes(BlockNode *bs, int64_t offset, int64_t bytes, int flags)
{
    int64_t d = data_offset(bs->opaque, offset, bytes);
    return d < 0 ? (int)d : bdrv_pwrite_zeroes(bs->file, d, bytes, flags);
}

static int emulate_discard(BlockNode *bs, int64_t offset, int64_t bytes)
{
    int64_t d = data_offset(bs->opaque, offset, bytes);
    return d < 0 ? (int)d : bdrv_discard(bs->file, d, bytes);
}

static int emulate_flush(BlockNode *bs)
{
    return bdrv_flush(bs->file);
}

/* Headers are data; the data area is what the node below says it is (data or zeros, no host offsets). */
static int emulate_block_status(BlockNode *bs, int64_t offset, int64_t bytes, BlockStatus *st)
{
    EmulateState *s = bs->opaque;
    int64_t d = offset - s->head_len;
    st->flags = BDRV_BLOCK_DATA | BDRV_BLOCK_ALLOCATED;
    if (offset < s->head_len) {
        st->bytes = MIN(bytes, s->head_len - offset);
        return 0;
    }
    if (d >= s->data_len) {
        st->bytes = bytes;
        return 0;
    }
    if (d >= s->disk_len) {
        st->flags = BDRV_BLOCK_ZERO | BDRV_BLOCK_ALLOCATED;
        st->bytes = MIN(bytes, s->data_len - d);
        return 0;
    }
    BlockStatus below;
    memset(&below, 0, sizeof below);
    int r = bdrv_block_status_above(bs->file, d, MIN(bytes, s->disk_len - d), &below);
    if (r < 0)
        return r;
    st->flags = BDRV_BLOCK_ALLOCATED | (below.flags & (BDRV_BLOCK_DATA | BDRV_BLOCK_ZERO));
    if (!(st->flags & (BDRV_BLOCK_DATA | BDRV_BLOCK_ZERO)))
        st->flags |= BDRV_BLOCK_ZERO; /* unallocated at the bottom of the chain reads as zeros */
    st->bytes = MAX(MIN(below.bytes, s->disk_len - d), (int64_t)1);
    return 0;
}

static void emulate_close(BlockNode *bs)
{
    EmulateState *s = bs->opaque;
    free(s->head);
}

static const BlockDriver bdrv_emulate = {
    .name = "emulate",
    .instance_size = sizeof(EmulateState),
    .is_filter = true,
    .close = emulate_close,
    .read = emulate_read,
    .write = emulate_write,
    .write_zeroes = emulate_write_zeroes,
    .discard = emulate_discard,
    .flush = emulate_flush,
    .block_status = emulate_block_status,
    .getlength = emulate_getlength,
};

BlockNode *bdrv_open_emulated(BlockNode *bs, const char *kind, const char *raw_name, Error *err)
{
    int64_t len = bdrv_getlength(bs);
    if (len < 0) {
        error_set(err, (int)-len, "%s: cannot get the disk size: %s", bs->filename, strerror((int)-len));
        return NULL;
    }
    BlockNode *w = bdrv_new_node_over(&bdrv_emulate, bs, err);
    if (!w)
        return NULL;
    EmulateState *s = w->opaque;
    s->disk_len = len;
    int r;
    if (strcmp(kind, "vhd") == 0) {
        s->kind = EMU_VHD;
        r = build_vhd(s, err, bs->filename);
    } else if (strcmp(kind, "vdi") == 0) {
        s->kind = EMU_VDI;
        r = build_vdi(s, err, bs->filename);
    } else if (strcmp(kind, "vmdk") == 0) {
        s->kind = EMU_VMDK;
        r = build_vmdk(s, raw_name);
    } else {
        error_set(err, EINVAL, "%s: --emulate: unknown format '%s' (vmdk, vhd or vdi)", bs->filename, kind);
        r = -EINVAL;
    }
    if (r < 0) {
        error_set(err, -r, "%s: --emulate %s: %s", bs->filename, kind, strerror(-r));
        bdrv_close(w);
        return NULL;
    }
    return w;
}
