/* SPDX-License-Identifier: MIT */
/*
 * test-options.c - unit tests of driver options (lib/options.c and their use in lib/open.c): adding
 * items, validation against the drivers' tables with the exact one-line messages, typed lookups (last
 * value wins, defaults), top-only options kept from backing layers, a driver not in the chain refused, and
 * qcow2 receiving l2-cache-size on every layer; bdrv_create_opts_each walking a creation option string.
 */
#include "block.h"
#include "scratch.h"
#include "tap.h"
#include "util.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

/* bdrv_opts_validate's message for one item, "" when it passes. */
static const char *check_one(const char *item)
{
    static Error err;
    memset(&err, 0, sizeof err);
    BlockOpenOpts o;
    block_open_opts_init(&o);
    if (bdrv_opts_add(&o, item) < 0)
        return "(not added)";
    return bdrv_opts_validate(&o, "x.qcow2", &err) < 0 ? err.msg : "";
}

static void test_add(void)
{
    BlockOpenOpts o;
    block_open_opts_init(&o);
    is_int(bdrv_opts_add(&o, "l2-cache-size=1M"), -EINVAL, "an item without DRIVER. is refused");
    is_int(bdrv_opts_add(&o, ".key=1"), -EINVAL, "an empty driver name is refused");
    is_int(bdrv_opts_add(&o, "a=b.c"), -EINVAL, "a dot in the value only is not a driver option");
    for (int i = 0; i < MAX_DRIVER_OPTS; i++)
        bdrv_opts_add(&o, "qcow2.l2-cache-size=1M");
    is_int(o.n_driver_opts, MAX_DRIVER_OPTS, "the list fills up");
    is_int(bdrv_opts_add(&o, "qcow2.l2-cache-size=1M"), -E2BIG, "then refuses more");
}

static void test_validate(void)
{
    ok(strcmp(check_one("qcow2.l2-cache-size=64K"), "") == 0, "a size is accepted");
    ok(strcmp(check_one("qcow2.data-file=/x/y"), "") == 0, "a string is accepted");
    ok(strcmp(check_one("window.offset=512"), "") == 0, "a filter's option is accepted");
    const struct { const char *item, *msg; } bad[] = {
        { "qcow2.l2-cache-size=abc", "x.qcow2: qcow2 option 'l2-cache-size': not a size: 'abc'" },
        { "qcow2.l2-cache-size=-1", "x.qcow2: qcow2 option 'l2-cache-size': not a size: '-1'" },
        { "qcow2.l2-cache-size", "x.qcow2: qcow2 option 'l2-cache-size': needs a value" },
        { "qcow2.data-file=", "x.qcow2: qcow2 option 'data-file': empty value: ''" },
        { "qcow2.l2-cache=1M", "x.qcow2: qcow2 option 'l2-cache': unknown option (it has: data-file, "
                               "l2-cache-size)" },
        { "raw.foo=1", "x.qcow2: raw option 'foo': unknown option (it has none)" },
        { "nosuch.key=1", "x.qcow2: driver option 'nosuch.key=1': no driver 'nosuch'" },
    };
    for (size_t i = 0; i < ARRAY_SIZE(bad); i++) {
        const char *got = check_one(bad[i].item);
        ok(strcmp(got, bad[i].msg) == 0, "%s: refused with the exact message", bad[i].item);
        if (strcmp(got, bad[i].msg) != 0)
            printf("#   got '%s'\n", got);
    }
}

static void test_lookup(void)
{
    BlockOpenOpts o;
    block_open_opts_init(&o);
    bdrv_opts_add(&o, "qcow2.l2-cache-size=1M");
    bdrv_opts_add(&o, "window.offset=4096");
    bdrv_opts_add(&o, "qcow2.l2-cache-size=64K");
    BlockNode node = { .drv = bdrv_find_driver("qcow2"), .opts = &o };
    is_int(bdrv_opt_size(&node, "l2-cache-size", 0), 65536, "the last value wins");
    ok(bdrv_opt_str(&node, "data-file") == NULL, "an option not given is NULL");
    is_int(bdrv_opt_size(&node, "offset", 7), 7, "another driver's key is not this node's");
    is_int(bdrv_opt_size(&node, "data-file", 9), 9, "a lookup of the wrong type gets the default");
    ok(strcmp(bdrv_opts_find(&o, "window", "offset"), "4096") == 0, "bdrv_opts_find for the front end");
    ok(bdrv_opts_name_driver(&o, bdrv_find_driver("window")), "the options name window");
    ok(!bdrv_opts_name_driver(&o, bdrv_find_driver("blkdebug")), "and not blkdebug");
    BlockNode w = { .drv = bdrv_find_driver("window"), .opts = &o };
    is_int(bdrv_opt_size(&w, "offset", 0), 4096, "the window node sees its offset");
    is_int(bdrv_opt_size(&w, "size", -1), -1, "and the default size");
    BlockNode none = { .drv = bdrv_find_driver("qcow2"), .opts = NULL };
    is_int(bdrv_opt_size(&none, "l2-cache-size", 5), 5, "a node without options gets the default");
}

/* A two-layer qcow2 chain: base.qcow2 <- top.qcow2, and a raw file. */
static bool make_images(void)
{
    return sh("qemu-img create -q -f qcow2 base.qcow2 4M && "
              "qemu-img create -q -f qcow2 -b base.qcow2 -F qcow2 top.qcow2 && "
              "qemu-img create -q -f raw r.raw 1M") == 0;
}

static int64_t info_int(BlockNode *bs, const char *key)
{
    InfoList info;
    memset(&info, 0, sizeof info);
    bdrv_get_info(bs, &info);
    int64_t v = -1;
    for (int i = 0; i < info.n; i++)
        if (strcmp(info.items[i].key, key) == 0)
            v = info.items[i].num;
    info_free(&info);
    return v;
}

static void test_open(void)
{
    char top[512], raw[512];
    snprintf(top, sizeof top, "%s", tpath("top.qcow2"));
    snprintf(raw, sizeof raw, "%s", tpath("r.raw"));
    BlockOpenOpts o;
    block_open_opts_init(&o);
    bdrv_opts_add(&o, "qcow2.l2-cache-size=3M");
    Error err = { 0 };
    BlockNode *bs = bdrv_open(top, &o, &err);
    ok(bs && bs->backing, "chain opened with qcow2.l2-cache-size: %s", err.msg);
    if (bs && bs->backing) {
        is_int(info_int(bs, "l2_cache_size"), 3 * MiB, "the top layer's cache is 3 MiB (default 4 MiB)");
        is_int(info_int(bs->backing, "l2_cache_size"), 3 * MiB, "and the backing layer's too");
        is_int(bs->backing->opts->n_driver_opts, 1, "the backing layer keeps the option");
    }
    bdrv_close(bs);

    block_open_opts_init(&o);
    bdrv_opts_add(&o, "qcow2.data-file=/nonexistent");
    bdrv_opts_add(&o, "qcow2.l2-cache-size=1M");
    memset(&err, 0, sizeof err);
    bs = bdrv_open(top, &o, &err); /* no data file bit: the option is not used, but allowed */
    ok(bs && bs->backing, "opened with a data-file option: %s", err.msg);
    if (bs && bs->backing) {
        is_int(bs->backing->opts->n_driver_opts, 1, "the backing layer does not get the top-only option");
        ok(strcmp(bs->backing->opts->driver_opts[0], "qcow2.l2-cache-size=1M") == 0, "only the other one");
    }
    bdrv_close(bs);

    block_open_opts_init(&o);
    bdrv_opts_add(&o, "qcow2.l2-cache-size=64K");
    memset(&err, 0, sizeof err);
    bs = bdrv_open(raw, &o, &err);
    ok(!bs && strcmp(err.msg, "") != 0, "a qcow2 option on a raw image is refused");
    char want[700];
    snprintf(want, sizeof want, "%s: qcow2 option 'l2-cache-size': the chain has no qcow2 layer", raw);
    ok(strcmp(err.msg, want) == 0, "with the exact message: %s", err.msg);
    bdrv_close(bs);

    block_open_opts_init(&o);
    bdrv_opts_add(&o, "qcow2.l2-cache-size=lots");
    memset(&err, 0, sizeof err);
    bs = bdrv_open(top, &o, &err);
    snprintf(want, sizeof want, "%s: qcow2 option 'l2-cache-size': not a size: 'lots'", top);
    ok(!bs && strcmp(err.msg, want) == 0, "a bad value fails the open: %s", err.msg);
    bdrv_close(bs);

    block_open_opts_init(&o);
    bdrv_opts_add(&o, "window.offset=4096");
    bdrv_opts_add(&o, "window.size=8192");
    memset(&err, 0, sizeof err);
    bs = bdrv_open(raw, &o, &err);
    BlockNode *w = bs ? bdrv_open_chain_filters(bs, &o, &err) : NULL;
    ok(bs && strcmp(bs->drv->name, "raw") == 0, "bdrv_open leaves the window to the caller: %s", err.msg);
    ok(w && w != bs && strcmp(w->drv->name, "window") == 0 && bdrv_getlength(w) == 8192,
       "bdrv_open_chain_filters stacks it with its size: %s", err.msg);
    if (w && w != bs)
        bdrv_close(w);
    bdrv_close(bs);
}

/* Records "key=value;" (value "-" when absent) and fails at the key "stop". */
static int record_item(const char *key, const char *value, void *opaque)
{
    char *log = opaque;
    size_t len = strlen(log);
    snprintf(log + len, 256 - len, "%s=%s;", key, value ? value : "-");
    return strcmp(key, "stop") ? 0 : -E2BIG;
}

static void test_create_opts_each(void)
{
    char log[256] = "";
    is_int(bdrv_create_opts_each(NULL, record_item, log), 0, "create options: NULL is none");
    is_int(bdrv_create_opts_each("", record_item, log), 0, "create options: an empty string is none");
    ok(log[0] == '\0', "create options: ... and the callback is not called");
    is_int(bdrv_create_opts_each("a=1,bare,,c=x=y", record_item, log), 0, "create options: a list is walked");
    ok(!strcmp(log, "a=1;bare=-;c=x=y;"), "create options: in order, the value NULL without '=', cut at the first '='");
    log[0] = '\0';
    is_int(bdrv_create_opts_each("a=1,stop=2,b=3", record_item, log), -E2BIG,
           "create options: the callback's error ends the walk and is returned");
    ok(!strcmp(log, "a=1;stop=2;"), "create options: ... with no item after it");
}

int main(void)
{
    if (!scratch_init("options"))
        return 1;
    test_add();
    test_validate();
    test_lookup();
    test_create_opts_each();
    ok(make_images(), "test images made with qemu-img");
    test_open();
    scratch_cleanup();
    return done_testing();
}
