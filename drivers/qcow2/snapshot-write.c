/* SPDX-License-Identifier: MIT */
/*
 * snapshot-write.c - creating, deleting and applying (reverting to) qcow2 internal snapshots.  Each
 * operation builds the new snapshot list and active L1 table in memory and hands them to the metadata
 * generation commit of check.c, which writes every changed structure to fresh clusters and switches to
 * them with one header write: a crash leaves the snapshot either whole or absent.  Snapshot entries are
 * written as QEMU writes them (numeric ids, 24 bytes of extra data: VM state size, disk size,
 * instruction count).  Reading snapshots lives in snapshot.c.
 */
#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "qcow2.h"
#include "util.h"

#define QCOW2_SNAPSHOT_EXTRA_LEN 24

static int qcow2_snapshot_begin(BlockNode *bs, Qcow2State *s, const char *what, const char *name, Error *err)
{
    int ret = qcow2_exclusive_begin(s);
    if (ret < 0)
        error_set(err, -ret, "%s: cannot %s snapshot '%s': %s", bs->filename, what, name,
                  ret == -EROFS ? "the image is opened read-only" : strerror(-ret));
    return ret;
}

static Qcow2CommitSnapshot *qcow2_current_snapshots(const Qcow2State *s, uint32_t extra)
{
    Qcow2CommitSnapshot *list = calloc(s->nb_snapshots + extra ? s->nb_snapshots + extra : 1, sizeof(*list));
    if (list)
        for (uint32_t k = 0; k < s->nb_snapshots; k++)
            list[k].sn = s->snapshots[k];
    return list;
}

static void qcow2_next_snapshot_id(const Qcow2State *s, char *out, size_t len)
{
    unsigned long long max = 0;
    for (uint32_t k = 0; k < s->nb_snapshots; k++) {
        unsigned long long v = strtoull(s->snapshots[k].id_str, NULL, 10);
        if (v > max)
            max = v;
    }
    snprintf(out, len, "%llu", max + 1);
}

static bool qcow2_name_taken(const Qcow2State *s, const char *name)
{
    for (uint32_t k = 0; k < s->nb_snapshots; k++)
        if (strcmp(s->snapshots[k].name, name) == 0)
            return true;
    return false;
}

static int qcow2_do_snapshot_create(BlockNode *bs, Qcow2State *s, const char *name, Error *err)
{
    if (qcow2_name_taken(s, name)) {
        error_set(err, EEXIST, "%s: a snapshot named '%s' already exists", bs->filename, name);
        return -EEXIST;
    }
    if (s->nb_snapshots >= QCOW2_MAX_SNAPSHOTS) {
        error_set(err, ENOSPC, "%s: too many snapshots", bs->filename);
        return -ENOSPC;
    }
    char id[32];
    qcow2_next_snapshot_id(s, id, sizeof(id));
    uint8_t extra[QCOW2_SNAPSHOT_EXTRA_LEN];
    st_be64(extra, 0);           /* VM state size */
    st_be64(extra + 8, s->size); /* disk size */
    st_be64(extra + 16, UINT64_MAX); /* instruction count: not recorded */
    struct timespec now;
    clock_gettime(CLOCK_REALTIME, &now);
    Qcow2CommitSnapshot *list = qcow2_current_snapshots(s, 1);
    if (!list) {
        error_set(err, ENOMEM, "%s: out of memory", bs->filename);
        return -ENOMEM;
    }
    Qcow2CommitSnapshot *nsn = &list[s->nb_snapshots];
    nsn->sn = (Qcow2Snapshot){
        .l1_size = s->l1_size,
        .id_str = id,
        .name = (char *)name,
        .date_sec = (uint64_t)now.tv_sec,
        .date_nsec = (uint32_t)now.tv_nsec,
        .disk_size = s->size,
        .has_disk_size = true,
        .icount = UINT64_MAX,
        .extra_data_size = sizeof(extra),
        .extra_data = extra,
    };
    nsn->new_l1 = s->l1_table;
    int ret = qcow2_commit_generation(s, s->l1_table, s->l1_size, s->size, list, s->nb_snapshots + 1, err);
    free(list);
    return ret;
}

int qcow2_snapshot_create(BlockNode *bs, const char *name, Error *err)
{
    Qcow2State *s = bs->opaque;
    if (!name || !name[0] || strlen(name) > UINT16_MAX) {
        error_set(err, EINVAL, "%s: invalid snapshot name", bs->filename);
        return -EINVAL;
    }
    int ret = qcow2_snapshot_begin(bs, s, "create", name, err);
    if (ret < 0)
        return ret;
    ret = qcow2_do_snapshot_create(bs, s, name, err);
    qcow2_exclusive_end(s);
    return ret;
}

int qcow2_snapshot_delete(BlockNode *bs, const char *id_or_name, Error *err)
{
    Qcow2State *s = bs->opaque;
    int ret = qcow2_snapshot_begin(bs, s, "delete", id_or_name, err);
    if (ret < 0)
        return ret;
    int idx = qcow2_find_snapshot(s, id_or_name);
    Qcow2CommitSnapshot *list = idx >= 0 ? qcow2_current_snapshots(s, 0) : NULL;
    if (idx < 0) {
        error_set(err, ENOENT, "%s: no snapshot '%s'", bs->filename, id_or_name);
        ret = -ENOENT;
    } else if (!list) {
        error_set(err, ENOMEM, "%s: out of memory", bs->filename);
        ret = -ENOMEM;
    } else {
        memmove(&list[idx], &list[idx + 1], (s->nb_snapshots - (uint32_t)idx - 1) * sizeof(*list));
        ret = qcow2_commit_generation(s, s->l1_table, s->l1_size, s->size, list, s->nb_snapshots - 1, err);
    }
    free(list);
    qcow2_exclusive_end(s);
    return ret;
}

static int qcow2_do_snapshot_goto(BlockNode *bs, Qcow2State *s, int idx, Error *err)
{
    const Qcow2Snapshot *sn = &s->snapshots[idx];
    if (qcow2_size_to_l1(s, sn->disk_size) > sn->l1_size) {
        error_set(err, EINVAL, "%s: snapshot '%s' has an L1 table too small for its disk size", bs->filename,
                  sn->name);
        return -EINVAL;
    }
    uint64_t *l1;
    int ret = qcow2_load_l1(s, sn->l1_table_offset, sn->l1_size, &l1);
    if (ret < 0) {
        error_set(err, -ret, "%s: cannot read the L1 table of snapshot '%s': %s", bs->filename, sn->name,
                  strerror(-ret));
        return ret;
    }
    Qcow2CommitSnapshot *list = qcow2_current_snapshots(s, 0);
    if (!list) {
        free(l1);
        error_set(err, ENOMEM, "%s: out of memory", bs->filename);
        return -ENOMEM;
    }
    ret = qcow2_commit_generation(s, l1, sn->l1_size, sn->disk_size, list, s->nb_snapshots, err);
    free(list);
    free(l1);
    return ret;
}

int qcow2_snapshot_goto(BlockNode *bs, const char *id_or_name, Error *err)
{
    Qcow2State *s = bs->opaque;
    int ret = qcow2_snapshot_begin(bs, s, "apply", id_or_name, err);
    if (ret < 0)
        return ret;
    int idx = qcow2_find_snapshot(s, id_or_name);
    if (idx < 0) {
        error_set(err, ENOENT, "%s: no snapshot '%s'", bs->filename, id_or_name);
        ret = -ENOENT;
    } else {
        ret = qcow2_do_snapshot_goto(bs, s, idx, err);
    }
    qcow2_exclusive_end(s);
    return ret;
}
