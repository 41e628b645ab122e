/* SPDX-License-Identifier: MIT */
/*
 * test-qcow2.c - unit tests of the qcow2 driver's header parsing and validation on fixed byte arrays
 * (no files, no QEMU): field decoding for versions 2 and 3, derived geometry, header extensions
 * (backing format, feature name table, external data file, bitmaps, unknown types), and every refusal
 * of an untrusted header: magic, version, cluster_bits, refcount_order, header_length, unknown
 * incompatible features named from the table, encryption, table sizes and offsets, overflowing
 * extensions, backing name bounds and compression type consistency.  Also the L2 entry classifier.
 */
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "../../drivers/qcow2/qcow2.h"
#include "tap.h"
#include "util.h"

#define CLUSTER 65536
#define FILE_SIZE (16 * CLUSTER)

static uint8_t hdr[CLUSTER];
static size_t ext_pos;

/* A valid v3 header: 64 KiB clusters, 1 MiB disk, L1 at cluster 3, refcount table at cluster 1. */
static void make_v3(void)
{
    memset(hdr, 0, sizeof(hdr));
    st_be32(hdr, QCOW2_MAGIC);
    st_be32(hdr + 4, 3);
    st_be32(hdr + 20, 16);
    st_be64(hdr + 24, 1 << 20);
    st_be32(hdr + 36, 1);
    st_be64(hdr + 40, 3 * CLUSTER);
    st_be64(hdr + 48, 1 * CLUSTER);
    st_be32(hdr + 56, 1);
    st_be32(hdr + 96, 4);
    st_be32(hdr + 100, 112);
    ext_pos = 112;
}

static void make_v2(void)
{
    make_v3();
    st_be32(hdr + 4, 2);
    memset(hdr + 72, 0, 40);
    ext_pos = 72;
}

static void add_ext(uint32_t type, const void *data, uint32_t len)
{
    st_be32(hdr + ext_pos, type);
    st_be32(hdr + ext_pos + 4, len);
    memcpy(hdr + ext_pos + 8, data, len);
    ext_pos += 8 + (size_t)align_up(len, 8);
}

static int parse(Qcow2State *s, Error *err)
{
    memset(s, 0, sizeof(*s));
    memset(err, 0, sizeof(*err));
    return qcow2_parse_header(s, hdr, sizeof(hdr), FILE_SIZE, err);
}

/* Parse must fail with a message containing want. */
static void refuses(const char *what, const char *want)
{
    Qcow2State s;
    Error err;
    int ret = parse(&s, &err);
    ok(ret < 0 && strstr(err.msg, want) != NULL, "refuses %s (\"%s\")", what, err.msg);
    qcow2_free_header(&s);
}

static void test_v2(void)
{
    Qcow2State s;
    Error err;
    make_v2();
    const char *name = "base.img";
    memcpy(hdr + 1000, name, strlen(name));
    st_be64(hdr + 8, 1000);
    st_be32(hdr + 16, (uint32_t)strlen(name));
    int ret = parse(&s, &err);
    is_int(ret, 0, "v2 header parses (%s)", err.msg);
    is_int(s.version, 2, "version 2");
    is_int(s.header_length, 72, "v2 header length is 72");
    is_int(s.refcount_order, 4, "v2 refcount order is 4");
    is_int(s.cluster_size, 65536, "cluster size 64 KiB");
    is_int(s.l2_size, 8192, "8192 L2 entries per table");
    is_int(s.subclusters_per_cluster, 1, "no subclusters");
    ok(s.backing_file && strcmp(s.backing_file, "base.img") == 0, "backing file name read");
    ok(s.backing_format == NULL, "no backing format");
    is_int(s.csize_shift, 62 - 8, "compressed descriptor split for 64 KiB clusters");
    qcow2_free_header(&s);
}

static void test_v3_extensions(void)
{
    Qcow2State s;
    Error err;
    make_v3();
    add_ext(QCOW2_EXT_BACKING_FORMAT, "qcow2", 5);
    uint8_t table[2 * QCOW2_FEATURE_ENTRY_LEN] = { 0 };
    table[0] = QCOW2_FEAT_TYPE_INCOMPAT;
    table[1] = 0;
    memcpy(table + 2, "dirty bit", 9);
    table[48] = QCOW2_FEAT_TYPE_COMPAT;
    table[49] = 0;
    memcpy(table + 50, "lazy refcounts", 14);
    add_ext(QCOW2_EXT_FEATURE_TABLE, table, sizeof(table));
    add_ext(0x12345678, "xyz", 3);
    uint8_t bm[24] = { 0 };
    st_be32(bm, 2);
    st_be64(bm + 8, 96);
    st_be64(bm + 16, 5 * CLUSTER);
    add_ext(QCOW2_EXT_BITMAPS, bm, sizeof(bm));
    st_be64(hdr + 80, QCOW2_COMPAT_LAZY_REFCOUNTS);
    st_be64(hdr + 88, QCOW2_AUTOCLEAR_BITMAPS);
    int ret = parse(&s, &err);
    is_int(ret, 0, "v3 header with extensions parses (%s)", err.msg);
    ok(s.backing_format && strcmp(s.backing_format, "qcow2") == 0, "backing format extension");
    is_int(s.nb_features, 2, "two feature table entries");
    is_int(s.nb_unknown_exts, 1, "unknown extension kept");
    is_int(s.unknown_exts[0].type, 0x12345678, "unknown extension type kept");
    ok(s.has_bitmaps_ext && s.nb_bitmaps == 2, "bitmaps extension parsed");
    ok(s.use_lazy_refcounts, "lazy refcounts");
    char names[256];
    qcow2_feature_names(&s, QCOW2_FEAT_TYPE_COMPAT, s.compatible_features, names, sizeof(names));
    ok(strcmp(names, "lazy refcounts") == 0, "compatible feature named: %s", names);
    qcow2_free_header(&s);
}

static void test_geometry(void)
{
    Qcow2State s;
    Error err;
    make_v3();
    st_be32(hdr + 20, 21);
    st_be64(hdr + 72, QCOW2_INCOMPAT_EXTL2);
    st_be32(hdr + 96, 6);
    st_be64(hdr + 40, 2 << 20);
    st_be64(hdr + 48, 4 << 20);
    memset(&s, 0, sizeof(s));
    int ret = qcow2_parse_header(&s, hdr, sizeof(hdr), -1, &err);
    is_int(ret, 0, "2 MiB clusters with extended L2 and 64-bit refcounts parse (%s)", err.msg);
    is_int(s.l2_entry_size, 16, "extended L2 entries are 16 bytes");
    is_int(s.l2_size, (2 << 20) / 16, "entries per extended L2 table");
    is_int(s.subclusters_per_cluster, 32, "32 subclusters");
    is_int(s.subcluster_size, 65536, "64 KiB subclusters");
    is_int(s.refcount_bits, 64, "64-bit refcounts");
    ok(s.refcount_max == UINT64_MAX, "refcount max");
    is_int(s.csize_shift, 62 - 13, "compressed descriptor split for 2 MiB clusters");
    qcow2_free_header(&s);

    make_v3();
    st_be32(hdr + 20, 9);
    st_be64(hdr + 24, 100000);
    st_be32(hdr + 36, 4);
    st_be64(hdr + 40, 3 * 512);
    st_be64(hdr + 48, 512);
    st_be32(hdr + 100, 104);
    ret = qcow2_parse_header(memset(&s, 0, sizeof(s)), hdr, 512, FILE_SIZE, &err);
    is_int(ret, 0, "512-byte clusters parse from a 512-byte buffer (%s)", err.msg);
    is_int(qcow2_size_to_l1(&s, 100000), 4, "L1 entries for 100000 bytes with 512-byte clusters");
    is_int(qcow2_vm_state_offset(&s, 100000), 4 * 64 * 512, "vmstate starts after the last L1 entry");
    qcow2_free_header(&s);
}

static void test_refusals(void)
{
    make_v3();
    st_be32(hdr, 0x514649fa);
    refuses("a bad magic", "bad magic");

    make_v3();
    st_be32(hdr + 4, 4);
    refuses("version 4", "version 4");

    make_v3();
    st_be32(hdr + 20, 8);
    refuses("cluster_bits 8", "cluster_bits 8");
    st_be32(hdr + 20, 22);
    refuses("cluster_bits 22", "cluster_bits 22");
    st_be32(hdr + 20, 0xffffffff);
    refuses("cluster_bits 2^32-1", "cluster_bits 4294967295");

    make_v3();
    st_be32(hdr + 96, 7);
    refuses("refcount_order 7", "refcount_order 7");

    make_v3();
    st_be32(hdr + 100, 100);
    refuses("header_length 100", "header_length");
    st_be32(hdr + 100, 108 + 2);
    refuses("header_length not a multiple of 8", "header_length");
    st_be32(hdr + 100, CLUSTER + 8);
    refuses("header_length beyond the cluster", "header_length");

    make_v3();
    uint8_t table[QCOW2_FEATURE_ENTRY_LEN] = { 0 };
    table[0] = QCOW2_FEAT_TYPE_INCOMPAT;
    table[1] = 17;
    memcpy(table + 2, "teleportation", 13);
    add_ext(QCOW2_EXT_FEATURE_TABLE, table, sizeof(table));
    st_be64(hdr + 72, 1ULL << 17 | 1ULL << 40);
    refuses("unknown incompatible bits, named from the table", "teleportation, unknown incompatible feature bit 40");

    make_v3();
    st_be32(hdr + 32, 1);
    {
        Qcow2State s;
        Error err;
        int ret = parse(&s, &err);
        ok(ret == 0 && s.crypt_method == QCOW2_CRYPT_AES, "AES encryption parses (the key is asked for at open)");
        qcow2_free_header(&s);
    }
    st_be32(hdr + 32, 2);
    refuses("LUKS encryption without its header extension", "without its encryption header extension");
    st_be32(hdr + 32, 3);
    refuses("an unknown encryption method", "unknown encryption method 3");
    make_v3();
    uint8_t crypto[16] = { 0 };
    add_ext(QCOW2_EXT_CRYPTO, crypto, sizeof(crypto));
    refuses("a crypto header extension without crypt_method 2", "encryption header extension in an image whose "
            "crypt_method is 0");
    st_be32(hdr + 32, 2);
    refuses("an empty crypto header extension", "encryption header extension is empty");

    make_v3();
    st_be32(hdr + 36, 8 * 1024 * 1024);
    refuses("a 64 MiB L1 table", "L1 table is too large");
    make_v3();
    st_be64(hdr + 24, 1ULL << 40);
    refuses("an L1 table too small for the disk", "L1 table too small");
    make_v3();
    st_be64(hdr + 24, UINT64_MAX);
    refuses("a virtual size of 2^64-1", "virtual size");
    make_v3();
    st_be64(hdr + 40, FILE_SIZE);
    refuses("an L1 table past the end of the file", "beyond the end of the file");
    make_v3();
    st_be64(hdr + 40, UINT64_MAX - 4095);
    st_be32(hdr + 20, 12);
    st_be64(hdr + 48, 4096);
    refuses("an L1 offset that overflows", "beyond the end of the file");
    make_v3();
    st_be64(hdr + 40, 3 * CLUSTER + 512);
    refuses("an unaligned L1 table", "not cluster aligned");
    make_v3();
    st_be32(hdr + 56, 1000);
    refuses("a refcount table too large", "refcount table is too large");
    make_v3();
    st_be32(hdr + 60, 100000);
    st_be64(hdr + 64, 4 * CLUSTER);
    refuses("too many snapshots", "too many snapshots");

    make_v3();
    st_be32(hdr + ext_pos, QCOW2_EXT_BACKING_FORMAT);
    st_be32(hdr + ext_pos + 4, 0xfffffff0);
    refuses("an extension overrunning the header", "overruns the header");

    make_v3();
    st_be64(hdr + 8, CLUSTER - 4);
    st_be32(hdr + 16, 100);
    refuses("a backing name past the first cluster", "backing file name");
    make_v3();
    st_be64(hdr + 8, 1000);
    st_be32(hdr + 16, 2000);
    refuses("a backing name longer than 1023 bytes", "too long");

    make_v3();
    st_be64(hdr + 72, QCOW2_INCOMPAT_COMPRESSION);
    refuses("the compression type bit with type zlib", "compression type");
    make_v3();
    hdr[104] = 1;
    refuses("compression_type zstd without the bit", "compression type");
    make_v3();
    hdr[104] = 7;
    st_be64(hdr + 72, QCOW2_INCOMPAT_COMPRESSION);
    refuses("an unknown compression type", "compression type 7");

    make_v3();
    st_be64(hdr + 72, QCOW2_INCOMPAT_EXTL2);
    st_be32(hdr + 20, 12);
    st_be64(hdr + 40, 3 * 4096);
    st_be64(hdr + 48, 4096);
    st_be32(hdr + 36, 2);
    refuses("extended L2 with 4 KiB clusters", "extended L2");

    make_v3();
    st_be64(hdr + 88, QCOW2_AUTOCLEAR_DATA_FILE_RAW);
    refuses("raw data file bit without a data file", "raw external data");
}

static void test_data_file_ext(void)
{
    Qcow2State s;
    Error err;
    make_v3();
    add_ext(QCOW2_EXT_DATA_FILE, "disk.data", 9);
    st_be64(hdr + 72, QCOW2_INCOMPAT_DATA_FILE);
    st_be64(hdr + 88, QCOW2_AUTOCLEAR_DATA_FILE_RAW);
    int ret = parse(&s, &err);
    is_int(ret, 0, "external data file header parses (%s)", err.msg);
    ok(s.has_data_file && s.data_file_raw, "data file and raw bits");
    ok(s.data_file_name && strcmp(s.data_file_name, "disk.data") == 0, "data file name");
    qcow2_free_header(&s);
}

static void test_l2_classifier(void)
{
    Qcow2State s;
    Error err;
    make_v3();
    parse(&s, &err);
    uint64_t host = 5 * CLUSTER;
    is_int(qcow2_subcluster_type(&s, 0, 0, 0), QCOW2_SC_UNALLOCATED_PLAIN, "0 is unallocated");
    is_int(qcow2_subcluster_type(&s, host | QCOW2_OFLAG_COPIED, 0, 0), QCOW2_SC_NORMAL, "normal cluster");
    is_int(qcow2_subcluster_type(&s, QCOW2_OFLAG_ZERO, 0, 0), QCOW2_SC_ZERO_PLAIN, "zero, no host");
    is_int(qcow2_subcluster_type(&s, host | QCOW2_OFLAG_ZERO, 0, 0), QCOW2_SC_ZERO_ALLOC, "zero, preallocated");
    is_int(qcow2_subcluster_type(&s, QCOW2_OFLAG_COMPRESSED | 12345, 0, 0), QCOW2_SC_COMPRESSED, "compressed");
    is_int(qcow2_subcluster_type(&s, host + 512, 0, 0), QCOW2_SC_INVALID, "unaligned host offset is invalid");
    is_int(qcow2_subcluster_type(&s, QCOW2_OFLAG_COPIED, 0, 0), QCOW2_SC_UNALLOCATED_PLAIN,
           "offset 0 without a data file is unallocated");
    s.has_data_file = true;
    is_int(qcow2_subcluster_type(&s, QCOW2_OFLAG_COPIED, 0, 0), QCOW2_SC_NORMAL,
           "offset 0 with a data file and the copied bit is data");
    is_int(qcow2_subcluster_type(&s, QCOW2_OFLAG_COMPRESSED | 12345, 0, 0), QCOW2_SC_INVALID,
           "compressed with a data file is invalid");
    s.has_data_file = false;
    s.version = 2;
    is_int(qcow2_subcluster_type(&s, QCOW2_OFLAG_ZERO, 0, 0), QCOW2_SC_UNALLOCATED_PLAIN, "v2 has no zero flag");
    s.version = 3;
    s.extended_l2 = true;
    uint64_t bitmap = 0x1ULL | (0x2ULL << 32); /* sc 0 allocated, sc 1 zero */
    is_int(qcow2_subcluster_type(&s, host, bitmap, 0), QCOW2_SC_NORMAL, "ext L2: allocated subcluster");
    is_int(qcow2_subcluster_type(&s, host, bitmap, 1), QCOW2_SC_ZERO_ALLOC, "ext L2: zero subcluster");
    is_int(qcow2_subcluster_type(&s, host, bitmap, 2), QCOW2_SC_UNALLOCATED_ALLOC, "ext L2: unallocated subcluster");
    is_int(qcow2_subcluster_type(&s, 0, 0x2ULL << 32, 1), QCOW2_SC_ZERO_PLAIN, "ext L2: zero without host");
    is_int(qcow2_subcluster_type(&s, 0, 0x1ULL, 0), QCOW2_SC_INVALID, "ext L2: allocated without host");
    is_int(qcow2_subcluster_type(&s, host, 0x1ULL | (0x1ULL << 32), 0), QCOW2_SC_INVALID,
           "ext L2: allocated and zero at once");
    qcow2_free_header(&s);
}

static void test_decompress_bounds(void)
{
    uint8_t src[4096], comp[8192], out[4096];
    for (size_t i = 0; i < sizeof(src); i++)
        src[i] = (uint8_t)(i * 7 / 13);
    for (int type = 0; type <= 1; type++) {
        int64_t n = qcow2_compress((uint8_t)type, src, sizeof(src), comp, sizeof(comp));
        ok(n > 0 && n < (int64_t)sizeof(src), "type %d compresses a cluster (%lld bytes)", type, (long long)n);
        memset(comp + n, 0xa5, 600); /* sector padding after the stream */
        is_int(qcow2_decompress((uint8_t)type, comp, (size_t)n + 600, out, sizeof(out)), 0,
               "type %d decompresses with trailing padding", type);
        ok(memcmp(out, src, sizeof(src)) == 0, "type %d round trip", type);
        is_int(qcow2_decompress((uint8_t)type, comp, (size_t)n / 2, out, sizeof(out)), -EIO,
               "type %d truncated stream is EIO", type);
        memset(comp, 0xff, 32);
        is_int(qcow2_decompress((uint8_t)type, comp, (size_t)n, out, sizeof(out)), -EIO,
               "type %d garbage stream is EIO", type);
        uint8_t tiny[16];
        is_int(qcow2_compress((uint8_t)type, src, sizeof(src), tiny, sizeof(tiny)), -ENOSPC,
               "type %d output bounded by the destination", type);
    }
    /* a deflate stream longer than a cluster: its first cluster is accepted (as zlib always did) */
    static uint8_t big[8192], bigcomp[9000];
    for (size_t i = 0; i < sizeof(big); i++)
        big[i] = (uint8_t)(i % 251);
    int64_t n = qcow2_compress(QCOW2_COMPRESSION_ZLIB, big, sizeof(big), bigcomp, sizeof(bigcomp));
    ok(n > 0, "zlib compresses two clusters' worth");
    is_int(qcow2_decompress(QCOW2_COMPRESSION_ZLIB, bigcomp, (size_t)n, out, sizeof(out)), 0,
           "a stream longer than the cluster fills the cluster");
    ok(memcmp(out, big, sizeof(out)) == 0, "and gives its first cluster");
}

/* The cache of decompressed clusters: hits copy the right bytes, the least recently used slot is
 * evicted, a result computed before an invalidation is not kept. */
static void test_dcache(void)
{
    enum { CS = 512 * 1024 }; /* 2 slots at this cluster size */
    Qcow2Dcache c;
    qcow2_dcache_init(&c);
    uint64_t gen;
    uint8_t out[8];
    ok(!qcow2_dcache_read(&c, 1, 0, 8, out, &gen), "empty cache misses");
    for (uint64_t key = 1; key <= 3; key++) {
        uint8_t *buf = malloc(CS);
        memset(buf, (int)key, CS);
        qcow2_dcache_keep(&c, key, CS, &buf, gen);
        free(buf);
        if (key == 2)
            ok(qcow2_dcache_read(&c, 1, 100, 8, out, &gen) && out[0] == 1 && out[7] == 1,
               "cluster 1 is still cached and used (so 2 is the oldest)");
    }
    ok(qcow2_dcache_read(&c, 3, CS - 8, 8, out, &gen) && out[0] == 3, "newest cluster cached");
    ok(qcow2_dcache_read(&c, 1, 0, 8, out, &gen) && out[0] == 1, "recently used cluster kept");
    ok(!qcow2_dcache_read(&c, 2, 0, 8, out, &gen), "least recently used cluster evicted");
    uint64_t before = gen;
    qcow2_dcache_invalidate(&c);
    ok(!qcow2_dcache_read(&c, 1, 0, 8, out, &gen), "invalidate empties the cache");
    uint8_t *stale = malloc(CS);
    memset(stale, 9, CS);
    uint8_t *kept = stale;
    qcow2_dcache_keep(&c, 9, CS, &stale, before);
    ok(stale == kept, "a cluster decompressed before the invalidation is handed back");
    free(stale);
    ok(!qcow2_dcache_read(&c, 9, 0, 8, out, &gen), "and not cached");
    qcow2_dcache_destroy(&c);
}


/* The table cache over a memory node: 4 slots in front of 64 tables, with and without a compact tier.
 * Sequential tables compress to one run, random ones are kept as plain copies; every table read back
 * must equal the disk, dirty tables must reach the disk, discarded ones must be reread. */
static void fill_table(uint8_t *t, uint32_t size, int kind, uint32_t seed)
{
    for (uint32_t i = 0; i < size / 8; i++) {
        uint64_t v;
        if (kind == 0)
            v = (QCOW2_OFLAG_COPIED | (uint64_t)(seed + i) * 4096);
        else if (kind == 1)
            v = 0;
        else
            v = (uint64_t)rand() << 31 ^ (uint64_t)rand();
        st_be64(t + i * 8, v);
    }
}

static void test_cache(uint64_t compact_budget)
{
    enum { TS = 4096, NT = 64 };
    uint8_t *disk = calloc(NT + 1, TS);
    srand(7);
    for (int k = 1; k <= NT; k++)
        fill_table(disk + (size_t)k * TS, TS, k % 3, (uint32_t)k * 1000);
    BlockNode *mem = bdrv_open_memory(disk, (size_t)(NT + 1) * TS, false);
    ok(mem != NULL, "memory node for the cache test");
    if (!mem) {
        free(disk);
        return;
    }
    Qcow2Cache *c = qcow2_cache_new(mem, TS, 4);
    qcow2_cache_set_compact_budget(c, compact_budget, 8);
    int bad = 0;
    for (int pass = 0; pass < 3; pass++) {
        for (int k = 1; k <= NT; k++) {
            void *t;
            if (qcow2_cache_get(c, (uint64_t)k * TS, &t) < 0 || memcmp(t, disk + (size_t)k * TS, TS) != 0)
                bad++;
            qcow2_cache_put(c, &t);
        }
    }
    is_int(bad, 0, "budget %llu: every table read back equals the disk, three passes",
           (unsigned long long)compact_budget);
    uint64_t hits, misses;
    qcow2_cache_stats(c, &hits, &misses);
    is_int(hits + misses, 3 * NT, "budget %llu: lookups counted", (unsigned long long)compact_budget);
    /* windows of entries, from slots, from the compact tier (decoded in place) and from the disk */
    int bad_windows = 0;
    for (int pass = 0; pass < 2; pass++) {
        for (int k = 1; k <= NT; k++) {
            static const uint32_t win[][2] = { { 0, 1 }, { 5, 17 }, { 100, 256 }, { TS / 8 - 3, 3 }, { 0, TS / 8 } };
            for (size_t w = 0; w < sizeof(win) / sizeof(win[0]); w++) {
                uint8_t out[TS];
                int r = qcow2_cache_read_entries(c, (uint64_t)k * TS, 8, win[w][0], win[w][1], out);
                if (r < 0 || memcmp(out, disk + (size_t)k * TS + (size_t)win[w][0] * 8, (size_t)win[w][1] * 8) != 0)
                    bad_windows++;
            }
        }
    }
    is_int(bad_windows, 0, "budget %llu: entry windows read without expanding equal the disk",
           (unsigned long long)compact_budget);
    uint8_t spare[16];
    is_int(qcow2_cache_read_entries(c, TS, 8, TS / 8 - 1, 2, spare), -EINVAL,
           "budget %llu: a window past the table's end is refused", (unsigned long long)compact_budget);
    if (compact_budget >= 64 * 1024) {
        /* 21 sequential + 21 zero tables of 1 run each, and 22 random ones as plain 4 KiB copies */
        ok(qcow2_cache_compact_used(c) > 0 && qcow2_cache_compact_used(c) < 22 * TS + 64 * 200, "compact tier holds sequential tables cheaply (%llu bytes)",
           (unsigned long long)qcow2_cache_compact_used(c));
    }
    /* a dirty table is written back on eviction and survives the compact tier */
    void *t;
    qcow2_cache_get(c, 3 * TS, &t);
    st_be64(t, 0x1234ULL << 9);
    qcow2_cache_mark_dirty(c, t);
    qcow2_cache_put(c, &t);
    for (int k = 10; k < 20; k++) {
        qcow2_cache_get(c, (uint64_t)k * TS, &t);
        qcow2_cache_put(c, &t);
    }
    uint8_t back[8];
    bdrv_pread(mem, 3 * TS, 8, back);
    is_int(ld_be64(back), 0x1234ULL << 9, "budget %llu: dirty table written back on eviction",
           (unsigned long long)compact_budget);
    qcow2_cache_get(c, 3 * TS, &t);
    is_int(ld_be64(t), 0x1234ULL << 9, "budget %llu: modified table comes back modified",
           (unsigned long long)compact_budget);
    qcow2_cache_put(c, &t);
    /* discard: the next get rereads the disk */
    st_be64(back, 0x5678ULL << 9);
    bdrv_pwrite(mem, 3 * TS, 8, back, 0);
    qcow2_cache_discard(c, 3 * TS);
    qcow2_cache_get(c, 3 * TS, &t);
    is_int(ld_be64(t), 0x5678ULL << 9, "budget %llu: discarded table is reread", (unsigned long long)compact_budget);
    qcow2_cache_put(c, &t);
    /* pinning: four pinned tables fill the slots, a fifth get fails cleanly */
    void *p[5];
    int got = 0;
    for (int k = 0; k < 5; k++)
        got += qcow2_cache_get(c, (uint64_t)(k + 30) * TS, &p[k]) == 0;
    is_int(got, 4, "budget %llu: no slot is evicted while pinned", (unsigned long long)compact_budget);
    for (int k = 0; k < 4; k++)
        qcow2_cache_put(c, &p[k]);
    is_int(qcow2_cache_empty(c), 0, "budget %llu: cache empties", (unsigned long long)compact_budget);
    qcow2_cache_free(c);
    bdrv_close(mem);
    free(disk);
}

int main(void)
{
    test_v2();
    test_v3_extensions();
    test_geometry();
    test_refusals();
    test_data_file_ext();
    test_l2_classifier();
    test_decompress_bounds();
    test_dcache();
    test_cache(0);
    test_cache(16 * 1024);
    test_cache(1024 * 1024);
    return done_testing();
}
