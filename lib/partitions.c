/* SPDX-License-Identifier: MIT */
/*
 * partitions.c - the partition table of a node's disk (MBR primary and logical, GPT), read by libblkid,
 * for `info`, MNT/partitions/pN.raw and --partition N.  Nothing here parses a table: libblkid does.
 *
 * libblkid reads only from a file descriptor (it has no custom-I/O hook), and a node is no file.  So the
 * sectors a table can live in are copied through the block layer into a sparse memfd of the disk's size
 * (holes read as zeros and cost nothing): the first and the last MiB (MBR, GPT header and entries, the
 * backup GPT), then, for each extended partition libblkid reports, the EBR chain, and libblkid probes
 * again.  To know where the next EBR is, the copy follows each EBR's link (the one field read here, only
 * to choose which sectors to copy; libblkid still decides what they mean), at most BDRV_MAX_PARTITIONS
 * EBRs, never one twice.  libblkid runs in a child process under a memory limit and an alarm, so a
 * hostile table (a count of 2^32 GPT entries, a loop) costs at most that budget and the result is POD
 * written back through a pipe.  Its reads are not counted in the nodes' statistics.  It knows no format
 * and no FUSE.
 */
#include "block.h"
#include "block_int.h"
#include "util.h"

#include <blkid/blkid.h>
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/resource.h>
#include <sys/wait.h>
#include <unistd.h>

#define PART_EDGE_BYTES (1 << 20)            /* copied from each end of the disk */
#define PART_SECTOR 512
#define PART_PROBE_MEM ((int64_t)256 << 20)   /* address space the probing child may add */
#define PART_PROBE_SECONDS 10

/* Copies [off, off + len) of bs (clipped to the disk) into the memfd at the same offset. */
static int copy_range(BlockNode *bs, int fd, int64_t disk, int64_t off, int64_t len)
{
    if (off < 0 || off >= disk)
        return 0;
    len = MIN(len, disk - off);
    uint8_t *buf = malloc((size_t)len);
    if (!buf)
        return -ENOMEM;
    int r = bdrv_pread(bs, off, len, buf);
    if (r >= 0 && pwrite(fd, buf, (size_t)len, off) != (ssize_t)len)
        r = -errno;
    free(buf);
    return r < 0 ? r : 0;
}

/* The last MiB's copy, in a thread of its own: on a remote image its reads (and the table reads before them)
 * are round trips that overlap the first MiB's instead of following them. */
typedef struct EdgeCopy {
    BlockNode *bs;
    int fd;
    int64_t disk;
    int r;
} EdgeCopy;

static void *copy_last_edge(void *opaque)
{
    EdgeCopy *e = opaque;
    core_own_io(true);
    e->r = copy_range(e->bs, e->fd, e->disk, MAX(e->disk - PART_EDGE_BYTES, 0), PART_EDGE_BYTES);
    return NULL;
}

/* Copies the first and the last MiB of the disk into fd, both at once when a thread can be had. */
static int copy_edges(BlockNode *bs, int fd, int64_t disk)
{
    EdgeCopy e = { .bs = bs, .fd = fd, .disk = disk, .r = 0 };
    pthread_t t;
    bool threaded = disk > PART_EDGE_BYTES && pthread_create(&t, NULL, copy_last_edge, &e) == 0;
    int r = copy_range(bs, fd, disk, 0, PART_EDGE_BYTES);
    if (threaded)
        pthread_join(t, NULL);
    else if (r == 0 && disk > PART_EDGE_BYTES)
        copy_last_edge(&e);
    return r < 0 ? r : e.r;
}

static void copy_str(char *dst, size_t n, const char *src)
{
    snprintf(dst, n, "%s", src ? src : "");
}

/* One partition as libblkid describes it; false if its numbers do not fit bytes. */
static bool fill_part(blkid_partition p, int64_t disk, BlockPartition *out)
{
    memset(out, 0, sizeof *out);
    int64_t start = blkid_partition_get_start(p), size = blkid_partition_get_size(p), end;
    if (start < 0 || size < 0 || start > INT64_MAX / PART_SECTOR || size > INT64_MAX / PART_SECTOR)
        return false;
    out->number = blkid_partition_get_partno(p);
    out->start = start * PART_SECTOR;
    out->size = size * PART_SECTOR;
    if (!add_ok_i64(out->start, out->size, &end))
        return false;
    out->avail = out->start >= disk ? 0 : MIN(end, disk) - out->start;
    const char *ts = blkid_partition_get_type_string(p);
    if (ts)
        copy_str(out->type, sizeof out->type, ts);
    else
        snprintf(out->type, sizeof out->type, "0x%02x", (unsigned)blkid_partition_get_type(p) & 0xff);
    copy_str(out->name, sizeof out->name, blkid_partition_get_name(p));
    copy_str(out->uuid, sizeof out->uuid, blkid_partition_get_uuid(p));
    out->extended = blkid_partition_is_extended(p);
    out->logical = blkid_partition_is_logical(p);
    return true;
}

/* In the child: libblkid over the memfd. */
static void probe_fd(int fd, int64_t disk, BlockPartitionTable *t)
{
    blkid_probe pr = blkid_new_probe();
    if (!pr || blkid_probe_set_device(pr, fd, 0, disk) != 0)
        return;
    blkid_probe_enable_superblocks(pr, 0);
    blkid_probe_enable_partitions(pr, 1);
    blkid_probe_set_partitions_flags(pr, BLKID_PARTS_ENTRY_DETAILS);
    blkid_partlist ls = blkid_probe_get_partitions(pr);
    blkid_parttable tab = ls ? blkid_partlist_get_table(ls) : NULL;
    if (tab) {
        copy_str(t->label, sizeof t->label, blkid_parttable_get_type(tab));
        copy_str(t->id, sizeof t->id, blkid_parttable_get_id(tab));
        int n = blkid_partlist_numof_partitions(ls);
        for (int i = 0; i < n; i++) {
            if (t->n == BDRV_MAX_PARTITIONS) {
                t->truncated = true;
                break;
            }
            blkid_partition p = blkid_partlist_get_partition(ls, i);
            if (p && fill_part(p, disk, &t->part[t->n]))
                t->n++;
        }
    }
    blkid_free_probe(pr);
}

/* The child's address-space limit: what it has now plus the probe's budget, never above the limit it
 * inherited (a caller's prlimit holds); and an alarm that ends it, whatever the parent did with SIGALRM. */
static void limit_child(void)
{
    unsigned long long pages = 0;
    FILE *f = fopen("/proc/self/statm", "r");
    if (f) {
        if (fscanf(f, "%llu", &pages) != 1)
            pages = 0;
        fclose(f);
    }
    rlim_t want = (rlim_t)pages * (rlim_t)sysconf(_SC_PAGESIZE) + (rlim_t)PART_PROBE_MEM;
    struct rlimit rl;
    if (getrlimit(RLIMIT_AS, &rl) == 0 && (rl.rlim_cur == RLIM_INFINITY || rl.rlim_cur > want)) {
        rl.rlim_cur = want;
        setrlimit(RLIMIT_AS, &rl);
    }
    signal(SIGALRM, SIG_DFL);
    sigset_t set;
    sigemptyset(&set);
    sigaddset(&set, SIGALRM);
    sigprocmask(SIG_UNBLOCK, &set, NULL);
    alarm(PART_PROBE_SECONDS);
}

/* Runs probe_fd in a child under the budget; 0 with *t filled, or -EIO if the child failed. */
static int probe_in_child(int fd, int64_t disk, BlockPartitionTable *t)
{
    int p[2];
    if (pipe2(p, O_CLOEXEC) != 0)
        return -errno;
    pid_t pid = fork();
    if (pid < 0) {
        int e = errno;
        close(p[0]);
        close(p[1]);
        return -e;
    }
    if (pid == 0) {
        close(p[0]);
        limit_child();
        memset(t, 0, sizeof *t);
        probe_fd(fd, disk, t);
        const char *c = (const char *)t;
        for (size_t done = 0; done < sizeof *t;) {
            ssize_t w = write(p[1], c + done, sizeof *t - done);
            if (w <= 0)
                _exit(1);
            done += (size_t)w;
        }
        _exit(0);
    }
    close(p[1]);
    size_t got = 0;
    char *c = (char *)t;
    while (got < sizeof *t) {
        ssize_t r = read(p[0], c + got, sizeof *t - got);
        if (r < 0 && errno == EINTR)
            continue;
        if (r <= 0)
            break;
        got += (size_t)r;
    }
    close(p[0]);
    int status = 0;
    while (waitpid(pid, &status, 0) < 0 && errno == EINTR)
        ;
    if (got != sizeof *t || !WIFEXITED(status) || WEXITSTATUS(status) != 0) {
        memset(t, 0, sizeof *t);
        return -EIO;
    }
    t->n = MAX(0, MIN(t->n, BDRV_MAX_PARTITIONS));
    t->label[sizeof t->label - 1] = t->id[sizeof t->id - 1] = '\0';
    return 0;
}

/* Copies the EBR chain of the extended partition e into the memfd: each EBR, then the one its link
 * names (relative to e's start), inside e, each at most once. Returns how many were copied or -errno. */
static int copy_ebr_chain(BlockNode *bs, int fd, int64_t disk, const BlockPartition *e)
{
    int64_t seen[BDRV_MAX_PARTITIONS];
    int n = 0;
    int64_t cur = e->start;
    while (n < BDRV_MAX_PARTITIONS && cur >= e->start && cur - e->start < e->size && cur + PART_SECTOR <= disk) {
        for (int i = 0; i < n; i++)
            if (seen[i] == cur)
                return n;
        seen[n++] = cur;
        uint8_t s[PART_SECTOR];
        int r = bdrv_pread(bs, cur, PART_SECTOR, s);
        if (r < 0)
            return r;
        if (pwrite(fd, s, PART_SECTOR, cur) != PART_SECTOR)
            return -errno;
        if (s[510] != 0x55 || s[511] != 0xaa)
            break;
        const uint8_t *link = s + 446 + 16; /* the second entry: where the next EBR is */
        uint32_t lba = (uint32_t)link[8] | (uint32_t)link[9] << 8 | (uint32_t)link[10] << 16 | (uint32_t)link[11] << 24;
        if (link[4] == 0 || lba == 0)
            break;
        cur = e->start + (int64_t)lba * PART_SECTOR;
    }
    return n;
}

static int read_partitions(BlockNode *bs, BlockPartitionTable *t)
{
    memset(t, 0, sizeof *t);
    int64_t disk = bdrv_getlength(bs);
    if (disk < 0)
        return (int)disk;
    if (disk < 2 * PART_SECTOR)
        return 0;
    int fd = memfd_create("imgfuse-partitions", MFD_CLOEXEC);
    if (fd < 0)
        return -errno;
    int r = ftruncate(fd, disk) == 0 ? 0 : -errno;
    if (r == 0)
        r = copy_edges(bs, fd, disk);
    if (r == 0)
        r = probe_in_child(fd, disk, t);
    bool more = false;
    for (int i = 0; r == 0 && i < t->n; i++)
        if (t->part[i].extended) {
            int c = copy_ebr_chain(bs, fd, disk, &t->part[i]);
            r = c < 0 ? c : 0;
            more |= c > 0;
        }
    if (r == 0 && more)
        r = probe_in_child(fd, disk, t);
    close(fd);
    if (r < 0)
        memset(t, 0, sizeof *t);
    return r;
}

/* The probe's reads are the core's own, not the user's: statistics (stats.json) do not count them and
 * --copy-on-read does not copy them into the image. */
int bdrv_read_partitions(BlockNode *bs, BlockPartitionTable *t)
{
    core_own_io(true);
    int r = read_partitions(bs, t);
    core_own_io(false);
    return r;
}
