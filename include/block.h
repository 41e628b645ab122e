/* SPDX-License-Identifier: MIT */
/*
 * block.h - the block layer's public interface and the driver interface.
 *
 * This header owns the contract between the three layers: the FUSE front end (fuse/) calls only the
 * bdrv_* functions declared here; format, protocol and filter drivers (drivers/) implement a
 * BlockDriver and register it in the table in lib/drivers.c.  Nothing here knows about FUSE, and no
 * format-specific type appears outside drivers/.  Every I/O-path function returns 0 (or a byte count)
 * on success and a negative errno on failure.  Open/create paths also fill an Error with a one-line,
 * human-readable message of the form "FILE: reason".
 */
#ifndef IMGFUSE_BLOCK_H
#define IMGFUSE_BLOCK_H

#include <pthread.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

typedef struct BlockNode BlockNode;
typedef struct BlockDriver BlockDriver;

/* ---------------------------------------------------------------- errors */

/* One human-readable line, "FILE: reason" (without the "imgfuse: " prefix, which the front end adds). */
typedef struct Error {
    char msg[1024];
    int errnum; /* positive errno that best describes the failure, 0 if none */
} Error;

void error_set(Error *err, int errnum, const char *fmt, ...) __attribute__((format(printf, 3, 4)));
/* Only sets the message if none is set yet (the first, most specific wording wins). */
void error_setv(Error *err, int errnum, const char *fmt, va_list ap);

/* Diagnostics printed by the daemon: "imgfuse: NODE: message" on stderr (and syslog-free). */
void log_msg(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
extern int log_debug_enabled;
extern int log_quiet_enabled; /* set by one-shot commands that report in one line of their own (verify) */
#define log_debug(...) do { if (log_debug_enabled) log_msg(__VA_ARGS__); } while (0)

/* ---------------------------------------------------------------- options */

enum CacheMode { CACHE_WRITEBACK = 0, CACHE_NONE = 1,
                 CACHE_UNSAFE = 2 /* flushes do not sync the file (convert's default, as qemu-img's) */ };
enum AioMode { AIO_THREADS = 0, AIO_NATIVE = 1 };
enum DiscardMode { DISCARD_IGNORE = 0, DISCARD_UNMAP = 1 };
enum DetectZeroes { DETECT_ZEROES_OFF = 0, DETECT_ZEROES_ON = 1, DETECT_ZEROES_UNMAP = 2 };
enum ReadErrorMode { READ_ERROR_REPORT = 0, READ_ERROR_ZERO = 1 };

#define MAX_BACKING_DIRS 16
#define MAX_CHAIN_DEPTH 256
#define MAX_DRIVER_OPTS 32
#define BDRV_MAX_BACKING_CANDIDATES 4
/* A parent searched by identity (BlockNode.backing_search_suffix): at most this many files looked at, and
 * the first BDRV_IDENTITY_HEAD bytes of each read for the driver's backing_matches. */
#define BDRV_MAX_IDENTITY_CANDIDATES 1024
#define BDRV_IDENTITY_HEAD 512

typedef struct BlockOpenOpts {
    const char *format;          /* forced format of the top image, NULL = probe */
    bool read_only;              /* every file of the chain opened O_RDONLY */
    enum CacheMode cache;        /* CACHE_NONE = O_DIRECT */
    enum AioMode aio;            /* AIO_NATIVE = libaio (needs CACHE_NONE) */
    const char *backing;         /* --backing: replaces the top image's backing file */
    const char *backing_format;  /* --backing-format */
    bool no_backing;             /* --no-backing */
    const char *backing_dirs[MAX_BACKING_DIRS]; /* --backing-dir, repeatable */
    int n_backing_dirs;
    bool unsafe_backing;         /* --unsafe-backing: plain path resolution, no refusals */
    bool force_share;            /* --force-share: do not take/check image locks */
    enum DiscardMode discard;    /* may discard/zero writes free space in the image */
    enum ReadErrorMode on_read_error;

    /* Request-path features (lib/request.c), applied on the root node only (the node bdrv_open returns). */
    bool copy_on_read;           /* --copy-on-read: data read from backing is written into the top */
    enum DetectZeroes detect_zeroes; /* --detect-zeroes */
    int64_t iops_limit, iops_rd_limit, iops_wr_limit; /* --iops-limit[-read|-write], 0 = unlimited */
    int64_t bps_limit, bps_rd_limit, bps_wr_limit;    /* --bps-limit[-read|-write] bytes/s, 0 = unlimited */

    /* Driver options, "DRIVER.KEY=VALUE" (strings owned by the caller), in the order given; see
     * "driver options" below. */
    const char *driver_opts[MAX_DRIVER_OPTS];
    int n_driver_opts;
    bool exclusive;              /* `imgfuse check` without --force-share: refused while any other process has the
                                  * image open, readers (a read-only mount) included; no one may open it meanwhile */
    bool check_repair;           /* `imgfuse check -r`: open a damaged image writable so that its check slot can
                                  * repair it (qcow2: the corrupt bit, dirty bit and refcount-0 refusals are left
                                  * to the check); never set for a mount */
    bool driver_opts_partial;    /* open only a part of the chain the options are for (the image under an
                                  * --overlay): a driver option without a node of its driver is not refused */

    /* Encrypted images (drivers/luks/): the passphrase or key-file bytes the front end read (--key-file,
     * --passphrase-fd), kept in locked memory by the caller; NULL: none given. ask_secret, if set, asks the
     * user (a no-echo prompt on the terminal) when an image needs a key and none was given: the length read
     * into buf, or a negative errno. Key material never goes into driver_opts (which info prints). */
    const uint8_t *secret;
    size_t secret_len;
    int (*ask_secret)(const char *filename, uint8_t *buf, size_t size);
    bool locks_held;             /* live jobs (lib/job.c): this process's open chain holds the files' image
                                  * locks already (a second, writable node of a layer): none taken or checked */
    bool metadata_only;          /* `imgfuse info`: the caller reads no data. A driver that needs a key, was
                                  * given none and cannot ask (no ask_secret) opens without unlocking (no key
                                  * slot tried, no KDF run); that node's data reads and writes fail -ENOKEY */
} BlockOpenOpts;

void block_open_opts_init(BlockOpenOpts *o);

/* ---------------------------------------------------------------- driver options (lib/options.c)
 *
 * Each driver declares its options in a table (BlockDriver.options, ended by a NULL name) and reads them
 * in its open with bdrv_opt_*.  The caller passes them as "DRIVER.KEY=VALUE" (KEY alone for a bool: on).
 * Who receives one: every node of that driver in the chain (backing layers too), except options flagged
 * BDRV_OPT_TOP_ONLY, which only the top image's node sees.  A filter driver named in the options is stacked:
 * one over a file (blkdebug) by bdrv_open, one over the whole chain (window) by bdrv_open_chain_filters.  bdrv_open refuses, naming the
 * driver and the key, an unknown driver or key, a bad value, and an option whose driver has no node in the
 * opened chain; filters over a whole chain (window) are stacked by bdrv_open_chain_filters instead.
 * The last of several values of one key wins. */
typedef enum BlockOptionType { BDRV_OPT_STRING, BDRV_OPT_SIZE, BDRV_OPT_INT, BDRV_OPT_BOOL } BlockOptionType;

#define BDRV_OPT_TOP_ONLY 0x1   /* only the top image's node receives it (never a backing layer) */

typedef struct BlockOptionSpec {
    const char *name;     /* KEY, e.g. "l2-cache-size" */
    BlockOptionType type; /* size: bytes with an optional K/M/G/T suffix; int: signed decimal; bool: on/off */
    unsigned flags;       /* BDRV_OPT_* */
    const char *help;     /* one line for --help and the man page */
} BlockOptionSpec;

/* Appends "DRIVER.KEY=VALUE" (not copied) to o: -E2BIG when MAX_DRIVER_OPTS are given already, -EINVAL
 * when item has no "DRIVER." part. Validation comes at open (bdrv_opts_validate). */
int bdrv_opts_add(BlockOpenOpts *o, const char *item);
/* A creation option string ("key=value,key=value", BlockCreateOpts.options) item by item: fn(key, value,
 * opaque) in order, value NULL for an item without '='; stops at the first non-zero return and gives it
 * back. 0 for a NULL or empty string; -ENOMEM if the copy fails. */
/* on/off, true/false, yes/no, 1/0 (any case): 1 or 0; a bare KEY (v NULL) means on; -1 for anything
 * else. Every boolean option, driver and creation options alike, is read with it. */
int bdrv_parse_bool(const char *v);
int bdrv_create_opts_each(const char *options, int (*fn)(const char *key, const char *value, void *opaque),
                          void *opaque);
/* 0 if every driver option of o names a known driver, one of its keys and a valid value; else -EINVAL
 * with err set: "FILENAME: qcow2 option 'l2-cache-size': not a size: 'abc'". */
int bdrv_opts_validate(const BlockOpenOpts *o, const char *filename, Error *err);
/* True if o holds an option of driver drv (the key is not checked). */
bool bdrv_opts_name_driver(const BlockOpenOpts *o, const BlockDriver *drv);
/* The value an option item gives KEY of driver drvname (last wins), NULL if none: for the front end. */
const char *bdrv_opts_find(const BlockOpenOpts *o, const char *drvname, const char *key);
/* The type's name as --help shows it: "SIZE", "INT", "on|off", "STRING". */
const char *bdrv_opt_type_name(BlockOptionType type);

/* For drivers, in open: the value of this node's option KEY (bs->drv's table must declare it), from
 * bs->opts; NULL / dflt when not given. Values were validated by bdrv_open. */
const char *bdrv_opt_str(const BlockNode *bs, const char *key);
int64_t bdrv_opt_size(const BlockNode *bs, const char *key, int64_t dflt);
int64_t bdrv_opt_int(const BlockNode *bs, const char *key, int64_t dflt);
bool bdrv_opt_bool(const BlockNode *bs, const char *key, bool dflt);

/* ---------------------------------------------------------------- request flags, status */

#define BDRV_REQ_MAY_UNMAP 0x1  /* write_zeroes may deallocate (only honoured with --discard=unmap) */
#define BDRV_REQ_FUA       0x2  /* write through to stable storage before returning */
#define BDRV_REQ_NO_FALLBACK 0x4 /* write_zeroes: fail with -ENOTSUP instead of writing zero bytes */

/* block_status result flags */
#define BDRV_BLOCK_DATA      0x01 /* the range holds data (reads may return non-zero) */
#define BDRV_BLOCK_ZERO      0x02 /* the range reads as zeros */
#define BDRV_BLOCK_ALLOCATED 0x04 /* this layer itself decides the content (else: falls to backing) */
#define BDRV_BLOCK_OFFSET_VALID 0x08 /* host_offset / host_file are valid */
#define BDRV_BLOCK_COMPRESSED 0x10 /* stored compressed (informational) */

/* One piece of a scattered request: bytes at offset of the node, to/from buf. */
typedef struct BlockExtent {
    int64_t offset;
    int64_t bytes;
    void *buf;
} BlockExtent;

typedef struct BlockStatus {
    int flags;
    int64_t bytes;         /* length of the range this answer holds for (>0, <= requested) */
    int64_t host_offset;   /* if OFFSET_VALID: offset in host_file */
    BlockNode *host_file;  /* if OFFSET_VALID: the protocol node holding the bytes */
    int depth;             /* set by bdrv_block_status_above: 0 = top layer held it */
} BlockStatus;

/* ---------------------------------------------------------------- info (for `info`, info.json) */

/* A flat, ordered list of key/value pairs a driver adds to describe a node. The front end renders it as
 * text ("key: value") and as JSON. Keys are lower-case with underscores; values are strings or ints. */
typedef struct InfoItem {
    char key[64];
    char *str;      /* if non-NULL: string value */
    int64_t num;    /* else: integer value */
    bool is_bool;   /* integer value rendered as true/false */
} InfoItem;

typedef struct InfoList {
    InfoItem *items;
    int n, cap;
} InfoList;

void info_add_str(InfoList *l, const char *key, const char *fmt, ...) __attribute__((format(printf, 3, 4)));
void info_add_int(InfoList *l, const char *key, int64_t v);
void info_add_bool(InfoList *l, const char *key, bool v);
void info_free(InfoList *l);

/* ---------------------------------------------------------------- check (`imgfuse check`)
 *
 * What a check slot found, in qemu-img check's terms: corruptions (damage that may lose or expose data),
 * leaks (space in use that nothing references: harmless waste), check_errors (parts that could not be
 * checked), and what it repaired when asked (fix: BDRV_FIX_* bits; -r leaks = LEAKS, -r all = both). The
 * cluster statistics are those of the image's allocation unit, 0 when the driver tells none, as qemu-img
 * leaves them out. first_error: the first problem, one line without the file name ("" if none). */
#define BDRV_FIX_LEAKS  0x1
#define BDRV_FIX_ERRORS 0x2
#define BDRV_FIX_QUERY  0x4 /* alone, on any node, nothing read: 0 the driver repairs (the image is opened
                               * writable for it), 1 it takes -r but repairs nothing, -ENOTSUP it refuses -r */

typedef struct BlockCheckResult {
    int64_t corruptions, leaks, check_errors;
    int64_t corruptions_fixed, leaks_fixed;
    int64_t image_end_offset;
    int64_t total_clusters, allocated_clusters, fragmented_clusters, compressed_clusters;
    char first_error[256];
} BlockCheckResult;

/* Records one problem (the first one's text is kept in res->first_error); corruption or leak by kind. */
void bdrv_check_corruption(BlockCheckResult *res, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
void bdrv_check_leak(BlockCheckResult *res, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
/* A check for formats whose metadata is a map only (vmdk, vhdx): every run of bs's own block status whose
 * bytes are stored in a host file must lie inside that file, and a range the map cannot answer for is a
 * corruption too (the walk goes on at the next multiple of step; 0: the driver's cluster size; after 65536 such
 * ranges it stops with a check error). past_end_stops: a damaged entry or a run past the end of its file
 * stops the check with a check error instead (qemu-img's "Check failed" for vmdk, exit 1). 0 or -errno. */
int bdrv_check_host_runs(BlockNode *bs, BlockCheckResult *res, int64_t step, bool past_end_stops);

/* ---------------------------------------------------------------- snapshots */

typedef struct SnapshotInfo {
    char id[128];
    char name[1024];
    uint64_t date_sec;
    uint32_t date_nsec;
    uint64_t vm_clock_nsec;
    uint64_t vm_state_size;
    uint64_t disk_size;      /* virtual size of the disk at the snapshot */
    uint64_t icount;
} SnapshotInfo;

/* ---------------------------------------------------------------- create */

typedef struct CreateOpts {
    int64_t size;               /* virtual size; -1 = take the backing file's size */
    const char *backing;        /* backing file name to record (as given) */
    const char *backing_format; /* its format, recorded in the image */
    const char *options;        /* driver options "k=v,k=v" (cluster_size=, compat=, extended_l2=, ...) */
    /* The passphrase of a new encrypted image (luks, qcow2 encrypt.format=luks): --key-file,
     * --passphrase-fd or the prompt of `imgfuse create`, in the caller's locked memory; NULL: none. */
    const uint8_t *secret;
    size_t secret_len;
} CreateOpts;

/* ---------------------------------------------------------------- typed driver facts */

/* What a format driver knows of its layout that the core uses (get_facts): zero = not told. */
typedef struct BlockDriverFacts {
    int64_t cluster_size;   /* allocation unit of the format (qcow2/qed cluster, vdi/vpc block, vmdk grain):
                             * copy-on-read copies whole units of it */
    /* For `info --output=json` and `map --output=json` (qemu-img's schema). */
    bool dirty;             /* the image says it was not closed cleanly (qcow2 dirty bit, qed need-check) */
    bool unallocated_is_zero; /* with no backing node, the ranges this node leaves unallocated are its own
                               * zeros, as qemu-img reports them (present): formats qemu opens without a
                               * backing file (vpc, vdi) */
    bool data_over_host_zero; /* qemu-img reports a data range of this node that lies on zeros of its host
                               * file (a hole) as data and zero (fixed vpc, static vdi, flat vmdk) */
    bool no_qemu_info;      /* qemu's driver of this format has no get_info (parallels, cloop, bochs, dmg): qemu-img prints neither
                             * cluster-size nor dirty-flag for it, and neither does info --output=json */
    /* Evidence containers (ewf, splitraw). files: every file the node reads, in order (the segments of a
     * series, the first being bs->filename), borrowed while the node is open; NULL: bs->filename alone.
     * stored_md5/stored_sha1: the content hashes the container stores (lower-case hex), "" for none:
     * `imgfuse verify` compares them with the content. */
    const char *const *files;
    int n_files;
    char stored_md5[33];
    char stored_sha1[41];
    bool encrypted;         /* the image's data is encrypted (LUKS, qcow2/qcow encryption): info --output=json
                             * says "encrypted": true, as qemu-img */
} BlockDriverFacts;

/* ---------------------------------------------------------------- the driver interface
 *
 * What the core serialises, and what is left to the driver:
 *   - probe, open, create, close and backing_attached run alone: no other slot of the node runs meanwhile.
 *   - Every other slot may be called from several threads at once on the same node, with any mix of reads,
 *     writes, block status, flush, info and snapshot calls: a driver guards its own metadata (tables,
 *     caches, headers) with its own lock and keeps data transfers outside it where the format allows.
 *   - The core serialises only overlapping guest ranges that must not interleave: read-modify-write of an
 *     unaligned write (request_alignment > 1) and copy-on-read. Two aligned writes to the same cluster may
 *     reach a driver together; allocating it once is the driver's job.
 *   - debug_event is called from inside other drivers' I/O paths and must not block on I/O. */

struct BlockDriver {
    const char *name;
    size_t instance_size;        /* bytes of bs->opaque, zero-allocated before open */
    bool supports_backing;       /* the seed's rule: only then may a backing child be attached */
    bool is_protocol;            /* opens a file name (file, memory) */
    bool is_filter;              /* passes through to bs->file (blkdebug) */
    bool over_chain;             /* a filter over a whole chain (window): its block status is the chain's
                                  * below, depth included; bdrv_block_status_above takes it as final */
    const BlockOptionSpec *options; /* the options it takes (see "driver options"), NULL name ends; NULL: none */

    /* Score 0..100 for the first bytes of the file (len may be less than a sector for tiny files). */
    int (*probe)(const uint8_t *buf, size_t len, const char *filename);

    /* Format/filter drivers: bs->file is already open. Protocol drivers: open bs->filename.
     * On failure err holds the reason; the core puts "bs->filename: " in front (unless it starts so).
     * A format driver that finds a backing file name sets bs->backing_name (and bs->backing_format_hint);
     * the core resolves and opens the backing chain after open returns. */
    int (*open)(BlockNode *bs, const BlockOpenOpts *opts, Error *err);
    void (*close)(BlockNode *bs);
    /* Format drivers, optional: called once per node after the core attached the whole backing chain below
     * it (bs->backing set, or NULL: none, --no-backing), before any I/O: checks of the parent (vpc's parent
     * UUID, vmdk's parentCID) belong here, not in the read path. A negative errno fails the open (err set). */
    int (*backing_attached)(BlockNode *bs, Error *err);
    /* Format drivers whose images name their parent by identity only (bs->backing_search_suffix): true if
     * head (the first len bytes of a candidate file, len <= BDRV_IDENTITY_HEAD, zero-padded) is the parent
     * bs names. Called by the core during the search, before bs->backing exists; never opens anything. */
    bool (*backing_matches)(BlockNode *bs, const uint8_t *head, size_t len);

    /* Byte-based I/O. Requests are aligned to bs->request_alignment (the core does read-modify-write
     * otherwise) and never longer than bs->max_transfer if the driver's open set it. Ranges never cross getlength
     * except for protocol nodes being grown by writes. */
    int (*read)(BlockNode *bs, int64_t offset, int64_t bytes, void *buf);
    int (*write)(BlockNode *bs, int64_t offset, int64_t bytes, const void *buf, int flags);
    int (*write_zeroes)(BlockNode *bs, int64_t offset, int64_t bytes, int flags);
    /* One whole cluster at a cluster-aligned offset (or the start of the disk's last cluster, whose rest
     * then reads as zeros), stored compressed when that saves space (`convert -c`); NULL: it cannot. */
    int (*write_compressed)(BlockNode *bs, int64_t offset, int64_t bytes, const void *buf);
    int (*discard)(BlockNode *bs, int64_t offset, int64_t bytes);
    /* Records name (NULL: no backing file) and its format as the image's backing file, in the image
     * (rebase, stream); the node's open chain is not changed. NULL: the format cannot. */
    int (*change_backing_file)(BlockNode *bs, const char *name, const char *format);
    /* Deallocates everything this layer holds: it reads as its backing file again (commit). */
    int (*make_empty)(BlockNode *bs);
    /* Changes creation options of the open, writable image in place (`imgfuse amend`), options as
     * CreateOpts.options ("key=value,..."); a key it cannot change is refused by name in err (the reason
     * only). NULL: the format has nothing to amend. */
    int (*amend)(BlockNode *bs, const char *options, Error *err);
    int (*flush)(BlockNode *bs);

    /* What [offset, offset+bytes) of this layer is; st->bytes may be shorter than asked. */
    int (*block_status)(BlockNode *bs, int64_t offset, int64_t bytes, BlockStatus *st);

    int64_t (*getlength)(BlockNode *bs);
    int64_t (*get_allocated_size)(BlockNode *bs); /* host bytes used, -ENOTSUP if unknown */
    int64_t (*memory_used)(BlockNode *bs);        /* bytes of tables and caches held, -ENOTSUP if not told */
    int (*truncate)(BlockNode *bs, int64_t size);

    /* Internal snapshots. snapshot_open returns a new read-only node (owned by the caller, closed with
     * bdrv_close) that shows the disk as at the snapshot, with the same file and backing children. */
    int (*snapshot_list)(BlockNode *bs, SnapshotInfo **list); /* returns count, list malloc'd */
    int (*snapshot_create)(BlockNode *bs, const char *name, Error *err);
    int (*snapshot_delete)(BlockNode *bs, const char *id_or_name, Error *err);
    int (*snapshot_goto)(BlockNode *bs, const char *id_or_name, Error *err);
    BlockNode *(*snapshot_open)(BlockNode *bs, const char *id, Error *err);
    int (*vmstate_read)(BlockNode *bs, const char *id, int64_t offset, int64_t bytes, void *buf);

    void (*get_info)(BlockNode *bs, InfoList *info);
    /* Checks this node's metadata (res zeroed by the core) and, when fix has BDRV_FIX_* bits, repairs what it
     * can; res then tells what is left after the repair, and *_fixed what was repaired. 0, or -errno when the
     * check could not run; -ENOTSUP when fix is asked of a driver that repairs nothing (say so in its man
     * page section). A fix is only asked of a node opened writable (BlockOpenOpts.check_repair). */
    int (*check)(BlockNode *bs, BlockCheckResult *res, int fix);
    int (*create)(const char *filename, const CreateOpts *opts, Error *err);
    bool (*has_zero_init)(BlockNode *bs);
    /* Format drivers: the typed facts of an open node (facts zeroed by the core); NULL: none. */
    void (*get_facts)(BlockNode *bs, BlockDriverFacts *facts);
    /* Format drivers, optional: qemu-img's "format-specific" object of the node (info --output=json).
     * Returns its "type" (NULL: none) and adds its "data" members to data (empty on entry) under qemu's
     * kebab-case keys, typed; the members of an array of objects as items "NAME/I/KEY", I = 0, 1, ... in
     * order. */
    const char *(*get_format_specific)(BlockNode *bs, InfoList *data);
    /* Filter drivers, optional: a format driver above announced event (bdrv_debug_event) for the calling
     * thread's next I/O on bs (blkdebug fails or slows that I/O). */
    void (*debug_event)(BlockNode *bs, const char *event);

    /* Optional: several host extents of one request in one go (libaio batch in the file driver).
     * Offsets/lengths/buffers follow bs->request_alignment; NULL = the core loops over read/write. */
    int (*read_extents)(BlockNode *bs, const struct BlockExtent *ext, int n);
    int (*write_extents)(BlockNode *bs, const struct BlockExtent *ext, int n, int flags);

    /* Format drivers: true if the format keeps no metadata that another writer could invalidate (raw);
     * then, like QEMU, other processes may write and resize while the image is open. */
    bool shares_write;
    /* Protocol drivers: take QEMU-compatible image locks. held/unshared are sets of BDRV_PERM_* bits.
     * Called by the core before a format driver's open; fails (with err set) if another process holds a
     * conflicting lock. */
    int (*set_perm)(BlockNode *bs, unsigned held, unsigned unshared, Error *err);
    /* Protocol drivers, optional: the descriptor whose bytes at a host offset are this node's bytes at
     * that offset, for zero-copy reads (bdrv_map_extents); -ENOTSUP when there is none (O_DIRECT). */
    int (*get_fd)(BlockNode *bs);
    /* Format drivers with create: the creation options create takes in CreateOpts.options ("-o help"
     * of `imgfuse create` lists them); NULL: none. */
    const BlockOptionSpec *create_options;
    /* Map-based format drivers: their map, for the core's slots bdrv_mapped_read, bdrv_mapped_block_status
     * and bdrv_mapped_write (lib/readmap.c), which a driver may name as its read, block_status and write
     * slots; NULL: not used. */
    const struct BlockReadMap *read_map;
    const struct BlockWriteMap *write_map;
};

/* Permissions for set_perm (QEMU's numbering: lock byte 100+N held, 200+N not shared). */
#define BDRV_PERM_CONSISTENT_READ (1u << 0)
#define BDRV_PERM_WRITE           (1u << 1)
#define BDRV_PERM_WRITE_UNCHANGED (1u << 2)
#define BDRV_PERM_RESIZE          (1u << 3)

/* The driver table (lib/drivers.c). */
const BlockDriver *bdrv_find_driver(const char *name);
const BlockDriver *const *bdrv_driver_list(void); /* NULL-terminated */
/* Images named by a URL (lib/drivers.c's scheme table). bdrv_url_scheme_len: the length of SCHEME in a name
 * "SCHEME://...", 0 if the name is not of that form. bdrv_find_protocol: the protocol driver of the name's
 * scheme (nbd, nbds, nbd+unix, ...), NULL for a local file name or a scheme no driver serves. bdrv_open
 * and bdrv_open_file open such a name with that driver; format probing reads through it. */
size_t bdrv_url_scheme_len(const char *name);
const BlockDriver *bdrv_find_protocol(const char *name);
/* name into out (len bytes) with the password of a URL's user info ("nbd://user:SECRET@host") as "***";
 * true if it had one. bdrv_open_file refuses such a URL, naming it so: credentials never reach a message. */
bool bdrv_url_redact(const char *name, char *out, size_t len);
/* True if name starts with a bare scheme of the table, "SCHEME:" without "//" (rbd:pool/image[@snap][:opts]);
 * bdrv_find_protocol serves it, bdrv_url_redact masks its ":key=SECRET" as ":key=***" (and returns true). */
bool bdrv_url_is_bare(const char *name);

/* ---------------------------------------------------------------- nodes */

typedef struct BlockStats {
    uint64_t rd_ops, wr_ops, flush_ops, discard_ops, zero_ops;
    uint64_t rd_bytes, wr_bytes, discard_bytes, zero_bytes;
    uint64_t rd_ns_total, wr_ns_total, rd_ns_max, wr_ns_max;
    uint64_t cor_bytes, detected_zero_ops, errors;
} BlockStats;

struct BlockNode {
    const BlockDriver *drv;
    void *opaque;                 /* driver state, drv->instance_size bytes */
    char *filename;               /* as opened (path of the image file) */
    char *node_name;              /* basename, for messages */
    BlockNode *file;              /* protocol child of a format/filter node */
    BlockNode *backing;           /* backing chain, NULL if none */
    bool read_only;
    bool probed;                  /* format was probed, not named: raw guards sector 0 on writes */
    int depth;                    /* 0 = top of the chain */

    /* Set by a format driver's open when the image names a backing file. */
    char *backing_name;           /* exactly as written in the image */
    char *backing_format_hint;    /* format from the image, NULL if absent */
    /* Or, when the image names its backing file in several places (vpc's parent locators): the candidate
     * names in the driver's order, backing_name set to the first. The core, not the driver, chooses: it
     * takes the first the backing-name policy resolves (backing_name becomes that one) and reports the first
     * one's refusal when none resolves. Freed with the node. */
    char *backing_candidates[BDRV_MAX_BACKING_CANDIDATES];
    /* Or, when the image names its parent by identity alone (a differencing VDI's parent UUID): the file name
     * suffix to search for (".vdi", any case), backing_name being the identity as users read it ("{UUID}").
     * The core lists the regular files with that suffix in the image's directory and each --backing-dir (in
     * name order, at most BDRV_MAX_IDENTITY_CANDIDATES), applies the backing-name policy to each, reads the
     * head of each O_RDONLY and takes the first the driver's backing_matches accepts; backing_name becomes
     * its path. Freed with the node. */
    char *backing_search_suffix;
    char *backing_resolved;       /* set by the core: the path actually opened, and how */
    char *backing_note;           /* e.g. "found by base name in --backing-dir /x" */

    uint32_t request_alignment;   /* set by open: 1 = byte-granular */
    int64_t max_transfer;         /* set by open: longest single read/write the driver takes, 0 = unlimited */

    const BlockOpenOpts *opts;    /* the options the chain was opened with (owned by the caller) */

    /* The core's private per-node state (lib/block_int.h): tracked requests, statistics, the reference
     * count, root-node request-path state. Drivers and the front end use the bdrv_* calls instead. */
    struct BlockNodeCore *core;
};

/* Open IMAGE with its whole backing chain. Returns NULL and fills err on failure. */
BlockNode *bdrv_open(const char *filename, const BlockOpenOpts *opts, Error *err);
/* The window filter (drivers/window.c) over bs, a chain's top node: shows [offset, offset + size) of it
 * (size -1: to its end), for reads, writes (never past the window's end: ENOSPC), block status and length.
 * Takes its own reference on bs (the caller still closes bs). NULL with err set ("FILE: reason") if the
 * window passes the end of bs. */
BlockNode *bdrv_open_window(BlockNode *bs, int64_t offset, int64_t size, Error *err);
/* The filters over a whole chain that opts' driver options name (window.offset, window.size), stacked over
 * bs, a chain's top (each takes its own reference on bs); bs itself when opts names none. NULL with err
 * set when one cannot open. bdrv_open leaves them to this call (the caller keeps chain and view apart). */
BlockNode *bdrv_open_chain_filters(BlockNode *bs, const BlockOpenOpts *opts, Error *err);
/* Open just a protocol node for a file (used by drivers for external data files). */
BlockNode *bdrv_open_file(const char *filename, const BlockOpenOpts *opts, bool read_only, Error *err);
/* For a format's create: filename created empty by the file driver and opened writable with default
 * options into *file. 0, or a negative errno with err set (*file untouched). */
int bdrv_create_empty_file(const char *filename, BlockNode **file, Error *err);
/* For a format whose new image is one buffer: filename created as above, img (len bytes) written at 0 and
 * flushed, the file closed. 0 or a negative errno (err set where the file could not be made). */
int bdrv_create_image_file(const char *filename, const void *img, uint64_t len, Error *err);
/* Wrap a driver-created node (snapshot views); allocates opaque of drv->instance_size. */
BlockNode *bdrv_new_node(const BlockDriver *drv, const char *filename);
/* A node of drv stacked on bs (its file name, file = bs, its read-only flag), holding its own reference on
 * bs; not opened. NULL (drv NULL or no memory) with "FILE: out of memory" in err. */
BlockNode *bdrv_new_node_over(const BlockDriver *drv, BlockNode *bs, Error *err);
void bdrv_close(BlockNode *bs); /* flushes if writable, closes the whole chain below */

/* I/O through the core: alignment, bounce buffers, zero beyond EOF, serialisation, statistics. */
int bdrv_pread(BlockNode *bs, int64_t offset, int64_t bytes, void *buf);
int bdrv_pwrite(BlockNode *bs, int64_t offset, int64_t bytes, const void *buf, int flags);
/* A format's fixed header: the first len bytes of file (file_size bytes long) into buf. 0, or a negative
 * errno with "file too short for a NAME header (N bytes)" or "cannot read the NAME header: REASON" in err. */
int bdrv_read_header(BlockNode *file, uint64_t file_size, void *buf, size_t len, const char *name, Error *err);
/* A format's open: the length of its file into *size (0 on failure). 0, or a negative errno with "cannot get
 * the file size: REASON" in err. */
int bdrv_file_size(BlockNode *file, int64_t *size, Error *err);
/* One integer field of a format's metadata written at offset, as 4 or 8 bytes, little- or big-endian,
 * after the fault-injection event (NULL: none); bdrv_pwrite's result. */
typedef enum { BDRV_FIELD_LE32, BDRV_FIELD_LE64, BDRV_FIELD_BE32, BDRV_FIELD_BE64 } BlockFieldType;
int bdrv_pwrite_field(BlockNode *file, int64_t offset, BlockFieldType type, uint64_t value, const char *event);
int bdrv_pwrite_zeroes(BlockNode *bs, int64_t offset, int64_t bytes, int flags);
/* The image's recorded backing file and its emptying (the drivers' change_backing_file and make_empty):
 * -ENOTSUP if the format cannot. */
int bdrv_change_backing_file(BlockNode *bs, const char *name, const char *format);
int bdrv_make_empty(BlockNode *bs);
/* The driver's amend slot (`imgfuse amend -o OPTIONS`): 0, or a negative errno with err set ("FILE: reason";
 * -ENOTSUP "FILE: format 'X' has no options to amend" when the driver has no slot). */
int bdrv_amend(BlockNode *bs, const char *options, Error *err);
/* One cluster written compressed (the driver's write_compressed): -ENOTSUP if the format cannot. */
int bdrv_pwrite_compressed(BlockNode *bs, int64_t offset, int64_t bytes, const void *buf);
int bdrv_discard(BlockNode *bs, int64_t offset, int64_t bytes);
int bdrv_flush(BlockNode *bs);              /* this node and everything below */
int64_t bdrv_getlength(BlockNode *bs);
int64_t bdrv_get_allocated_size(BlockNode *bs); /* whole chain below this node */
int64_t bdrv_memory_used(BlockNode *bs);        /* this one node's tables and caches, -ENOTSUP if not told */
int bdrv_truncate(BlockNode *bs, int64_t size);

/* Status of this one layer. */
int bdrv_block_status(BlockNode *bs, int64_t offset, int64_t bytes, BlockStatus *st);
/* Status through the chain: descends into backing for unallocated ranges; st->depth says which layer
 * decided. A range unallocated everywhere is reported as ZERO without DATA and without ALLOCATED. */
int bdrv_block_status_above(BlockNode *bs, int64_t offset, int64_t bytes, BlockStatus *st);
/* A block_status slot for a layer whose guest bytes are bs->file's at the same offset (raw, fixed vpc):
 * bs->file's status, as this layer's own host bytes. */
int bdrv_block_status_same_offset(BlockNode *bs, int64_t offset, int64_t bytes, BlockStatus *st);
/* block_status of a node whose every byte is its own data with no host offset (chunks a library
 * decompresses: ewf, aff): one run of data for the whole range. */
int bdrv_block_status_all_data(BlockNode *bs, int64_t offset, int64_t bytes, BlockStatus *st);

/* Number of layers in the chain from bs down. */
int bdrv_chain_length(BlockNode *bs);

/* Backing name resolution, the one place its policy lives. image_path is the image naming the backing
 * file. On success writes the path to open into out and a note on how it was found (may be empty). */
int bdrv_resolve_backing(const char *image_path, const char *name, const BlockOpenOpts *opts,
                         char *out, size_t outlen, char *note, size_t notelen, Error *err);

/* A file an image names besides its backing file (qcow2's external data file), resolved to path by the
 * driver of bs: NULL if the backing-name policy allows it (inside the image's directory or a --backing-dir,
 * or --unsafe-backing), else the reason it is refused (always refused for images on memory nodes). */
const char *bdrv_named_file_refusal(BlockNode *bs, const BlockOpenOpts *opts, const char *path);

/* Probe the format of an already-open protocol node: highest score wins, "raw" is the fallback. */
const BlockDriver *bdrv_probe(BlockNode *file);

/* lib/probe.c, the table of every known format magic (with or without a driver). After the drivers'
 * probes chose raw for file: 0 if file is raw for all the table knows (or *drv set to the driver of a
 * known magic whose probe declined, so its open says why), -ENOTSUP with err set ("FILE: VHDX image: no
 * driver for this format yet ...") for a known format without a driver. */
int bdrv_probe_known(BlockNode *file, const BlockDriver **drv, Error *err);
/* The description of the known format whose magic sits in the first len bytes of buf (magic only, no
 * version check), NULL if none: the raw driver's sector-0 write guard. */
const char *bdrv_known_magic_at_start(const uint8_t *buf, size_t len);
/* What file looks like by the table, hint-only entries too (a fixed VHD's footer), NULL if nothing;
 * *driver = the driver that reads it (NULL: none). Reads the file. */
const char *bdrv_known_format_hint(BlockNode *file, const char **driver);

/* Create an image file of the given format. */
int bdrv_create(const char *format, const char *filename, const CreateOpts *opts, Error *err);

/* Info about one node (format-neutral keys first, then the driver's own). */
void bdrv_get_info(BlockNode *bs, InfoList *info);

/* Snapshot API, ENOTSUP when the format has none. */
int bdrv_snapshot_list(BlockNode *bs, SnapshotInfo **list);

/* Statistics */
void bdrv_stats_snapshot(BlockNode *bs, BlockStats *out);

/* ---------------------------------------------------------------- additions (see /work/NOTES-core.md) */

/* A protocol node over a private copy of buf (driver "memory"): for unit tests and fuzz targets.
 * Images on a memory node may never open backing files (any backing name is refused). */
BlockNode *bdrv_open_memory(const void *buf, size_t len, bool read_only);
/* Open a format (NULL = probe) on an already-open protocol node, then its backing chain, as bdrv_open
 * does. Takes ownership of file: on failure file is closed too. */
BlockNode *bdrv_open_on_node(BlockNode *file, const char *format, const BlockOpenOpts *opts, Error *err);
/* Another user of bs (e.g. a snapshot view sharing file/backing children); bdrv_close drops one. */
void bdrv_ref(BlockNode *bs);

/* Several extents in one request (one io_submit batch with --aio=native); 0 or -errno. */
int bdrv_pread_extents(BlockNode *bs, const BlockExtent *ext, int n);

/* Thin wrappers of the driver slots: -ENOTSUP (or NULL with err set) when the driver has none. */
int bdrv_snapshot_create(BlockNode *bs, const char *name, Error *err);
int bdrv_snapshot_delete(BlockNode *bs, const char *id_or_name, Error *err);
int bdrv_snapshot_goto(BlockNode *bs, const char *id_or_name, Error *err);
BlockNode *bdrv_snapshot_open(BlockNode *bs, const char *id, Error *err);
int bdrv_vmstate_read(BlockNode *bs, const char *id, int64_t offset, int64_t bytes, void *buf);
/* The check slot read-only, as a report: "corruptions", "leaked_clusters" and (when there is one)
 * "first_error"; returns the number of corruptions, or -errno (-ENOTSUP: no check slot). */
int bdrv_check(BlockNode *bs, InfoList *report);
/* The check slot itself: res zeroed, then filled; 0 or -errno (-ENOTSUP: no checker, or no repair). */
int bdrv_check_image(BlockNode *bs, BlockCheckResult *res, int fix);
bool bdrv_has_zero_init(BlockNode *bs);
/* The typed facts of bs's driver (all zero when it tells none). */
void bdrv_get_facts(BlockNode *bs, BlockDriverFacts *facts);
/* qemu-img's "format-specific" type and data of bs (the get_format_specific slot); NULL when none. */
const char *bdrv_get_format_specific(BlockNode *bs, InfoList *data);

/* Format drivers announce a metadata write ("l2_update", "refblock_update", ...) on their file child
 * just before issuing it; a filter there with a debug_event slot (blkdebug) may then fail that I/O.
 * No-op on other nodes. */
void bdrv_debug_event(BlockNode *file, const char *event);

/* --on-read-error=zero: ranges of the root node that read as zeros because they could not be read. */
typedef struct ReadErrorRecord {
    int64_t offset, length;  /* guest range of the root node */
    int layer;               /* chain depth of the layer that decided the range (0 = top) */
    char layer_name[256];    /* that layer's file name */
    char reason[128];        /* strerror of the failure */
} ReadErrorRecord;
/* The list, in disk order and streamed: copies up to max records (at most 64 a call) that start at or
 * after offset into out; returns how many (0: no more). Adjacent ranges of one layer and reason are
 * merged; the list keeps at most 524288 ranges (12 MiB, 24 MiB while merging new ones in). */
int bdrv_read_errors_from(BlockNode *bs, int64_t offset, ReadErrorRecord *out, int max);
/* The list's size and memory, and the ranges read as zeros but not listed because it was full. */
typedef struct ReadErrorSummary {
    uint64_t ranges, mem_bytes;
    uint64_t unlisted, unlisted_bytes;
} ReadErrorSummary;
void bdrv_read_errors_summary(BlockNode *bs, ReadErrorSummary *sum);
/* bdrv_block_status_above as reads see it (SEEK_DATA/SEEK_HOLE): under --on-read-error=zero a range whose
 * status cannot be read is reported as data (it reads as zeros), never as an error. */
int bdrv_block_status_as_read(BlockNode *bs, int64_t offset, int64_t bytes, BlockStatus *st);

/* Zero-copy reads: where a read-only range of bs lives on the host. One piece of a mapped range: its
 * bytes are host bytes of one file (fd >= 0, from host_offset on), or zeros (fd -1), decided by the layer
 * at depth (0 = bs). */
typedef struct BlockMapExtent {
    int64_t bytes;
    int fd;               /* borrowed: valid while the chain is open; read it with pread/splice at host_offset;
                           * -1: the piece reads as zeros */
    int64_t host_offset;
    BlockNode *host_file; /* the protocol node of fd; NULL for zeros */
    int depth;
} BlockMapExtent;
/* Fills ext with at most max_ext extents (neighbours merged) that read, in order, exactly as [offset,
 * offset+bytes) of bs, and returns their number, when nothing can change that while the chain is open:
 * every node opened read-only, no request-path feature (throttling, copy-on-read, read errors as zeros,
 * detect-zeroes), no O_DIRECT, no filter but windows, no compressed piece, every host range within its
 * file. 0 when not, or when more extents would be needed (read with bdrv_pread then); -errno. */
int bdrv_map_extents(BlockNode *bs, int64_t offset, int64_t bytes, BlockMapExtent *ext, int max_ext);
/* Counts reads done through extents in the statistics of every node bdrv_pread would have counted them
 * in: bs once for the whole range, each backing layer down to an extent's depth and its host file per
 * extent. */
void bdrv_account_extents(BlockNode *bs, const BlockMapExtent *ext, int n, uint64_t ns);

/* ---------------------------------------------------------------- reading through a driver's map */

/* How a reader interprets one run of a layer's map (a BlockStatus answer for that one layer): the one
 * place this lives, so that bdrv_read_mapped (buffered reads) and bdrv_map_extents (spliced reads) agree.
 *   BLOCK_RUN_ZERO     ZERO set and COMPRESSED not: the run reads as zeros.
 *   BLOCK_RUN_BACKING  else ALLOCATED not set: the run is the backing node's bytes at the same guest
 *                      offset (zeros where there is no backing node, or beyond its end).
 *   BLOCK_RUN_HOST     else DATA and OFFSET_VALID set, COMPRESSED not, host_file non-NULL: the run is
 *                      host_file's bytes from host_offset on.
 *   BLOCK_RUN_DECODE   anything else (compressed, encrypted, damaged pieces): only the driver can say what
 *                      it reads as (bdrv_map_extents never hands it out). */
typedef enum { BLOCK_RUN_ZERO, BLOCK_RUN_BACKING, BLOCK_RUN_HOST, BLOCK_RUN_DECODE } BlockRunKind;
BlockRunKind bdrv_run_kind(const BlockStatus *st);

/* A driver's map, for bdrv_read_mapped. map answers for [offset, offset+bytes) of this one layer as its
 * block_status slot does (st zeroed by the caller; st->bytes > 0 and may be shorter than asked; a negative
 * errno fails the read). decode fills buf with the bytes of a BLOCK_RUN_DECODE run, [offset, offset+bytes)
 * (within the run st describes); it is called right after the map call that answered that run, so a map
 * may leave what decode needs in opaque. NULL: such runs fail with EIO. backing names the node backing
 * runs read (NULL: zeros); a NULL slot means bs->backing. All run under whatever lock the driver holds
 * around bdrv_read_mapped and may take their own; opaque is the driver's context for this one read. */
typedef struct BlockReadMap {
    int (*map)(BlockNode *bs, int64_t offset, int64_t bytes, BlockStatus *st, void *opaque);
    int (*decode)(BlockNode *bs, int64_t offset, int64_t bytes, void *buf, const BlockStatus *st, void *opaque);
    BlockNode *(*backing)(BlockNode *bs, void *opaque);
    pthread_rwlock_t *(*lock)(BlockNode *bs); /* for the bdrv_mapped_* slots; NULL slot or answer: none */
} BlockReadMap;
/* Reads [offset, offset+bytes) of bs (a driver's own node, from its read slot) run by run through m:
 * zero runs as zeros, backing runs with bdrv_pread of the backing node, decode runs through m->decode;
 * host runs are collected (neighbours in the host file and the buffer merged into one extent) and read
 * with one bdrv_pread_extents call per host file and 32 extents, before it returns. 0 or a negative
 * errno (the first one met; a host read's failure may be met after later runs were mapped). */
int bdrv_read_mapped(BlockNode *bs, int64_t offset, int64_t bytes, void *buf, const BlockReadMap *m, void *opaque);
/* The read and block_status slots of a map-based driver whose map needs its lock held shared (lock NULL:
 * none, e.g. a read-only image). bdrv_read_mapped_locked: EINVAL unless 0 <= offset, 0 <= bytes and
 * offset + bytes <= size, then bdrv_read_mapped(bs, ..., m, NULL) under lock. bdrv_status_mapped_locked:
 * st zeroed, then m->map(bs, offset, bytes, st, NULL) under lock. */
int bdrv_read_mapped_locked(BlockNode *bs, int64_t offset, int64_t bytes, void *buf, const BlockReadMap *m,
                            pthread_rwlock_t *lock, uint64_t size);
int bdrv_status_mapped_locked(BlockNode *bs, int64_t offset, int64_t bytes, BlockStatus *st, const BlockReadMap *m,
                              pthread_rwlock_t *lock);

/* A driver's write map, for bdrv_write_mapped_locked. place (lock held shared) says how a write of
 * [offset, offset+bytes) begins: *n bytes (0 < *n <= bytes) that are in place at *host in bs->file (1),
 * that need allocating (0), or a negative errno that fails the write. allocate (lock held exclusive)
 * writes from offset (bytes left, *n as place said) into new space and sets *n to what it wrote; it must
 * look again, since another writer may have allocated meanwhile. flush serves BDRV_REQ_FUA (NULL: the
 * flush of bs->file). */
typedef struct BlockWriteMap {
    int (*place)(BlockNode *bs, uint64_t offset, uint64_t bytes, uint64_t *n, uint64_t *host);
    int (*allocate)(BlockNode *bs, uint64_t offset, uint64_t bytes, const void *buf, uint64_t *n);
    int (*flush)(BlockNode *bs);
} BlockWriteMap;
/* The write slot of a map-based driver: EROFS when lock is NULL (a read-only image has none), EINVAL
 * unless 0 <= offset, 0 <= bytes and offset + bytes <= size; then piece by piece through m, in-place
 * pieces written under lock held shared, allocations under it held exclusive; the first error ends it. */
int bdrv_write_mapped_locked(BlockNode *bs, int64_t offset, int64_t bytes, const void *buf, int flags,
                             const BlockWriteMap *m, pthread_rwlock_t *lock, uint64_t size);
/* Slots for a driver that declares read_map (and write_map): the three above with its map, the lock its
 * read_map->lock names and its getlength as the size. */
int bdrv_mapped_read(BlockNode *bs, int64_t offset, int64_t bytes, void *buf);
int bdrv_mapped_block_status(BlockNode *bs, int64_t offset, int64_t bytes, BlockStatus *st);
int bdrv_mapped_write(BlockNode *bs, int64_t offset, int64_t bytes, const void *buf, int flags);
/* Most of a map-based driver's check slot: check(bs, res, fix) run with its read_map's lock held exclusive.
 * Returns check's result. */
int bdrv_check_mapped(BlockNode *bs, BlockCheckResult *res, int fix,
                      int (*check)(BlockNode *bs, BlockCheckResult *res, int fix));

/* ---------------------------------------------------------------- live jobs (lib/job.c)
 *
 * For `imgfuse commit` and `stream` on a mounted chain (fuse/live.c), bs being the chain's root node. Each
 * chunk runs under a serialising tracked request over its range: guest writes to it wait (bdrv_track_writes
 * must be on before the mount serves writes). */
void bdrv_track_writes(BlockNode *bs);
/* Stream: what layers of depth [1, base_depth) decide in [offset, offset+bytes) (data, or zeros over older
 * data) written into bs, where bs does not hold the range itself (checked under the request). buf: bytes
 * bytes. 0 or -errno. */
int bdrv_job_stream_chunk(BlockNode *bs, int64_t offset, int64_t bytes, int base_depth, void *buf);
/* Live commit: what layers of depth [0, base_depth) decide in the range, as the guest reads it, written into
 * target (a writable node of the base file); then the range counts as passed for the mirror. */
int bdrv_job_commit_chunk(BlockNode *bs, BlockNode *target, int64_t offset, int64_t bytes, int base_depth,
                          void *buf);
/* The mirror of a live commit: from start on, every write, write-zeroes and discard of bs is serialised and,
 * within the ranges passed (all of them after mirror_all), its result written into target too. stop returns
 * when no write of bs can still touch target. */
void bdrv_job_mirror_start(BlockNode *bs, BlockNode *target);
void bdrv_job_mirror_all(BlockNode *bs);
void bdrv_job_mirror_stop(BlockNode *bs);
/* bs->backing becomes new_backing (NULL: none; it gains a reference) with one pointer store, for a chain
 * that reads the same either way; the old chain stays open until bs closes. -EBUSY after 16 re-links. */
int bdrv_relink_backing(BlockNode *bs, BlockNode *new_backing);

/* ---------------------------------------------------------------- partition tables (lib/partitions.c) */

/* The MBR or GPT of a node's disk, read by libblkid (never parsed here): numbered as Linux numbers
 * them (MBR primary 1-4, logical from 5; GPT entry + 1), at most BDRV_MAX_PARTITIONS. */
#define BDRV_MAX_PARTITIONS 128

typedef struct BlockPartition {
    int number;
    int64_t start, size;     /* bytes, as the table says */
    int64_t avail;           /* bytes of it inside the disk (< size: clipped at the disk's end; 0: past it) */
    char type[40];           /* MBR "0x83", GPT type GUID */
    char name[160];          /* GPT name (UTF-8 as libblkid gives it), "" for MBR */
    char uuid[40];           /* GPT partition GUID, MBR "DISKID-NN" */
    bool extended, logical;  /* MBR extended container, logical partition */
} BlockPartition;

typedef struct BlockPartitionTable {
    char label[8];           /* "dos", "gpt"; "" when the disk has no table */
    char id[40];             /* the disk identifier (MBR signature, GPT disk GUID) */
    int n;
    bool truncated;          /* more than BDRV_MAX_PARTITIONS: the rest are not listed */
    BlockPartition part[BDRV_MAX_PARTITIONS];
} BlockPartitionTable;

/* Reads bs's partition table into *t (t->label "" if none). 0, or -errno (-EIO: the table could not be
 * read within the probe's budget of time and memory). */
int bdrv_read_partitions(BlockNode *bs, BlockPartitionTable *t);

/* ---------------------------------------------------------------- output emulation (drivers/emulate.c) */

/* A node whose bytes are an image of format kind ("vmdk": a monolithicFlat descriptor whose extent is the
 * file raw_name; "vhd": bs's bytes and a fixed-VHD footer; "vdi": a static VDI header and block map, then
 * bs's bytes) around bs as it is now; writes to its data area go to bs, to its headers fail with EPERM.
 * NULL with err set ("FILE: --emulate vhd: ...") when bs is too large for the format. */
BlockNode *bdrv_open_emulated(BlockNode *bs, const char *kind, const char *raw_name, Error *err);
/* ---------------------------------------------------------------- decompressed-piece cache (lib/chunkcache.c)
 *
 * For read-only compressed formats (cloop blocks, DMG chunks): at most `slots` whole decompressed pieces,
 * keyed by the driver's piece number, least recently used evicted; thread-safe (one mutex, held only to
 * copy). get copies [offset, offset+len) of piece key into dst and returns true on a hit. put hands over
 * data (malloc'd, len bytes): the cache owns and frees it (at once if key is cached already). A miss is
 * decoded between decode_begin and decode_end, which let at most `decoders` threads decode at once. */
typedef struct ChunkCache ChunkCache;
ChunkCache *chunk_cache_new(int slots, int decoders);
void chunk_cache_decode_begin(ChunkCache *c);
void chunk_cache_decode_end(ChunkCache *c);
void chunk_cache_free(ChunkCache *c);
bool chunk_cache_get(ChunkCache *c, uint64_t key, size_t offset, size_t len, void *dst);
void chunk_cache_put(ChunkCache *c, uint64_t key, void *data, size_t len);
uint64_t chunk_cache_bytes(ChunkCache *c); /* bytes held now */
/* The read of a piece through the cache: a hit is copied; a miss is decoded (decode(ctx, &piece): 0 and a
 * malloc'd piece of piece_len bytes, or -errno) between decode_begin and decode_end, copied and put.
 * A piece another thread is decoding is waited for, not decoded a second time. */
int chunk_cache_read(ChunkCache *c, uint64_t key, size_t offset, size_t len, void *dst, size_t piece_len,
                     int (*decode)(void *ctx, uint8_t **piece), void *ctx);
/* A zlib stream (header, deflate data, Adler-32) of slen bytes into exactly dlen bytes, with libdeflate
 * (a decompressor per thread): 0; -EIO when it is corrupt or inflates to fewer or more; -ENOMEM. */
int chunk_inflate_zlib(const void *src, size_t slen, void *dst, size_t dlen);

/* ---------------------------------------------------------------- worker pool (lib/workerpool.c)
 *
 * For drivers over a library whose handles are not thread-safe (ewf, aff): one handle per concurrent
 * reader, kept in the driver's own array of WORKER_POOL_MAX. open(ctx, i) opens handle i (0 or -errno);
 * the driver opens handle 0 itself at open time, then calls worker_pool_started. worker_pool_get returns
 * the index of a worker locked for the caller (a free one, a new one up to one per CPU, else the next in
 * turn, waited for); worker_pool_put releases it. worker_pool_count: handles open (to close them). */
#define WORKER_POOL_MAX 8
typedef struct WorkerPool WorkerPool;
WorkerPool *worker_pool_new(int (*open)(void *ctx, int i), void *ctx);
void worker_pool_started(WorkerPool *p);
int worker_pool_get(WorkerPool *p);
void worker_pool_put(WorkerPool *p, int i);
int worker_pool_count(WorkerPool *p);
void worker_pool_free(WorkerPool *p);

#endif
