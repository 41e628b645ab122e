/* SPDX-License-Identifier: MIT */
/*
 * test-url.c - images named by URLs, without a server: the scheme table picks the protocol driver (nbd for
 * nbd, nbds, nbd+unix; none for http or a local name), the backing-name policy refuses a URL written inside
 * an image unless --unsafe-backing, resolves a remote image's relative and absolute names on its own server
 * (query kept) and refuses names that could change the server's query; files an image names besides its
 * backing file are refused as URLs too; a URL's password is masked (bdrv_url_redact); rbd's bare
 * "rbd:pool/image" names, their masked key and their backing names.
 */
#include "../../lib/block_int.h"
#include "tap.h"

#include <errno.h>
#include <string.h>

static char out[4096], note[1024];
static Error err;

static int resolve(const char *image, const char *name, bool unsafe)
{
    BlockOpenOpts o;
    block_open_opts_init(&o);
    o.unsafe_backing = unsafe;
    memset(&err, 0, sizeof(err));
    out[0] = '\0';
    return bdrv_resolve_backing(image, name, &o, out, sizeof(out), note, sizeof(note), &err);
}

static void test_scheme_table(void)
{
    const BlockDriver *nbd = bdrv_find_driver("nbd");
    ok(nbd && nbd->is_protocol, "the nbd driver is a protocol driver");
    ok(bdrv_find_protocol("nbd://127.0.0.1:10809/x") == nbd, "nbd:// is nbd's");
    ok(bdrv_find_protocol("nbds://h/x") == nbd, "nbds:// is nbd's");
    ok(bdrv_find_protocol("nbd+unix:///x?socket=/s") == nbd, "nbd+unix:// is nbd's");
    ok(bdrv_find_protocol("NBD://h/x") == nbd, "schemes are case-insensitive");
    ok(bdrv_find_protocol("http://h/x") == bdrv_find_driver("http") && bdrv_find_protocol("HTTPS://h/x") ==
       bdrv_find_driver("http") && bdrv_find_protocol("s3://b/k") == bdrv_find_driver("s3"),
       "http:// and https:// are http's, s3:// is s3's");
    ok(!bdrv_find_protocol("ftp://h/x"), "ftp:// has no driver yet");
    ok(!bdrv_find_protocol("disk.qcow2") && !bdrv_find_protocol("/a/nbd://b"), "local names have none");
    ok(!bdrv_find_protocol("nbd:127.0.0.1:10809"), "nbd: without // is not a URL");
    is_int(bdrv_url_scheme_len("nbd+unix:///x"), 8, "scheme length");
    is_int(bdrv_url_scheme_len("://x"), 0, "no scheme");
}

static void test_redact(void)
{
    char r[256];
    ok(bdrv_url_redact("nbd://bob:hunter2@h:1/x?y=z", r, sizeof(r)) && strcmp(r, "nbd://bob:***@h:1/x?y=z") == 0,
       "the password is masked: %s", r);
    ok(!bdrv_url_redact("nbds://alice@h/x", r, sizeof(r)) && strcmp(r, "nbds://alice@h/x") == 0, "a user alone stays");
    ok(!bdrv_url_redact("nbd://h:10809/a:b@c", r, sizeof(r)), "':' and '@' in the path are not user info");
    ok(!bdrv_url_redact("/x/y:z@w", r, sizeof(r)) && strcmp(r, "/x/y:z@w") == 0, "a local name is kept");
}

static void test_backing_policy(void)
{
    is_int(resolve("/tmp/img.qcow2", "nbd://127.0.0.1:1/x", false), -EACCES, "a URL inside a local image: refused");
    ok(strcmp(err.msg, "/tmp/img.qcow2: backing file 'nbd://127.0.0.1:1/x' refused: a remote location named inside "
                       "an image is never followed; use --backing-dir DIR or --backing FILE (or --unsafe-backing)") == 0,
       "the refusal's line: %s", err.msg);
    is_int(resolve("nbd://h:1/top", "nbd://other:2/x", false), -EACCES, "a URL inside a remote image: refused");
    ok(resolve("/tmp/img.qcow2", "nbd://127.0.0.1:1/x", true) == 0 && strcmp(out, "nbd://127.0.0.1:1/x") == 0,
       "--unsafe-backing follows it");
    is_int(resolve("/tmp/img.qcow2", "ftp://h/x", true), -EACCES, "a URL no driver serves: refused even so");

    ok(resolve("nbd://h:1/dir/top.qcow2", "base.qcow2", false) == 0 && strcmp(out, "nbd://h:1/dir/base.qcow2") == 0,
       "relative name on the same server: %s", out);
    ok(resolve("nbd+unix:///top?socket=/run/s", "base", false) == 0 &&
       strcmp(out, "nbd+unix:///base?socket=/run/s") == 0, "the query (socket) is kept: %s", out);
    ok(resolve("nbd://h:1", "base", false) == 0 && strcmp(out, "nbd://h:1/base") == 0, "no path: %s", out);
    ok(resolve("nbd://h:1/a/b/top", "/x/base", false) == 0 && strcmp(out, "nbd://h:1/x/base") == 0,
       "absolute name: the whole path, same server: %s", out);
    is_int(resolve("nbd+unix:///top?socket=/run/s", "base?socket=/other", false), -EACCES, "'?' in the name refused");
    is_int(resolve("nbd://h:1/top", "b#x", false), -EACCES, "'#' refused");
    is_int(resolve("nbd://h:1/top", "b\nx", false), -EACCES, "control characters refused");
}

static void test_named_files(void)
{
    /* a node without a file child (on a memory node everything would be refused anyway) */
    BlockNode *bs = bdrv_new_node(bdrv_find_driver("raw"), "/tmp/img.vmdk");
    ok(bs != NULL, "node");
    BlockOpenOpts o;
    block_open_opts_init(&o);
    const char *why = bdrv_named_file_refusal(bs, &o, "nbd://h:1/extent");
    ok(why && strstr(why, "remote location"), "a URL as an extent or data file: refused (%s)", why ? why : "none");
    o.unsafe_backing = true;
    ok(!bdrv_named_file_refusal(bs, &o, "nbd://h:1/extent"), "unless --unsafe-backing");
    bdrv_free_node(bs);
}

/* rbd's bare scheme "rbd:pool/image[@snap][:opts]": the driver, the masked key, the backing names. */
static void test_rbd(void)
{
    const BlockDriver *rbd = bdrv_find_driver("rbd");
    char r[512];
    ok(rbd && rbd->is_protocol, "the rbd driver is a protocol driver");
    ok(bdrv_find_protocol("rbd:pool/img") == rbd && bdrv_find_protocol("rbd:p/ns/img@s1:conf=/c") == rbd,
       "rbd:pool/image is rbd's");
    ok(!bdrv_find_protocol("./rbd:x") && !bdrv_find_protocol("RBD:x") && !bdrv_find_protocol("rbdx:y") &&
       !bdrv_find_protocol("a/rbd:x"), "./rbd:x, RBD:x, rbdx:y are local names");
    ok(!bdrv_find_protocol("rbd://h/x"), "rbd:// is not rbd's form");
    ok(bdrv_url_is_bare("rbd:p/i") && !bdrv_url_is_bare("nbd://h/x") && !bdrv_url_is_bare("x"), "bare or not");
    ok(bdrv_url_redact("rbd:p/i:id=u:key=AQBsecret==:conf=/c", r, sizeof r) &&
       strcmp(r, "rbd:p/i:id=u:key=***:conf=/c") == 0, "the key is masked: %s", r);
    ok(bdrv_url_redact("rbd:p/i:key=a\\:b", r, sizeof r) && strcmp(r, "rbd:p/i:key=***") == 0,
       "an escaped ':' stays in the key: %s", r);
    ok(!bdrv_url_redact("rbd:p/i:keyring=/k", r, sizeof r) && strcmp(r, "rbd:p/i:keyring=/k") == 0,
       "a keyring file is no secret");
    ok(!bdrv_url_redact("rbd:p/key=x", r, sizeof r), "key= in the image part is a name");

    is_int(resolve("/tmp/img.qcow2", "rbd:p/base", false), -EACCES, "rbd: inside a local image: refused");
    ok(resolve("rbd:p/top:conf=/c", "base", false) == 0 && strcmp(out, "rbd:p/base:conf=/c") == 0,
       "relative name: same pool, options kept: %s", out);
    ok(resolve("rbd:p/ns/top@s", "base", false) == 0 && strcmp(out, "rbd:p/ns/base") == 0,
       "namespace kept, the image's snapshot dropped: %s", out);
    ok(resolve("rbd:p/top:id=u", "q/base", false) == 0 && strcmp(out, "rbd:q/base:id=u") == 0,
       "POOL/IMAGE: same cluster: %s", out);
    is_int(resolve("rbd:p/top", "base:mon_host=10.0.0.1", false), -EACCES, "':' in the name (an option) refused");
    is_int(resolve("rbd:p/top", "b\\:x", false), -EACCES, "'\\' refused");
}

int main(void)
{
    test_scheme_table();
    test_redact();
    test_backing_policy();
    test_named_files();
    test_rbd();
    return done_testing();
}
