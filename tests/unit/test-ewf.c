/* SPDX-License-Identifier: MIT */
/*
 * test-ewf.c - unit tests of the evidence drivers on in-memory nodes: an E01 made by ewfacquire (in a
 * scratch directory) opened from memory (libewf reads through the driver's libbfio handles), its length,
 * bytes, block status and facts (stored MD5/SHA1, one file); a writable open and a file libewf cannot read
 * refused by their exact lines; a byte changed inside a chunk read as EIO for that chunk only, every
 * time; and the split raw driver over one in-memory piece (length, bytes, host offsets, --rw refused).
 */
#include "block.h"
#include "scratch.h"
#include "tap.h"
#include "util.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>

#define CHUNK 32768
#define SIZE (3 * CHUNK)

static BlockNode *open_mem(const uint8_t *img, size_t len, const char *fmt, bool read_only, Error *err)
{
    static BlockOpenOpts o;
    block_open_opts_init(&o);
    o.read_only = read_only;
    memset(err, 0, sizeof(*err));
    BlockNode *mem = bdrv_open_memory(img, len, read_only);
    return mem ? bdrv_open_on_node(mem, fmt, &o, err) : NULL;
}

static void test_ewf(const uint8_t *e01, size_t len, const uint8_t *src)
{
    Error err;
    BlockNode *bs = open_mem(e01, len, NULL, true, &err);
    ok(bs && strcmp(bs->drv->name, "ewf") == 0, "an E01 in memory probes as ewf: %s", bs ? "" : err.msg);
    if (!bs)
        return;
    ok(bdrv_getlength(bs) == SIZE, "its length is the media size");
    uint8_t *buf = malloc(SIZE);
    ok(bdrv_pread(bs, 0, SIZE, buf) == 0 && memcmp(buf, src, SIZE) == 0, "its bytes are the source's");
    ok(bdrv_pread(bs, CHUNK - 100, 300, buf) == 0 && memcmp(buf, src + CHUNK - 100, 300) == 0,
       "a read across two chunks");
    BlockStatus st;
    memset(&st, 0, sizeof(st));
    ok(bdrv_block_status(bs, 0, SIZE, &st) == 0 && (st.flags & BDRV_BLOCK_DATA) &&
       !(st.flags & BDRV_BLOCK_OFFSET_VALID) && st.bytes == SIZE, "block status: data, no host offset");
    BlockDriverFacts f;
    bdrv_get_facts(bs, &f);
    ok(strlen(f.stored_md5) == 32 && strlen(f.stored_sha1) == 40, "facts: stored MD5 %s and SHA1 %s", f.stored_md5,
       f.stored_sha1);
    ok(f.n_files == 1 && strcmp(f.files[0], bs->filename) == 0, "facts: one file, the node's own");
    free(buf);
    bdrv_close(bs);
}

static void test_ewf_refusals(const uint8_t *e01, size_t len)
{
    Error err;
    BlockNode *bs = open_mem(e01, len, "ewf", false, &err);
    ok(!bs && strcmp(err.msg, "<memory>: EWF evidence files are read-only: mount without --rw (--overlay FILE "
                                "gives a writable view)") == 0, "a writable open is refused: %s", err.msg);
    uint8_t junk[4096] = "EVF\x09\x0d\x0a\xff";
    bs = open_mem(junk, sizeof(junk), NULL, true, &err);
    ok(!bs && strncmp(err.msg, "<memory>: cannot open as EWF: ", 30) == 0, "a broken E01 is refused: %s", err.msg);
}

/* A copy of e01 with one byte changed inside the stored data of chunk 1 (random data, stored as is). */
static void test_ewf_bad_chunk(const uint8_t *e01, size_t len, const uint8_t *src)
{
    uint8_t *bad = malloc(len);
    memcpy(bad, e01, len);
    const uint8_t *hit = memmem(bad, len, src + CHUNK + 100, 64);
    ok(hit != NULL, "chunk 1's bytes are found in the file");
    if (!hit) {
        free(bad);
        return;
    }
    bad[hit - bad + 10] ^= 0xff;
    Error err;
    BlockNode *bs = open_mem(bad, len, "ewf", true, &err);
    uint8_t *buf = malloc(SIZE);
    ok(bs && bdrv_pread(bs, CHUNK, CHUNK, buf) == -EIO, "the changed chunk reads as EIO");
    ok(bs && bdrv_pread(bs, CHUNK + 512, 512, buf) == -EIO, "and again, from libewf's cache");
    ok(bs && bdrv_pread(bs, 0, CHUNK, buf) == 0 && memcmp(buf, src, CHUNK) == 0, "the chunk before reads");
    ok(bs && bdrv_pread(bs, 2 * CHUNK, CHUNK, buf) == 0 && memcmp(buf, src + 2 * CHUNK, CHUNK) == 0,
       "the chunk after reads");
    if (bs)
        bdrv_close(bs);
    free(buf);
    free(bad);
}

static void test_splitraw(const uint8_t *src)
{
    Error err;
    BlockNode *bs = open_mem(src, SIZE, "splitraw", true, &err);
    ok(bs != NULL, "splitraw opens one in-memory piece: %s", bs ? "" : err.msg);
    if (bs) {
        uint8_t *buf = malloc(SIZE);
        ok(bdrv_getlength(bs) == SIZE && bdrv_pread(bs, 0, SIZE, buf) == 0 && memcmp(buf, src, SIZE) == 0,
           "its length and bytes are the piece's");
        BlockStatus st;
        memset(&st, 0, sizeof(st));
        ok(bdrv_block_status(bs, 100, 1000, &st) == 0 && (st.flags & BDRV_BLOCK_OFFSET_VALID) &&
           st.host_offset == 100 && st.bytes == 1000, "block status: host offsets in the piece");
        free(buf);
        bdrv_close(bs);
    }
    bs = open_mem(src, SIZE, "splitraw", false, &err);
    ok(!bs && strcmp(err.msg, "<memory>: split raw images are read-only: mount without --rw (--overlay FILE "
                                "gives a writable view)") == 0, "a writable open is refused: %s", err.msg);
}

int main(void)
{
    if (!scratch_init("ewf"))
        return 1;
    int r = sh("head -c %d /dev/urandom > src.raw && head -c %d /dev/zero >> src.raw && "
               "ewfacquire -q -u -t \"$PWD/ev\" -c deflate:fast -f encase6 -d sha1 \"$PWD/src.raw\"", 2 * CHUNK, CHUNK);
    size_t len = 0, slen = 0;
    uint8_t *e01 = slurp(tpath("ev.E01"), &len), *src = slurp(tpath("src.raw"), &slen);
    ok(r == 0 && e01 && src && slen == SIZE, "ewfacquire made ev.E01 (package ewf-tools)");
    if (e01 && src && slen == SIZE) {
        test_ewf(e01, len, src);
        test_ewf_refusals(e01, len);
        test_ewf_bad_chunk(e01, len, src);
        test_splitraw(src);
    }
    free(e01);
    free(src);
    scratch_cleanup();
    return done_testing();
}
