/* SPDX-License-Identifier: MIT */
/*
 * imgfuse.h - declarations shared by the front end's files (fuse/): the string builder, the renderers of
 * `info` and `map` (text and JSON), the mount configuration handed from the command line to the FUSE
 * file system, and the subcommands.  Everything here talks to the block layer through include/block.h
 * only; nothing here knows any image format.
 */
#ifndef IMGFUSE_FRONTEND_H
#define IMGFUSE_FRONTEND_H

#include <limits.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/ioctl.h>
#include <sys/types.h>
#include <time.h>

#include "block.h"

#define IMGFUSE_VERSION "0.1.0"

/* Exit codes (DESIGN.md "Command line"). */
enum { EXIT_OK = 0, EXIT_RUNTIME = 1, EXIT_USAGE = 2 };

/* ---------------------------------------------------------------- strbuf.c */

/* A growable NUL-terminated string. Allocation failure aborts: the front end cannot go on without it. */
typedef struct StrBuf {
    char *s;
    size_t len, cap;
} StrBuf;

void sb_init(StrBuf *sb);
void sb_free(StrBuf *sb);
void sb_printf(StrBuf *sb, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
void sb_put(StrBuf *sb, const char *s, size_t n);
void sb_json_str(StrBuf *sb, const char *s); /* appends s as a quoted, escaped JSON string */
/* "key": "value", plus "key_hex": "<the exact bytes in hex>" when value is not valid UTF-8. */
void sb_json_member(StrBuf *sb, const char *key, const char *value);
/* Appends s escaped for text output: \\ \n \r \t, \xNN for other controls, C1 and non-UTF-8 bytes. */
void sb_text_str(StrBuf *sb, const char *s);
bool str_is_utf8(const char *s);
char *sb_steal(StrBuf *sb, size_t *len);   /* hands the buffer to the caller, leaves sb empty */

/* ---------------------------------------------------------------- render.c */

/* Lines about the mount itself that `MNT/info` shows before the chain (mode, options). */
typedef struct MountFacts {
    bool read_only;
    const char *mode_note;   /* e.g. "writes go to overlay X", NULL if none */
    const char *options;     /* the command line's image/request options, as given */
    BlockNode *window;       /* the window filter disk.raw shows, NULL if the whole disk */
} MountFacts;

/* Describe the chain below bs: what `imgfuse info` prints and what MNT/info shows. facts may be NULL. */
void render_info_text(StrBuf *sb, BlockNode *bs, const MountFacts *facts);
void render_info_json(StrBuf *sb, BlockNode *bs, const MountFacts *facts);
/* The same as an array of one object per layer, top first (`info --output=json --backing-chain`). */
void render_info_json_chain(StrBuf *sb, BlockNode *bs, const MountFacts *facts);
/* Maps, streamed: the allocation map through the chain like `qemu-img map` (text or JSON), or what one
 * layer itself holds, "offset length data|zero" a line (MNT/layers/N-NAME/map). */
enum MapKind { MAP_TEXT, MAP_JSON, MAP_LAYER };

typedef struct MapRun {
    int64_t start, length;
    int flags, depth;
    int64_t host_offset;      /* -1 when not valid */
    const char *file;         /* host file name, NULL when not valid */
} MapRun;

/* A map being rendered: constant memory (the run not yet closed), whatever the disk. */
typedef struct MapStream {
    BlockNode *bs;
    enum MapKind kind;
    int64_t pos, size;        /* size -1: not started */
    MapRun cur;               /* the run being extended */
    bool have, first, done;
    int bottom_depth;         /* MAP_JSON: the last layer's depth, and whether its unallocated ranges are */
    bool bottom_zero;         /* its own zeros (BlockDriverFacts.unallocated_is_zero) */
} MapStream;

void map_stream_init(MapStream *m, BlockNode *bs, enum MapKind kind);
/* Appends the next lines to sb until sb->len >= want or the map ends. Returns 1 while more follows, 0
 * once the map is complete, or -errno (block status failed). */
int map_stream_next(MapStream *m, StrBuf *sb, size_t want);
/* Statistics of every node of the chain and its file children (MNT/stats.json). */
void render_stats_json(StrBuf *sb, BlockNode *bs);
/* The same, with the snapshot views open now among the nodes (role "snapshot", names[i] the snapshot). */
void render_stats_json_views(StrBuf *sb, BlockNode *bs, BlockNode *const *views, const char *const *names,
                             size_t n_views);

/* ---------------------------------------------------------------- fs.c (the FUSE file system), mount.c */

/* What the mount served, for the audit log (updated atomically by the FUSE threads). */
typedef struct FsCounters {
    _Atomic uint64_t bytes_read, bytes_written;
} FsCounters;

typedef struct FsConfig {
    BlockNode *bs;            /* the opened chain (owned by the caller) */
    BlockNode *view;          /* what disk.raw shows: bs, or a window filter over it (owned by the caller) */
    bool writable;            /* disk.raw accepts writes */
    bool file_mode;           /* MOUNTPOINT is a regular file: the root is disk.raw */
    bool debug;
    MountFacts facts;         /* for MNT/info */
    FsCounters *counters;     /* may be NULL */
    bool watch_unmount;       /* start fuse/unwatch.c's watcher (detaches the mount if the daemon dies) */
    char *proc_title;         /* the daemon's command-line memory, renamed in the watcher (may be NULL) */
    size_t proc_title_len;
    bool direct_io;           /* raw views bypass the kernel's page cache (FOPEN_DIRECT_IO) */
    BlockNode *emulated[3];   /* --emulate: the views of disk.raw as emulated_names[i] (NULL: none) */
    const char *emulated_names[3];
} FsConfig;

/* Runs the mount: creates the session from fuse_argv, mounts at mountpoint, calls ready() (which may
 * daemonize) once mounted, serves requests until unmounted or signalled, unmounts. Returns 0 on a clean
 * unmount, EXIT_USAGE if the mount could not be made (message printed), EXIT_RUNTIME otherwise. */
int fs_run(const FsConfig *cfg, int fuse_argc, char **fuse_argv, const char *mountpoint,
           int max_threads, void (*ready)(void *), void *ready_arg);
/* The largest read request a mount asks the kernel for (its max_read option; INIT must say the same). */
unsigned fs_max_read(bool writable);

/* ---------------------------------------------------------------- mount.c (also runs fs_run above) */

/* One line of /proc/self/mountinfo: the mount's id, its mount point (unescaped) and file system type. */
typedef struct MountInfoLine {
    uint64_t id;
    const char *mount_point;
    const char *fstype;
} MountInfoLine;

/* Calls match on each mount in /proc/self/mountinfo (the line's strings live until match returns) until
 * it returns true; false if none did or the file cannot be read. */
bool mountinfo_find(bool (*match)(const MountInfoLine *m, void *arg), void *arg);

/* ---------------------------------------------------------------- audit.c */

typedef struct AuditImage {
    char *path;
    int64_t size;
    struct timespec mtime;
} AuditImage;

typedef struct Audit {
    int fd;                   /* 0 = no audit log */
    struct timespec start;
    AuditImage *images;
    int n;
    char *mountpoint;
} Audit;

/* Opens FILE for appending; prints the error and returns EXIT_USAGE on failure. */
int audit_open(Audit *a, const char *file);
/* Records the mount time and the chain's files (size, mtime) just before mounting. */
void audit_begin(Audit *a, BlockNode *bs, const char *mountpoint);
/* Appends the line for this mount and closes the log. Returns 0 or -errno. */
int audit_finish(Audit *a, bool read_only, const char *options, const FsCounters *c, int rc);
/* `imgfuse hash`: after audit_begin(a, bs or NULL, NULL) for IMAGE, appends its line: size (-1 if not
 * opened), the n digests algo[i] = hex[i] (none unless rc is 0), rc. The log stays open for the next
 * image; audit_close closes it. Returns 0 or -errno. */
int audit_hash(Audit *a, const char *image, int64_t size, int n, const char *const *algo, const char *const *hex,
               int rc);
void audit_close(Audit *a);

/* ---------------------------------------------------------------- overlay.c */

typedef struct Overlay {
    char *path;          /* the overlay file opened as the top of the chain */
    char *temp_dir;      /* --snapshot: its temporary directory, removed at cleanup */
    char *image_abs;     /* IMAGE, absolute */
    char *image_format;  /* IMAGE's format */
    int64_t image_size;  /* IMAGE's exact virtual size (the overlay's is rounded up to 512 bytes) */
} Overlay;

/* Creates or checks the overlay (overlay == NULL: a temporary one for --snapshot) and points opts at it:
 * the top is opened read-write with IMAGE as its backing file. Returns 0 or the exit code (printed). */
int overlay_prepare(Overlay *ov, const char *image, const char *overlay, BlockOpenOpts *opts);
/* --snapshot: unlinks the temporary overlay and its directory once the chain has them open, so nothing
 * stays in $TMPDIR even after a kill -9 (no-op for --overlay). */
void overlay_unlink_temp(Overlay *ov);
/* Removes a temporary overlay and frees ov. */
void overlay_cleanup(Overlay *ov);

/* ---------------------------------------------------------------- commands.c */

int cmd_info(int argc, char **argv);
int cmd_map(int argc, char **argv);
int cmd_create(int argc, char **argv);
int cmd_snapshot(int argc, char **argv);
int cmd_hash(int argc, char **argv);
int cmd_verify(int argc, char **argv);

/* ---------------------------------------------------------------- convert.c */

int cmd_convert(int argc, char **argv);
int cmd_resize(int argc, char **argv);

/* ---------------------------------------------------------------- jobs.c */

int cmd_commit(int argc, char **argv);
int cmd_stream(int argc, char **argv);
int cmd_rebase(int argc, char **argv);
int cmd_amend(int argc, char **argv);
/* live.c: the live-job service of a daemon mounting bs (IMAGE) --rw (0 or -errno), stopped before bs closes;
 * the "job" member of stats.json; the command's side: -1 when no daemon of this user serves IMAGE, else
 * the exit code of the job the daemon ran. */
int live_start(BlockNode *bs, const char *image);
void live_stop(void);
void live_render_job(StrBuf *sb);
int live_client(const char *cmd, const char *image, const char *base, bool keep, bool progress, bool quiet);

/* ---------------------------------------------------------------- progress.c */

typedef struct Progress {
    bool on;                  /* -p, or standard error is a terminal; never with -q */
    bool tty;                 /* redraw one line; else a line every few seconds */
    const char *name;         /* the image, when several are hashed; else NULL */
    const char *cmd;          /* the command the lines name: NULL = "hash" */
    int64_t total;
    uint64_t last_ns;
} Progress;
/* Shows progress (done of p->total bytes) if p->on, at most five times a second on a terminal. */
void progress_show(Progress *p, int64_t done);
/* "8.0 EiB", "1.5 GiB", "512 bytes": v rounded, in buf. */
const char *approx_size(uint64_t v, char *buf, size_t len);

/* ---------------------------------------------------------------- check.c */

int cmd_check(int argc, char **argv);   /* exit 0 clean, 1 failed, 2 corruptions, 3 leaks, 63 no checker */
int cmd_compare(int argc, char **argv); /* exit 0 identical, 1 different, 2 error */

/* ---------------------------------------------------------------- cli.c */

struct option;
/* getopt_long that takes a long option only when spelled out in full: an abbreviation (`--r` for `--rw`)
 * returns '?' with argv[optind - 1] naming it, as an unknown option does. */
int cli_getopt(int argc, char **argv, const char *shortopts, const struct option *longopts, int *longidx);
/* A cli_getopt failure (c is ':' for a missing argument, else the option is unknown, "for 'CMD'" when cmd
 * is given): prints the one-line error naming the option, with "did you mean --X?" when one of longopts
 * is near, and returns EXIT_USAGE. */
int cli_option_error(char **argv, int c, const char *cmd, const struct option *longopts);
/* True (error printed) if image is a URL of a network protocol (nbd://, http://, rbd:, ...) that no protocol
 * driver serves (bdrv_find_protocol) and no local file of that name exists. */
bool cli_url_error(const char *image);
/* The long options of the protocol drivers (--timeout, --cacert, --s3-endpoint), as given (NULL: not). */
typedef struct CliNetOpts {
    const char *timeout, *cacert, *s3_endpoint;
    char items[3][PATH_MAX + 32];   /* the "DRIVER.KEY=VALUE" strings added to the open options */
} CliNetOpts;
/* Adds the options of n to o as options of the protocol driver that opens image (or the --backing URL of
 * o; --timeout alone: nbd when neither is a URL). -1 to go on, else EXIT_USAGE with the error printed. */
int cli_net_apply(CliNetOpts *n, BlockOpenOpts *o, const char *image);
/* True (error printed, with "did you mean --backing-dir?") if the --backing FILE given is a directory. */
bool backing_is_a_dir(const char *backing);
/* Prints `imgfuse CMD --help` (options a line each, an example); returns the exit code. */
int cli_print_help(const char *cmd);

/* ---------------------------------------------------------------- unmount.c */

/* The ioctl on a mount's root that the daemon answers with its pid (a uint64_t). */
#define IMGFUSE_IOC_PID _IOR('i', 0x70, uint64_t)
int cmd_unmount(int argc, char **argv);

/* ---------------------------------------------------------------- secret.c */

/* The key of an encrypted image into o->secret (locked memory, wiped at exit): --key-file FILE, whole;
 * --passphrase-fd N, its first line. 0, or EXIT_USAGE with the error printed. */
int secret_from_file(BlockOpenOpts *o, const char *path);
int secret_from_fd(BlockOpenOpts *o, const char *arg);
/* BlockOpenOpts.ask_secret for a terminal: a no-echo prompt on /dev/tty naming filename. */
int secret_ask_tty(const char *filename, uint8_t *buf, size_t size);
/* The same, keeping a copy of what was typed; secret_use_kept then puts it into o (false: none kept). For
 * the mount, which asks before it detaches from the terminal and opens the image again in the daemon. */
int secret_ask_and_keep(const char *filename, uint8_t *buf, size_t size);
bool secret_use_kept(BlockOpenOpts *o);
/* The passphrase of a new image, asked twice on the terminal (`imgfuse create`) into o->secret; 0, or
 * EXIT_USAGE with the error printed (the two differ, no terminal). */
int secret_prompt_new(BlockOpenOpts *o, const char *filename);
/* The key options every command that opens encrypted images takes, in its getopt table: --key-file FILE,
 * --passphrase-fd N and qemu-img's --object secret,id=ID,file=FILE|data=STRING. secret_option handles c
 * if it is one of them (0, or EXIT_USAGE printed; -1: not a key option); after the options,
 * secret_options_done makes the one secret no -o key-secret=ID named the images' key and, on a terminal
 * without a key, lets the open ask once (0, or EXIT_USAGE printed). secret_from_object puts the secret ID
 * into o (a new image's key). */
enum { SECRET_OPT_KEY_FILE = 0x5300, SECRET_OPT_PASSPHRASE_FD, SECRET_OPT_OBJECT };
#define SECRET_LONG_OPTIONS                                                                                   \
    { "key-file", required_argument, NULL, SECRET_OPT_KEY_FILE },                                             \
    { "passphrase-fd", required_argument, NULL, SECRET_OPT_PASSPHRASE_FD },                                   \
    { "object", required_argument, NULL, SECRET_OPT_OBJECT }
int secret_option(BlockOpenOpts *o, int c, const char *arg);
int secret_options_done(BlockOpenOpts *o);
/* The same without the prompt (the mount asks before it detaches; info/map/hash set their own). */
int secret_objects_done(BlockOpenOpts *o);
int secret_from_object(BlockOpenOpts *o, const char *id);
/* qemu-img's -o key-secret=ID / encrypt.key-secret=ID taken out of a new image's options: the secret ID
 * into o, the other options into *rest (malloc'd; NULL if none). 0, or EXIT_USAGE printed. */
int secret_take_key_secret(BlockOpenOpts *o, const char *options, char **rest);
/* Whether a new image of fmt with these creation options is encrypted, so that it needs a key (commands.c). */
bool create_wants_key(const char *fmt, const char *options);

/* ---------------------------------------------------------------- main.c helpers */

/* Prints "imgfuse: WHAT: reason" (one line) on stderr. */
void errmsg(const char *what, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
/* Prints the open/create error as one line and returns the exit code for it. */
int report_error(const Error *err, const char *fallback_what, int code);

#endif
