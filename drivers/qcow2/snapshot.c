/* SPDX-License-Identifier: MIT */
/*
 * snapshot.c - the read side of qcow2 internal snapshots: parsing and validating the snapshot table,
 * listing snapshots, opening a read-only view node that shows the disk as it was at a snapshot (the
 * snapshot's own L1 table and virtual size, sharing the image's file, backing chain, metadata lock and
 * L2 cache), and reading a snapshot's saved VM state, which lives in the snapshot's guest address space
 * starting at the first L1 entry past its disk.  Creating and deleting snapshots is the write path's.
 */
#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "qcow2.h"
#include "util.h"


#define QCOW2_SNAPSHOT_HEADER_LEN 40

void qcow2_free_snapshots(Qcow2State *s)
{
    if (s->snapshots) {
        for (uint32_t i = 0; i < s->nb_snapshots; i++) {
            free(s->snapshots[i].id_str);
            free(s->snapshots[i].name);
            free(s->snapshots[i].extra_data);
        }
    }
    free(s->snapshots);
    s->snapshots = NULL;
}

static char *qcow2_read_string(Qcow2State *s, uint64_t offset, uint32_t len, int *ret)
{
    char *str = malloc((size_t)len + 1);
    if (!str) {
        *ret = -ENOMEM;
        return NULL;
    }
    *ret = len ? bdrv_pread(s->meta_file, (int64_t)offset, len, str) : 0;
    if (*ret < 0) {
        free(str);
        return NULL;
    }
    str[len] = '\0';
    return str;
}

static void qcow2_snapshot_extra(Qcow2State *s, Qcow2Snapshot *sn, uint32_t vm_state_size32)
{
    const uint8_t *e = sn->extra_data;
    sn->vm_state_size = sn->extra_data_size >= 8 ? ld_be64(e) : vm_state_size32;
    sn->has_disk_size = sn->extra_data_size >= 16;
    sn->disk_size = sn->has_disk_size ? ld_be64(e + 8) : s->size;
    sn->icount = sn->extra_data_size >= 24 ? ld_be64(e + 16) : UINT64_MAX;
}

/* Parse the entry at *pos (advanced past it). */
static int qcow2_read_one_snapshot(Qcow2State *s, uint64_t *pos, uint64_t table_end, Qcow2Snapshot *sn,
                                   Error *err)
{
    uint8_t h[QCOW2_SNAPSHOT_HEADER_LEN];
    if (*pos + sizeof(h) > table_end) {
        error_set(err, EINVAL, "snapshot table runs past the end of the file");
        return -EINVAL;
    }
    int ret = bdrv_pread(s->meta_file, (int64_t)*pos, sizeof(h), h);
    if (ret < 0) {
        error_set(err, -ret, "cannot read the snapshot table: %s", strerror(-ret));
        return ret;
    }
    sn->l1_table_offset = ld_be64(h);
    sn->l1_size = ld_be32(h + 8);
    uint16_t id_len = ld_be16(h + 12), name_len = ld_be16(h + 14);
    sn->date_sec = ld_be32(h + 16);
    sn->date_nsec = ld_be32(h + 20);
    sn->vm_clock_nsec = ld_be64(h + 24);
    uint32_t vm_state_size32 = ld_be32(h + 32);
    sn->extra_data_size = ld_be32(h + 36);
    if (sn->extra_data_size > QCOW2_MAX_SNAPSHOT_EXTRA) {
        error_set(err, EINVAL, "snapshot extra data too large (%" PRIu32 " bytes)", sn->extra_data_size);
        return -EINVAL;
    }
    /* The padding of the last entry may lie past the end of the file. */
    uint64_t data_len = sizeof(h) + (uint64_t)sn->extra_data_size + id_len + name_len;
    uint64_t entry_len = (uint64_t)align_up((int64_t)data_len, 8);
    if (data_len > table_end - *pos) {
        error_set(err, EINVAL, "snapshot table runs past the end of the file");
        return -EINVAL;
    }
    uint64_t p = *pos + sizeof(h);
    sn->extra_data = (uint8_t *)qcow2_read_string(s, p, sn->extra_data_size, &ret);
    if (ret == 0)
        sn->id_str = qcow2_read_string(s, p + sn->extra_data_size, id_len, &ret);
    if (ret == 0)
        sn->name = qcow2_read_string(s, p + sn->extra_data_size + id_len, name_len, &ret);
    if (ret < 0) {
        error_set(err, -ret, "cannot read the snapshot table: %s", strerror(-ret));
        return ret;
    }
    qcow2_snapshot_extra(s, sn, vm_state_size32);
    *pos += entry_len;
    return 0;
}

static int qcow2_check_snapshot(Qcow2State *s, const Qcow2Snapshot *sn, int64_t file_size, Error *err)
{
    uint64_t end;
    if ((uint64_t)sn->l1_size * 8 > QCOW2_MAX_L1_BYTES) {
        error_set(err, EFBIG, "snapshot '%s': L1 table too large (%" PRIu32 " entries)", sn->name, sn->l1_size);
        return -EFBIG;
    }
    if ((sn->l1_table_offset & s->cluster_mask) ||
        !add_ok_u64(sn->l1_table_offset, (uint64_t)sn->l1_size * 8, &end) || end > (uint64_t)file_size) {
        error_set(err, EINVAL, "snapshot '%s': bad L1 table offset 0x%" PRIx64, sn->name, sn->l1_table_offset);
        return -EINVAL;
    }
    if (sn->disk_size > QCOW2_MAX_VIRTUAL_SIZE) {
        error_set(err, EINVAL, "snapshot '%s': virtual size too large", sn->name);
        return -EINVAL;
    }
    return 0;
}

int qcow2_read_snapshots(Qcow2State *s, Error *err)
{
    if (s->nb_snapshots == 0)
        return 0;
    int64_t file_size = bdrv_getlength(s->meta_file);
    if (file_size < 0) {
        error_set(err, (int)-file_size, "cannot get the file size");
        return (int)file_size;
    }
    uint64_t table_end = MIN((uint64_t)file_size, s->snapshots_offset + QCOW2_MAX_SNAPSHOT_TABLE_BYTES);
    s->snapshots = calloc(s->nb_snapshots, sizeof(Qcow2Snapshot));
    if (!s->snapshots) {
        error_set(err, ENOMEM, "out of memory reading %" PRIu32 " snapshots", s->nb_snapshots);
        return -ENOMEM;
    }
    uint64_t pos = s->snapshots_offset;
    for (uint32_t i = 0; i < s->nb_snapshots; i++) {
        int ret = qcow2_read_one_snapshot(s, &pos, table_end, &s->snapshots[i], err);
        if (ret == 0)
            ret = qcow2_check_snapshot(s, &s->snapshots[i], file_size, err);
        if (ret < 0)
            return ret;
    }
    s->snapshots_size = pos - s->snapshots_offset;
    return 0;
}

int qcow2_find_snapshot(const Qcow2State *s, const char *id_or_name)
{
    if (!s->snapshots || !id_or_name)
        return -1;
    for (uint32_t i = 0; i < s->nb_snapshots; i++)
        if (strcmp(s->snapshots[i].id_str, id_or_name) == 0)
            return (int)i;
    for (uint32_t i = 0; i < s->nb_snapshots; i++)
        if (strcmp(s->snapshots[i].name, id_or_name) == 0)
            return (int)i;
    return -1;
}

int qcow2_snapshot_list(BlockNode *bs, SnapshotInfo **list)
{
    Qcow2State *s = bs->opaque;
    *list = NULL;
    pthread_mutex_lock(s->lock);
    uint32_t n = s->nb_snapshots;
    SnapshotInfo *out = calloc(n ? n : 1, sizeof(*out));
    if (!out) {
        pthread_mutex_unlock(s->lock);
        return -ENOMEM;
    }
    for (uint32_t i = 0; i < n; i++) {
        const Qcow2Snapshot *sn = &s->snapshots[i];
        snprintf(out[i].id, sizeof(out[i].id), "%s", sn->id_str);
        snprintf(out[i].name, sizeof(out[i].name), "%s", sn->name);
        out[i].date_sec = sn->date_sec;
        out[i].date_nsec = sn->date_nsec;
        out[i].vm_clock_nsec = sn->vm_clock_nsec;
        out[i].vm_state_size = sn->vm_state_size;
        out[i].disk_size = sn->disk_size;
        out[i].icount = sn->icount;
    }
    pthread_mutex_unlock(s->lock);
    *list = out;
    return (int)n;
}

uint64_t qcow2_vm_state_offset(const Qcow2State *s, uint64_t disk_size)
{
    return qcow2_size_to_l1(s, disk_size) << (s->cluster_bits + s->l2_bits);
}

/* ---------------------------------------------------------------- L1 slices */

/* Views and vmstate reads never load a snapshot's L1 table whole (up to 32 MiB each, and an image may hold
 * thousands): the entries a lookup needs are read in slices of QCOW2_L1_SLICE_ENTRIES through one cache per
 * image of QCOW2_L1_SLICE_SLOTS slices, evicted least recently used.  A slice is keyed by its host offset
 * and length, so tables that overlap or share an offset cannot mix entries. */
typedef struct Qcow2L1Slice {
    uint64_t offset;     /* host offset of the slice's first entry */
    uint32_t entries;    /* 0: the slot is empty */
    uint64_t last_use;
    uint64_t e[QCOW2_L1_SLICE_ENTRIES]; /* host byte order */
} Qcow2L1Slice;

struct Qcow2L1Slices {
    uint64_t tick;
    Qcow2L1Slice slot[QCOW2_L1_SLICE_SLOTS];
};

static Qcow2L1Slice *qcow2_l1_slice_find(struct Qcow2L1Slices *c, uint64_t offset, uint32_t entries)
{
    Qcow2L1Slice *victim = NULL;
    for (int i = 0; i < QCOW2_L1_SLICE_SLOTS; i++) {
        Qcow2L1Slice *sl = &c->slot[i];
        if (sl->entries == entries && sl->offset == offset)
            return sl;
        bool better = !victim || (victim->entries && (!sl->entries || sl->last_use < victim->last_use));
        if (better)
            victim = sl;
    }
    victim->entries = 0; /* the caller fills it */
    return victim;
}

int qcow2_snapshot_l1_entry(Qcow2State *img, uint64_t l1_offset, uint32_t l1_size, uint64_t index,
                            uint64_t *entry)
{
    *entry = 0;
    if (index >= l1_size)
        return 0;
    if (!img->l1_slices && !(img->l1_slices = calloc(1, sizeof(*img->l1_slices))))
        return -ENOMEM;
    uint64_t first = index / QCOW2_L1_SLICE_ENTRIES * QCOW2_L1_SLICE_ENTRIES;
    uint32_t n = (uint32_t)MIN((uint64_t)QCOW2_L1_SLICE_ENTRIES, l1_size - first);
    uint64_t offset = l1_offset + first * 8; /* cannot wrap: the table was checked to lie inside the file */
    Qcow2L1Slice *sl = qcow2_l1_slice_find(img->l1_slices, offset, n);
    if (sl->entries == 0) {
        int ret = bdrv_pread(img->meta_file, (int64_t)offset, (int64_t)n * 8, sl->e);
        if (ret < 0)
            return ret;
        for (uint32_t i = 0; i < n; i++)
            sl->e[i] = ld_be64(&sl->e[i]);
        sl->offset = offset;
        sl->entries = n;
    }
    sl->last_use = ++img->l1_slices->tick;
    *entry = sl->e[index - first];
    return 0;
}

int qcow2_view_l1_entry(Qcow2State *v, uint64_t index, uint64_t *entry)
{
    Qcow2State *img = v->parent;
    if (v->view_generation != img->snapshot_generation) {
        /* The table was rewritten (a snapshot created, deleted or applied): the tables moved. */
        int idx = -1;
        for (uint32_t i = 0; i < img->nb_snapshots && idx < 0; i++)
            if (strcmp(img->snapshots[i].id_str, v->view_snapshot_id) == 0)
                idx = (int)i;
        if (idx < 0) {
            *entry = 0;
            return -EIO; /* the snapshot is gone */
        }
        v->view_l1_offset = img->snapshots[idx].l1_table_offset;
        v->l1_size = MIN(v->l1_size, img->snapshots[idx].l1_size);
        v->view_generation = img->snapshot_generation;
    }
    return qcow2_snapshot_l1_entry(img, v->view_l1_offset, v->l1_size, index, entry);
}

void qcow2_l1_slices_invalidate(Qcow2State *s)
{
    s->snapshot_generation++;
    if (s->l1_slices)
        for (int i = 0; i < QCOW2_L1_SLICE_SLOTS; i++)
            s->l1_slices->slot[i].entries = 0;
}

void qcow2_l1_slices_free(Qcow2State *s)
{
    free(s->l1_slices);
    s->l1_slices = NULL;
}

uint64_t qcow2_l1_slices_memory(const Qcow2State *s)
{
    return s->l1_slices ? sizeof(*s->l1_slices) : 0;
}

uint64_t qcow2_snapshots_memory(const Qcow2State *s)
{
    uint64_t bytes = (uint64_t)s->nb_snapshots * sizeof(Qcow2Snapshot);
    for (uint32_t i = 0; s->snapshots && i < s->nb_snapshots; i++)
        bytes += s->snapshots[i].extra_data_size + strlen(s->snapshots[i].id_str) + strlen(s->snapshots[i].name) + 2;
    return bytes;
}

/* ---------------------------------------------------------------- views */

/* Fill a view's state: the geometry of the parent, where the snapshot's L1 table is and the snapshot's
 * size, and the parent's files, lock and caches. Pointers the parent owns are not copied. Nothing is read:
 * opening a view costs a few hundred bytes, whatever the size of the snapshot's L1 table. */
static int qcow2_init_view(Qcow2State *v, Qcow2State *s, const Qcow2Snapshot *sn)
{
    memcpy(v, s, sizeof(*v));
    v->l1_table = NULL;
    v->l1_size = sn->l1_size;
    v->l1_alloc_entries = 0;
    v->view_l1_offset = sn->l1_table_offset;
    v->view_generation = s->snapshot_generation;
    v->l1_slices = NULL;
    v->size = sn->disk_size;
    v->l1_vm_state_index = (uint32_t)qcow2_size_to_l1(s, sn->disk_size);
    v->refcount_table = NULL;
    v->refcount_table_size = 0;
    v->snapshots = NULL;
    v->nb_snapshots = 0;
    v->backing_file = v->backing_format = v->data_file_name = NULL;
    v->features = NULL;
    v->nb_features = 0;
    v->unknown_exts = NULL;
    v->nb_unknown_exts = 0;
    v->owns_data_file = false;
    v->data_file_path = NULL;
    v->refcount_cache = NULL;
    v->meta = NULL;
    v->owns_caches = false;
    v->read_only = true;
    v->header_dirty = false;
    v->is_snapshot_view = true;
    v->parent = s;
    v->corruption_logged = v->decompress_logged = 0;
    qcow2_dcache_init(&v->dcache);
    v->lock = s->lock;
    v->node_name = strdup(s->node_name ? s->node_name : "qcow2");
    v->view_snapshot_name = strdup(sn->name);
    v->view_snapshot_id = strdup(sn->id_str);
    if (!v->node_name || !v->view_snapshot_name || !v->view_snapshot_id)
        return -ENOMEM;
    return 0;
}

BlockNode *qcow2_snapshot_open(BlockNode *bs, const char *id, Error *err)
{
    Qcow2State *s = bs->opaque;
    pthread_mutex_lock(s->lock);
    int idx = qcow2_find_snapshot(s, id);
    Qcow2Snapshot sn = idx >= 0 ? s->snapshots[idx] : (Qcow2Snapshot){ 0 };
    pthread_mutex_unlock(s->lock);
    if (idx < 0) {
        error_set(err, ENOENT, "%s: no snapshot '%s'", bs->filename, id);
        return NULL;
    }
    BlockNode *view = bdrv_new_node(&bdrv_qcow2, bs->filename);
    if (!view) {
        error_set(err, ENOMEM, "%s: out of memory", bs->filename);
        return NULL;
    }
    Qcow2State *v = view->opaque;
    /* The snapshot's strings stay valid: the view copies what it needs while the table is unchanged. */
    pthread_mutex_lock(s->lock);
    int ret = qcow2_init_view(v, s, &sn);
    pthread_mutex_unlock(s->lock);
    view->read_only = true;
    view->opts = bs->opts;
    view->depth = bs->depth;
    view->request_alignment = v->crypt ? 512 : 1;
    view->file = bs->file;
    view->backing = bs->backing;
    bdrv_ref(view->file);
    bdrv_ref(view->backing);
    bdrv_ref(bs); /* the view uses the parent's lock and cache: keep the parent alive */
    v->backing_node = bs->backing;
    v->parent_node = bs;
    if (ret < 0) {
        error_set(err, -ret, "%s: cannot open snapshot '%s': %s", bs->filename, id, strerror(-ret));
        bdrv_close(view);
        return NULL;
    }
    return view;
}

/* ---------------------------------------------------------------- vmstate */

int qcow2_vmstate_read(BlockNode *bs, const char *id, int64_t offset, int64_t bytes, void *buf)
{
    Qcow2State *s = bs->opaque;
    if (offset < 0 || bytes < 0)
        return -EINVAL;
    pthread_mutex_lock(s->lock);
    int idx = qcow2_find_snapshot(s, id);
    Qcow2Snapshot sn = idx >= 0 ? s->snapshots[idx] : (Qcow2Snapshot){ 0 };
    pthread_mutex_unlock(s->lock);
    if (idx < 0)
        return -ENOENT;
    if ((uint64_t)offset >= sn.vm_state_size || bytes == 0)
        return 0;
    int64_t n = (int64_t)MIN((uint64_t)bytes, sn.vm_state_size - (uint64_t)offset);
    uint64_t start = qcow2_vm_state_offset(s, sn.disk_size) + (uint64_t)offset;
    /* The L1 entries covering this request are read in slices; the VM state never falls through to a
     * backing file: unallocated parts read as zeros. */
    Qcow2L1Ref l1 = { .table = NULL, .offset = sn.l1_table_offset, .size = sn.l1_size };
    int ret = qcow2_read_l1(bs, NULL, &l1, (int64_t)start, n, buf);
    return ret < 0 ? ret : (int)n;
}
