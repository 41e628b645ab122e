/* SPDX-License-Identifier: MIT */
/*
 * render.c - turns what the block layer says about a chain into text for people and JSON for
 * programs: `imgfuse info`, MNT/info, MNT/info.json, MNT/stats.json and `imgfuse map`.  It renders the
 * InfoList of each node generically (whatever keys the drivers add), walks block status through the
 * chain (streamed, see MapStream) and adds the statistics, memory and resident size of the nodes.
 * Every string a file can supply (names, paths, notes, driver strings) is escaped here, in one place:
 * text with sb_text_str, JSON with sb_json_member (valid UTF-8 always, KEY_hex for exact bytes).  It
 * knows no image format and no FUSE.
 */
#include <errno.h>
#include <inttypes.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "imgfuse.h"
#include "util.h"

/* Integers whose key names a size get a human-readable size after them in the text form. */
static bool key_is_size(const char *key)
{
    size_t n = strlen(key);
    return strstr(key, "size") || (n > 6 && strcmp(key + n - 6, "_bytes") == 0);
}

/* "NAME: VALUE\n" with VALUE escaped (sb_text_str): every string an image supplies goes through here. */
static void text_line(StrBuf *sb, const char *indent, const char *name, const char *value)
{
    sb_printf(sb, "%s", indent);
    sb_text_str(sb, name);
    sb_put(sb, ": ", 2);
    sb_text_str(sb, value);
    sb_put(sb, "\n", 1);
}

static void render_item_text(StrBuf *sb, const InfoItem *it)
{
    if (it->str) {
        text_line(sb, "  ", it->key, it->str);
    } else if (it->is_bool) {
        sb_printf(sb, "  %s: %s\n", it->key, it->num ? "yes" : "no");
    } else if (key_is_size(it->key) && it->num >= 1024) {
        char h[64];
        sb_printf(sb, "  %s: %" PRId64 " (%s)\n", it->key, it->num, format_size((uint64_t)it->num, h, sizeof h));
    } else {
        sb_printf(sb, "  %s: %" PRId64 "\n", it->key, it->num);
    }
}

static void render_item_json(StrBuf *sb, const InfoItem *it)
{
    if (it->str) {
        sb_json_member(sb, it->key, it->str);
        return;
    }
    sb_json_str(sb, it->key);
    sb_put(sb, ": ", 2);
    if (it->is_bool)
        sb_printf(sb, "%s", it->num ? "true" : "false");
    else
        sb_printf(sb, "%" PRId64, it->num);
}

/* The window_offset and window_size a window filter reports (drivers/window.c's info keys). */
static void window_bounds(BlockNode *w, int64_t *offset, int64_t *size)
{
    InfoList info = {0};
    bdrv_get_info(w, &info);
    *offset = *size = 0;
    for (int i = 0; i < info.n; i++) {
        if (strcmp(info.items[i].key, "window_offset") == 0)
            *offset = info.items[i].num;
        else if (strcmp(info.items[i].key, "window_size") == 0)
            *size = info.items[i].num;
    }
    info_free(&info);
}

static void render_facts_text(StrBuf *sb, const MountFacts *f)
{
    if (f->read_only)
        sb_printf(sb, "read-only: yes (evidence files opened O_RDONLY)\n");
    else
        sb_printf(sb, "read-only: no\n");
    if (f->mode_note)
        text_line(sb, "", "mode", f->mode_note);
    if (f->options && *f->options)
        text_line(sb, "", "options", f->options);
    if (f->window) {
        int64_t off, size;
        window_bounds(f->window, &off, &size);
        sb_printf(sb, "window: offset %" PRId64 ", size %" PRId64 " (disk.raw shows these bytes of the disk)\n",
                  off, size);
    }
}

/* The disk's partition table (lib/partitions.c), NULL when it has none or it cannot be read (*err set). */
static BlockPartitionTable *read_table(BlockNode *bs, int *err)
{
    BlockPartitionTable *t = malloc(sizeof *t);
    *err = t ? bdrv_read_partitions(bs, t) : -ENOMEM;
    if (*err == 0 && t->label[0])
        return t;
    free(t);
    return NULL;
}

/* "partitions: dos, id 0x..., N" then a line per partition (bytes, as on disk; what pN.raw shows). */
static void render_partitions_text(StrBuf *sb, BlockNode *bs)
{
    int err;
    BlockPartitionTable *t = read_table(bs, &err);
    if (err < 0)
        sb_printf(sb, "\npartitions: not read (%s)\n", strerror(-err));
    if (!t)
        return;
    sb_printf(sb, "\npartitions: %s, id %s, %d%s\n", t->label, t->id, t->n, t->truncated ? " (more not listed)" : "");
    for (int i = 0; i < t->n; i++) {
        const BlockPartition *p = &t->part[i];
        sb_printf(sb, "  p%d: start %" PRId64 ", size %" PRId64 ", type %s", p->number, p->start, p->size, p->type);
        if (p->uuid[0])
            sb_printf(sb, ", uuid %s", p->uuid);
        if (p->name[0]) {
            sb_printf(sb, ", name ");
            sb_text_str(sb, p->name);
        }
        sb_printf(sb, "%s%s%s\n", p->extended ? " (extended)" : p->logical ? " (logical)" : "",
                  p->avail == 0 ? " (past the end of the disk: no file)" : "",
                  p->avail > 0 && p->avail < p->size ? " (clipped at the end of the disk)" : "");
    }
    free(t);
}

/* "partitions": {"label", "id", "list": [...]} inside the extra key (nothing when the disk has none). */
static void render_partitions_json(StrBuf *sb, BlockNode *bs)
{
    int err;
    BlockPartitionTable *t = read_table(bs, &err);
    if (!t)
        return;
    sb_printf(sb, ",\n    \"partitions\": {\"label\": \"%s\", ", t->label);
    sb_json_member(sb, "id", t->id);
    sb_printf(sb, ", \"truncated\": %s, \"list\": [", t->truncated ? "true" : "false");
    for (int i = 0; i < t->n; i++) {
        const BlockPartition *p = &t->part[i];
        sb_printf(sb, "%s\n      {\"number\": %d, \"start\": %" PRId64 ", \"size\": %" PRId64 ", \"available\": %"
                  PRId64 ", ", i ? "," : "", p->number, p->start, p->size, p->avail);
        sb_json_member(sb, "type", p->type);
        sb_put(sb, ", ", 2);
        sb_json_member(sb, "name", p->name);
        sb_put(sb, ", ", 2);
        sb_json_member(sb, "uuid", p->uuid);
        sb_printf(sb, ", \"extended\": %s, \"logical\": %s}", p->extended ? "true" : "false",
                  p->logical ? "true" : "false");
    }
    sb_put(sb, "\n    ]}", 7);
    free(t);
}

void render_info_text(StrBuf *sb, BlockNode *bs, const MountFacts *facts)
{
    text_line(sb, "", "image", bs->filename);
    sb_printf(sb, "layers: %d\n", bdrv_chain_length(bs));
    if (facts)
        render_facts_text(sb, facts);
    for (BlockNode *n = bs; n; n = n->backing) {
        InfoList info = {0};
        bdrv_get_info(n, &info);
        sb_printf(sb, "\n");
        char layer[32];
        snprintf(layer, sizeof layer, "layer %d", n->depth);
        text_line(sb, "", layer, n->filename);
        for (int i = 0; i < info.n; i++)
            render_item_text(sb, &info.items[i]);
        info_free(&info);
    }
    render_partitions_text(sb, bs);
}

/* ---------------------------------------------------------------- info as JSON
 *
 * qemu-img's schema (ImageInfo): one object for the top image, or with --backing-chain an array of one per
 * layer, top first.  Only qemu's keys at the top level of an object, with qemu's types; imgfuse's own facts
 * under the one extra key "imgfuse": in the first object the whole chain and the mount (the chain's
 * layers with every item their drivers give, exact bytes as KEY_hex), in each further object its own
 * layer's items.  qemu's string values are escaped like any other (U+FFFD for a byte that is not UTF-8); the
 * exact bytes of a name are in the extra key. */

/* ", \"key\": " between members of an object (first: none). */
static void json_key(StrBuf *sb, const char *key, bool *first)
{
    if (!*first)
        sb_put(sb, ", ", 2);
    *first = false;
    sb_json_str(sb, key);
    sb_put(sb, ": ", 2);
}

/* The same for the members of an ImageInfo object: one a line. */
static void json_top_key(StrBuf *sb, const char *key, bool *first)
{
    sb_put(sb, *first ? "\n  " : ",\n  ", *first ? 3 : 4);
    *first = false;
    sb_json_str(sb, key);
    sb_put(sb, ": ", 2);
}

static void json_item_value(StrBuf *sb, const InfoItem *it)
{
    if (it->str)
        sb_json_str(sb, it->str);
    else if (it->is_bool)
        sb_printf(sb, "%s", it->num ? "true" : "false");
    else
        sb_printf(sb, "%" PRId64, it->num);
}

/* Length of the "NAME/" prefix of an array item's key ("extents/0/filename"), 0 for a plain member. */
static size_t array_prefix(const char *key)
{
    const char *slash = strchr(key, '/');
    return slash ? (size_t)(slash - key) + 1 : 0;
}

/* Length of the "NAME." prefix of a nested object's member ("encrypt.format"), 0 for none. */
static size_t object_prefix(const char *key)
{
    const char *dot = strchr(key, '.'), *slash = strchr(key, '/');
    return dot && (!slash || dot < slash) ? (size_t)(dot - key) + 1 : 0;
}

static void render_specific_data(StrBuf *sb, const InfoList *d);

/* The run of "NAME.MEMBER" items from *i as the object NAME (its members rendered as a data object's). */
static void render_specific_object(StrBuf *sb, const InfoList *d, int *i, size_t pre, bool *first)
{
    const char *key = d->items[*i].key;
    InfoList sub = {0};
    int start = *i;
    while (*i < d->n && object_prefix(d->items[*i].key) == pre && strncmp(d->items[*i].key, key, pre) == 0)
        (*i)++;
    char name[64];
    snprintf(name, sizeof name, "%.*s", (int)pre - 1, key);
    json_key(sb, name, first);
    sb_put(sb, "{", 1);
    if ((sub.items = calloc((size_t)(*i - start), sizeof *sub.items))) {
        for (int j = start; j < *i; j++) {
            sub.items[sub.n] = d->items[j]; /* shallow: the strings stay d's */
            memmove(sub.items[sub.n].key, d->items[j].key + pre, strlen(d->items[j].key + pre) + 1);
            sub.n++;
        }
        render_specific_data(sb, &sub);
        free(sub.items);
    }
    sb_put(sb, "}", 1);
}

/* The members of a format-specific "data" object: plain items as members, "NAME/I/KEY" items as an array
 * NAME of objects, a new object where I changes, "NAME.KEY" items as an object NAME. */
static void render_specific_data(StrBuf *sb, const InfoList *d)
{
    bool first = true;
    for (int i = 0; i < d->n;) {
        const char *key = d->items[i].key;
        size_t pre = array_prefix(key), opre = object_prefix(key);
        if (opre) {
            render_specific_object(sb, d, &i, opre, &first);
            continue;
        }
        if (!pre) {
            json_key(sb, key, &first);
            json_item_value(sb, &d->items[i++]);
            continue;
        }
        char name[64];
        snprintf(name, sizeof name, "%.*s", (int)pre - 1, key);
        json_key(sb, name, &first);
        sb_put(sb, "[", 1);
        long elem = -1;
        bool first_member = true;
        for (; i < d->n && array_prefix(d->items[i].key) == pre && strncmp(d->items[i].key, key, pre) == 0; i++) {
            char *rest;
            long e = strtol(d->items[i].key + pre, &rest, 10);
            if (e != elem) {
                sb_printf(sb, "%s{", elem < 0 ? "" : "}, ");
                elem = e;
                first_member = true;
            }
            json_key(sb, *rest == '/' ? rest + 1 : rest, &first_member);
            json_item_value(sb, &d->items[i]);
        }
        sb_put(sb, elem < 0 ? "]" : "}]", elem < 0 ? 1 : 2);
    }
}

static void render_format_specific(StrBuf *sb, BlockNode *n, bool *first)
{
    InfoList data = {0};
    const char *type = bdrv_get_format_specific(n, &data);
    if (type) {
        json_top_key(sb, "format-specific", first);
        sb_put(sb, "{\"type\": ", 9);
        sb_json_str(sb, type);
        sb_put(sb, ", \"data\": {", 11);
        render_specific_data(sb, &data);
        sb_put(sb, "}}", 2);
    }
    info_free(&data);
}

/* A hostile snapshot table (65536 entries, 64 MiB of names that escape to six bytes each) would make the
 * list hundreds of MiB of JSON: it stops after this much, the rest counted under the extra key. */
#define SNAPSHOTS_JSON_BUDGET (4u << 20)

/* Returns how many snapshots the budget left out. */
static int render_snapshots(StrBuf *sb, BlockNode *n, bool *first)
{
    SnapshotInfo *list = NULL;
    int count = bdrv_snapshot_list(n, &list), omitted = 0;
    if (count > 0) {
        json_top_key(sb, "snapshots", first);
        sb_put(sb, "[", 1);
        size_t start = sb->len;
        for (int i = 0; i < count; i++) {
            const SnapshotInfo *sn = &list[i];
            if (sb->len - start > SNAPSHOTS_JSON_BUDGET) {
                omitted = count - i;
                break;
            }
            sb_printf(sb, "%s\n    {\"id\": ", i ? "," : "");
            sb_json_str(sb, sn->id);
            sb_put(sb, ", \"name\": ", 10);
            sb_json_str(sb, sn->name);
            sb_printf(sb, ", \"vm-state-size\": %" PRIu64 ", \"date-sec\": %" PRIu64 ", \"date-nsec\": %" PRIu32
                      ", \"vm-clock-sec\": %" PRIu64 ", \"vm-clock-nsec\": %" PRIu64, sn->vm_state_size,
                      sn->date_sec, sn->date_nsec, sn->vm_clock_nsec / 1000000000u, sn->vm_clock_nsec % 1000000000u);
            if (sn->icount != UINT64_MAX)
                sb_printf(sb, ", \"icount\": %" PRIu64, sn->icount);
            sb_put(sb, "}", 1);
        }
        sb_put(sb, "]", 1);
    }
    free(list);
    return omitted;
}

/* The path qemu-img opens for a backing name written in the image named image: the name itself when it is
 * absolute or image has no directory part, else the name joined to that directory part. */
static void qemu_backing_path(const char *image, const char *name, char *out, size_t len)
{
    const char *slash = strrchr(image, '/');
    if (name[0] == '/' || !slash)
        snprintf(out, len, "%s", name);
    else
        snprintf(out, len, "%.*s/%s", (int)(slash - image), image, name);
}

/* The file name of layer n as qemu-img shows it: the top as given, a backing layer by the path qemu would
 * have opened for it (the same file; else, when imgfuse found it elsewhere, the path it opened). */
static void layer_name(BlockNode *top, BlockNode *n, char *out, size_t len)
{
    snprintf(out, len, "%s", top->filename);
    for (BlockNode *p = top; p != n && p->backing; p = p->backing) {
        char cand[4096], a[PATH_MAX], b[PATH_MAX];
        qemu_backing_path(out, p->backing_name ? p->backing_name : p->backing->filename, cand, sizeof cand);
        bool same = p->backing_name && realpath(cand, a) && realpath(p->backing->filename, b) && !strcmp(a, b);
        snprintf(out, len, "%s", same ? cand : p->backing->filename);
    }
}

static int64_t info_num(const InfoList *info, const char *key, int64_t dflt)
{
    for (int i = 0; i < info->n; i++)
        if (!info->items[i].str && strcmp(info->items[i].key, key) == 0)
            return info->items[i].num;
    return dflt;
}

/* The old layer object, now inside the extra key: depth, file name and every item of bdrv_get_info (and
 * how many snapshots the list left out, when it did). */
static void render_layer_extras(StrBuf *sb, BlockNode *n, const InfoList *info, int omitted)
{
    sb_printf(sb, "{\"depth\": %d, ", n->depth);
    if (omitted)
        sb_printf(sb, "\"snapshots_not_listed\": %d, ", omitted);
    sb_json_member(sb, "filename", n->filename);
    for (int i = 0; i < info->n; i++) {
        sb_put(sb, ", ", 2);
        render_item_json(sb, &info->items[i]);
    }
    sb_put(sb, "}", 1);
}

/* The whole chain and the mount, for the first object's extra key. */
static void render_chain_extras(StrBuf *sb, BlockNode *bs, const MountFacts *facts, int omitted)
{
    sb_put(sb, "{\n    ", 6);
    sb_json_member(sb, "image", bs->filename);
    sb_printf(sb, ",\n    \"layer_count\": %d", bdrv_chain_length(bs));
    if (facts) {
        sb_printf(sb, ",\n    \"read_only\": %s", facts->read_only ? "true" : "false");
        if (facts->mode_note) {
            sb_put(sb, ",\n    ", 6);
            sb_json_member(sb, "mode", facts->mode_note);
        }
        if (facts->options) {
            sb_put(sb, ",\n    ", 6);
            sb_json_member(sb, "options", facts->options);
        }
        if (facts->window) {
            int64_t off, size;
            window_bounds(facts->window, &off, &size);
            sb_printf(sb, ",\n    \"window\": {\"offset\": %" PRId64 ", \"size\": %" PRId64 "}", off, size);
        }
    }
    render_partitions_json(sb, bs);
    sb_put(sb, ",\n    \"layers\": [", 17);
    for (BlockNode *n = bs; n; n = n->backing) {
        InfoList info = {0};
        bdrv_get_info(n, &info);
        sb_put(sb, n == bs ? "\n      " : ",\n      ", n == bs ? 7 : 8);
        render_layer_extras(sb, n, &info, n == bs ? omitted : 0);
        info_free(&info);
    }
    sb_put(sb, "\n    ]\n  }", 10);
}

/* One layer's ImageInfo object (top: the top of the chain, for file names; facts: the mount's, or NULL). */
static void render_image_info(StrBuf *sb, BlockNode *top, BlockNode *n, const MountFacts *facts)
{
    InfoList info = {0};
    bdrv_get_info(n, &info);
    BlockDriverFacts df;
    bdrv_get_facts(n, &df);
    char name[4096];
    layer_name(top, n, name, sizeof name);
    bool first = true;
    sb_put(sb, "{", 1);
    json_top_key(sb, "filename", &first);
    sb_json_str(sb, name);
    json_top_key(sb, "format", &first);
    sb_json_str(sb, n->drv->name);
    json_top_key(sb, "virtual-size", &first);
    sb_printf(sb, "%" PRId64, bdrv_getlength(n));
    int64_t actual = info_num(&info, "allocated_size", -1);
    if (actual >= 0) {
        json_top_key(sb, "actual-size", &first);
        sb_printf(sb, "%" PRId64, actual);
    }
    if (df.cluster_size > 0 && !df.no_qemu_info) {
        json_top_key(sb, "cluster-size", &first);
        sb_printf(sb, "%" PRId64, df.cluster_size);
    }
    if (!df.no_qemu_info) {
        json_top_key(sb, "dirty-flag", &first);
        sb_printf(sb, "%s", df.dirty ? "true" : "false");
    }
    if (df.encrypted) {
        json_top_key(sb, "encrypted", &first);
        sb_put(sb, "true", 4);
    }
    if (n->backing_name) {
        char full[4096];
        json_top_key(sb, "backing-filename", &first);
        sb_json_str(sb, n->backing_name);
        if (n->backing_format_hint) {
            json_top_key(sb, "backing-filename-format", &first);
            sb_json_str(sb, n->backing_format_hint);
        }
        if (n->backing)
            layer_name(top, n->backing, full, sizeof full);
        else
            qemu_backing_path(name, n->backing_name, full, sizeof full);
        json_top_key(sb, "full-backing-filename", &first);
        sb_json_str(sb, full);
    }
    render_format_specific(sb, n, &first);
    int omitted = render_snapshots(sb, n, &first);
    json_top_key(sb, "imgfuse", &first);
    if (n == top)
        render_chain_extras(sb, top, facts, omitted);
    else
        render_layer_extras(sb, n, &info, omitted);
    sb_put(sb, "\n}", 2);
    info_free(&info);
}

void render_info_json(StrBuf *sb, BlockNode *bs, const MountFacts *facts)
{
    render_image_info(sb, bs, bs, facts);
    sb_put(sb, "\n", 1);
}

void render_info_json_chain(StrBuf *sb, BlockNode *bs, const MountFacts *facts)
{
    sb_put(sb, "[", 1);
    for (BlockNode *n = bs; n; n = n->backing) {
        sb_put(sb, n == bs ? "" : ",\n", n == bs ? 0 : 2);
        render_image_info(sb, bs, n, facts);
    }
    sb_put(sb, "]\n", 2);
}

/* ---------------------------------------------------------------- map */

/* The maps are streamed: map_stream_next() walks block status from where it stopped and appends the
 * lines of the runs it closes, so neither `imgfuse map` nor MNT/layers/N/map ever holds more than one
 * run and a few lines, whatever the size and fragmentation of the disk. */

static bool runs_merge(const MapRun *a, const MapRun *b)
{
    if (a->flags != b->flags || a->depth != b->depth || a->file != b->file)
        return false;
    if (a->host_offset < 0 || b->host_offset < 0)
        return a->host_offset == b->host_offset;
    return a->host_offset + a->length == b->host_offset;
}

static const char *run_kind(const MapRun *r)
{
    if (r->flags & BDRV_BLOCK_DATA)
        return (r->flags & BDRV_BLOCK_COMPRESSED) ? "compressed" : "data";
    if (r->flags & BDRV_BLOCK_ZERO)
        return (r->flags & BDRV_BLOCK_ALLOCATED) ? "zero" : "unallocated";
    return "unallocated";
}

static void emit_text(StrBuf *sb, const MapRun *r, bool first)
{
    if (first)
        sb_printf(sb, "%-18s %-18s %-5s %-11s %-18s %s\n", "offset", "length", "depth", "kind",
                  "host offset", "file");
    char host[32] = "-";
    if (r->host_offset >= 0)
        snprintf(host, sizeof host, "0x%" PRIx64, (uint64_t)r->host_offset);
    sb_printf(sb, "0x%-16" PRIx64 " 0x%-16" PRIx64 " %-5d %-11s %-18s ", (uint64_t)r->start,
              (uint64_t)r->length, r->depth, run_kind(r), host);
    sb_text_str(sb, r->file ? r->file : "-");
    sb_put(sb, "\n", 1);
}

/* qemu-img map's JSON, as the qemu-img of Debian 12 (7.2) prints it: no "compressed" member (qemu 8.2 added
 * it), no file name; "offset" where the host offset is valid (never for compressed data). */
static void emit_json(StrBuf *sb, const MapRun *r, bool first)
{
    sb_printf(sb, "%s{ \"start\": %" PRId64 ", \"length\": %" PRId64 ", \"depth\": %d, \"present\": %s, "
              "\"zero\": %s, \"data\": %s", first ? "" : ",\n", r->start, r->length,
              r->depth, (r->flags & (BDRV_BLOCK_ALLOCATED | BDRV_BLOCK_DATA)) ? "true" : "false",
              (r->flags & BDRV_BLOCK_ZERO) ? "true" : "false", (r->flags & BDRV_BLOCK_DATA) ? "true" : "false");
    if (r->host_offset >= 0)
        sb_printf(sb, ", \"offset\": %" PRId64, r->host_offset);
    sb_put(sb, "}", 1);
}

/* A run as qemu-img map reports it: a range no layer holds belongs to the last layer (its depth), and is
 * that layer's own zeros (present) for formats qemu opens without a backing file; a range beyond the end
 * of a shorter backing layer belongs, not present, to the layer above it; compressed data has no host
 * offset and merges with its neighbours like any data. */
static void qemu_map_run(const MapStream *m, MapRun *run)
{
    if (!(run->flags & (BDRV_BLOCK_ALLOCATED | BDRV_BLOCK_DATA))) {
        if (run->depth <= m->bottom_depth)
            run->depth = MAX(run->depth - 1, 0);
        else if (m->bottom_zero)
            run->flags |= BDRV_BLOCK_ALLOCATED | BDRV_BLOCK_ZERO;
        run->depth = MIN(run->depth, m->bottom_depth);
    }
    if (run->flags & BDRV_BLOCK_COMPRESSED) {
        run->host_offset = -1;
        run->file = NULL;
    }
    run->flags &= ~BDRV_BLOCK_COMPRESSED;
}

/* One layer's own map: "offset length data|zero"; ranges that fall through to the backing chain (flags
 * 0 here) are left out. */
static void emit_layer(StrBuf *sb, const MapRun *r, bool first)
{
    (void)first;
    if (r->flags)
        sb_printf(sb, "%" PRId64 " %" PRId64 " %s\n", r->start, r->length,
                  r->flags == BDRV_BLOCK_DATA ? "data" : "zero");
}

/* MAP_JSON: a host run of a layer whose data qemu-img looks through to its host file (data_over_host_zero)
 * is data, and zero where the host file holds zeros: shortened to what the host file's status covers. */
static void qemu_host_zeros(const MapStream *m, const BlockStatus *st, MapRun *run)
{
    BlockNode *n = m->bs;
    for (int d = 0; d < st->depth && n->backing; d++)
        n = n->backing;
    BlockDriverFacts f;
    bdrv_get_facts(n, &f);
    BlockStatus hs;
    if (!f.data_over_host_zero || !(run->flags & (BDRV_BLOCK_DATA | BDRV_BLOCK_ZERO)) ||
        bdrv_block_status(st->host_file, st->host_offset, run->length, &hs) < 0 || hs.bytes <= 0)
        return;
    run->length = MIN(run->length, hs.bytes);
    run->flags = BDRV_BLOCK_ALLOCATED | BDRV_BLOCK_DATA | (hs.flags & BDRV_BLOCK_ZERO);
}

/* The run block status gives at pos, as the stream's kind sees it. */
static int map_next_run(MapStream *m, MapRun *run)
{
    BlockStatus st = {0};
    int64_t left = m->size - m->pos;
    int r = m->kind == MAP_LAYER ? bdrv_block_status(m->bs, m->pos, left, &st)
                                 : bdrv_block_status_above(m->bs, m->pos, left, &st);
    if (r < 0)
        return r;
    if (st.bytes <= 0)
        return -EIO;
    *run = (MapRun){ .start = m->pos, .length = MIN(st.bytes, left), .host_offset = -1 };
    if (m->kind == MAP_LAYER) {
        /* adjacent runs of the same kind merge, whatever their host offsets */
        if (st.flags & BDRV_BLOCK_ALLOCATED)
            run->flags = (st.flags & BDRV_BLOCK_ZERO) || !(st.flags & BDRV_BLOCK_DATA) ? BDRV_BLOCK_ZERO
                                                                                       : BDRV_BLOCK_DATA;
        return 0;
    }
    bool valid = (st.flags & BDRV_BLOCK_OFFSET_VALID) && st.host_file;
    run->depth = st.depth;
    run->flags = st.flags & (BDRV_BLOCK_DATA | BDRV_BLOCK_ZERO | BDRV_BLOCK_ALLOCATED | BDRV_BLOCK_COMPRESSED);
    run->host_offset = valid ? st.host_offset : -1;
    run->file = valid ? st.host_file->filename : NULL;
    if (m->kind == MAP_JSON && valid)
        qemu_host_zeros(m, &st, run);
    if (m->kind == MAP_JSON)
        qemu_map_run(m, run);
    return 0;
}

static void map_emit(MapStream *m, StrBuf *sb, const MapRun *r)
{
    if (m->kind == MAP_TEXT)
        emit_text(sb, r, m->first);
    else if (m->kind == MAP_JSON)
        emit_json(sb, r, m->first);
    else
        emit_layer(sb, r, m->first);
    m->first = false;
}

void map_stream_init(MapStream *m, BlockNode *bs, enum MapKind kind)
{
    memset(m, 0, sizeof *m);
    m->bs = bs;
    m->kind = kind;
    m->first = true;
    m->size = -1;
}

int map_stream_next(MapStream *m, StrBuf *sb, size_t want)
{
    if (m->done)
        return 0;
    if (m->size < 0) {
        m->size = bdrv_getlength(m->bs);
        if (m->size < 0)
            return (int)m->size;
        if (m->kind == MAP_JSON) {
            sb_put(sb, "[", 1);
            BlockNode *n = m->bs;
            while (n->backing)
                n = n->backing;
            BlockDriverFacts f;
            bdrv_get_facts(n, &f);
            m->bottom_depth = n->depth;
            m->bottom_zero = f.unallocated_is_zero;
        }
    }
    while (sb->len < want && m->pos < m->size) {
        MapRun run;
        int r = map_next_run(m, &run);
        if (r < 0)
            return r;
        if (m->have && runs_merge(&m->cur, &run)) {
            m->cur.length += run.length;
        } else {
            if (m->have)
                map_emit(m, sb, &m->cur);
            m->cur = run;
            m->have = true;
        }
        m->pos += run.length;
    }
    if (m->pos < m->size)
        return 1;
    if (m->have)
        map_emit(m, sb, &m->cur);
    if (m->kind == MAP_JSON)
        sb_put(sb, "]\n", 2);
    m->done = true;
    return 0;
}

/* ---------------------------------------------------------------- statistics */

static void render_node_stats(StrBuf *sb, BlockNode *n, int depth, const char *role, bool first,
                              const char *snapshot)
{
    BlockStats s;
    bdrv_stats_snapshot(n, &s);
    sb_printf(sb, "%s\n    {\"depth\": %d, \"role\": \"%s\", \"driver\": ", first ? "" : ",", depth, role);
    sb_json_str(sb, n->drv ? n->drv->name : "");
    sb_put(sb, ", ", 2);
    sb_json_member(sb, "filename", n->filename ? n->filename : "");
    if (snapshot) {
        sb_put(sb, ", ", 2);
        sb_json_member(sb, "snapshot", snapshot);
    }
    sb_printf(sb, ",\n     \"rd_ops\": %" PRIu64 ", \"rd_bytes\": %" PRIu64 ", \"wr_ops\": %" PRIu64
              ", \"wr_bytes\": %" PRIu64 ", \"flush_ops\": %" PRIu64 ",\n     \"discard_ops\": %" PRIu64
              ", \"discard_bytes\": %" PRIu64 ", \"zero_ops\": %" PRIu64 ", \"zero_bytes\": %" PRIu64
              ",\n     \"rd_ns_total\": %" PRIu64 ", \"rd_ns_max\": %" PRIu64 ", \"wr_ns_total\": %" PRIu64
              ", \"wr_ns_max\": %" PRIu64 ",\n     \"cor_bytes\": %" PRIu64 ", \"detected_zero_ops\": %" PRIu64
              ", \"errors\": %" PRIu64,
              s.rd_ops, s.rd_bytes, s.wr_ops, s.wr_bytes, s.flush_ops, s.discard_ops, s.discard_bytes, s.zero_ops,
              s.zero_bytes, s.rd_ns_total, s.rd_ns_max, s.wr_ns_total, s.wr_ns_max, s.cor_bytes,
              s.detected_zero_ops, s.errors);
    int64_t mem = bdrv_memory_used(n);
    if (mem >= 0)
        sb_printf(sb, ", \"mem_bytes\": %" PRId64, mem);
    sb_put(sb, "}", 1);
}

/* VmRSS and VmHWM of this process from /proc/self/status, in bytes (-1 when not found). */
static void process_rss(int64_t *rss, int64_t *peak)
{
    *rss = *peak = -1;
    FILE *f = fopen("/proc/self/status", "re");
    if (!f)
        return;
    char line[256];
    long long kb;
    while (fgets(line, sizeof line, f)) {
        if (sscanf(line, "VmRSS: %lld kB", &kb) == 1)
            *rss = kb * 1024;
        else if (sscanf(line, "VmHWM: %lld kB", &kb) == 1)
            *peak = kb * 1024;
    }
    fclose(f);
}

void render_stats_json(StrBuf *sb, BlockNode *bs)
{
    render_stats_json_views(sb, bs, NULL, NULL, 0);
}

void render_stats_json_views(StrBuf *sb, BlockNode *bs, BlockNode *const *views, const char *const *names,
                             size_t n_views)
{
    sb_put(sb, "{\n  \"nodes\": [", 14);
    bool first = true;
    for (BlockNode *n = bs; n; n = n->backing) {
        render_node_stats(sb, n, n->depth, "format", first, NULL);
        first = false;
        int k = 0;
        for (BlockNode *f = n->file; f && k < 8; f = f->file, k++)
            render_node_stats(sb, f, n->depth, f->drv && f->drv->is_filter ? "filter" : "file", false, NULL);
    }
    for (size_t i = 0; i < n_views; i++)
        render_node_stats(sb, views[i], views[i]->depth, "snapshot", first && i == 0, names[i]);
    ReadErrorSummary es;
    bdrv_read_errors_summary(bs, &es);
    int64_t rss, peak;
    process_rss(&rss, &peak);
    sb_printf(sb, "\n  ],\n  \"read_errors\": {\"ranges\": %" PRIu64 ", \"mem_bytes\": %" PRIu64 ", \"unlisted_ranges\": %"
              PRIu64 ", \"unlisted_bytes\": %" PRIu64 "}", es.ranges, es.mem_bytes, es.unlisted, es.unlisted_bytes);
    live_render_job(sb);
    sb_printf(sb, ",\n  \"process\": {\"rss_bytes\": %" PRId64 ", \"peak_rss_bytes\": %" PRId64 "}\n}\n", rss,
              peak);
}
