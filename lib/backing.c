/* SPDX-License-Identifier: MIT */
/*
 * backing.c - the backing-name policy, the one place it lives (bdrv_resolve_backing).  An image header is
 * untrusted input: by default a backing name is followed only to a regular file inside the directory of
 * the image naming it (or below), or inside a --backing-dir; an absolute name outside them is looked up
 * by its base name there; device nodes, /proc, /sys, json: and protocol-style names are refused.
 * --unsafe-backing restores plain path resolution.  A remote location (a URL) written inside an image is
 * refused unless --unsafe-backing (a hostile image must not make the tool call out); a relative name inside
 * an image opened from a URL resolves on the same server (bdrv_resolve_backing).  For images that name their parent by identity only, it
 * lists the candidate files of those directories (bdrv_backing_search_list); each candidate still passes
 * bdrv_resolve_backing.  It knows nothing about formats or nodes.
 */
#include "block_int.h"
#include "util.h"

#include <ctype.h>
#include <dirent.h>
#include <errno.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/stat.h>

#define HINT "use --backing-dir DIR or --backing FILE (or --unsafe-backing)"

/* "nbd:", "http://", "json:{...}", "file:x": anything that looks like a QEMU protocol prefix. */
static bool is_protocol_style(const char *name)
{
    if (strncmp(name, "json:", 5) == 0 || strstr(name, "://"))
        return true;
    const char *colon = strchr(name, ':');
    const char *slash = strchr(name, '/');
    if (!colon || (slash && slash < colon) || colon == name)
        return false;
    for (const char *p = name; p < colon; p++)
        if (!isalnum((unsigned char)*p) && *p != '+' && *p != '-' && *p != '_' && *p != '.')
            return false;
    return true;
}

static bool path_inside(const char *real, const char *dir)
{
    size_t n = strlen(dir);
    if (strcmp(dir, "/") == 0)
        return real[0] == '/';
    return strncmp(real, dir, n) == 0 && real[n] == '/';
}

static bool is_system_path(const char *real)
{
    return path_inside(real, "/proc") || path_inside(real, "/sys") || path_inside(real, "/dev") ||
           strcmp(real, "/proc") == 0 || strcmp(real, "/sys") == 0 || strcmp(real, "/dev") == 0;
}

typedef struct AllowedDirs {
    char real[MAX_BACKING_DIRS + 1][PATH_MAX];
    int n;
} AllowedDirs;

static void allowed_dirs_init(AllowedDirs *a, const char *image_dir, const BlockOpenOpts *opts)
{
    a->n = 0;
    if (realpath(image_dir, a->real[a->n]))
        a->n++;
    for (int i = 0; opts && i < opts->n_backing_dirs && i < MAX_BACKING_DIRS; i++)
        if (opts->backing_dirs[i] && realpath(opts->backing_dirs[i], a->real[a->n]))
            a->n++;
}

/* Index of the allowed dir that holds real, or -1. */
static int allowed_index(const AllowedDirs *a, const char *real)
{
    for (int i = 0; i < a->n; i++)
        if (path_inside(real, a->real[i]))
            return i;
    return -1;
}

/* Looks base up in each allowed dir; on success writes the real path into out. */
static int find_by_base_name(const AllowedDirs *a, const char *base, char *out, size_t outlen, int *which)
{
    char cand[PATH_MAX + 256], real[PATH_MAX];
    for (int i = 0; i < a->n; i++) {
        snprintf(cand, sizeof(cand), "%s/%s", a->real[i], base);
        struct stat st;
        if (!realpath(cand, real) || stat(real, &st) != 0 || !S_ISREG(st.st_mode))
            continue;
        if (allowed_index(a, real) < 0)
            continue;
        snprintf(out, outlen, "%s", real);
        *which = i;
        return 0;
    }
    return -ENOENT;
}

static int refuse(Error *err, const char *image, const char *name, const char *rule)
{
    error_set(err, EACCES, "%s: backing file '%s' refused: %s; " HINT, image, name, rule);
    return -EACCES;
}

static int not_found(Error *err, const char *image, const char *name, const char *looked)
{
    error_set(err, ENOENT, "%s: backing file '%s' not found (looked for %s); use --backing FILE to name it",
              image, name, looked);
    return -ENOENT;
}

/* A remote image's relative (or absolute) backing name, on the same protocol and server: the image's URL with
 * its path's last part (or its whole path) replaced, its query kept. A name that could change the server,
 * the query or the socket ('?', '#', control characters) is refused. */
static int resolve_remote(const char *image_url, const char *name, char *out, size_t outlen, char *note,
                          size_t notelen, Error *err)
{
    for (const char *p = name; *p; p++)
        if (*p == '?' || *p == '#' || (unsigned char)*p < 0x20 || *p == 0x7f)
            return refuse(err, image_url, name, "a remote image's backing name may not hold '?', '#' or control "
                          "characters");
    const char *auth = image_url + bdrv_url_scheme_len(image_url) + 3;
    const char *path = auth + strcspn(auth, "/?#");
    const char *query = path + strcspn(path, "?#");
    const char *last = NULL; /* the path's last '/' */
    for (const char *p = path; p < query; p++)
        if (*p == '/')
            last = p;
    bool whole = name[0] == '/' || !last;
    int keep = whole ? (int)(path - image_url) : (int)(last - image_url) + 1;
    const char *sep = whole && name[0] != '/' ? "/" : "";
    int n = snprintf(out, outlen, "%.*s%s%s%s", keep, image_url, sep, name, query);
    if (n < 0 || (size_t)n >= outlen)
        return refuse(err, image_url, name, "the name is too long");
    snprintf(note, notelen, "on the image's server");
    return 0;
}

/* A bare-scheme image's backing name (rbd:POOL/IMAGE[@SNAP]:OPTS): a name without '/' is another image of the
 * same pool (namespace kept), with '/' a POOL/IMAGE of the same cluster; the image's options (conf, id,
 * keyring, key) are kept. A name that could change them (':', '\\', control characters) is refused. */
static int resolve_bare(const char *image_url, const char *name, char *out, size_t outlen, char *note,
                        size_t notelen, Error *err)
{
    for (const char *p = name; *p; p++)
        if (*p == ':' || *p == '\\' || (unsigned char)*p < 0x20 || *p == 0x7f)
            return refuse(err, image_url, name, "a remote image's backing name may not hold ':', '\\' or control "
                          "characters");
    const char *spec = strchr(image_url, ':') + 1, *opts = spec;
    while (*opts && *opts != ':')
        opts += *opts == '\\' && opts[1] ? 2 : 1;
    const char *last = NULL;
    for (const char *p = spec; p < opts && *p != '@'; p += *p == '\\' && p[1] ? 2 : 1)
        if (*p == '/')
            last = p;
    while (name[0] == '/')
        name++;
    int keep = strchr(name, '/') || !last ? (int)(spec - image_url) : (int)(last + 1 - image_url);
    int n = snprintf(out, outlen, "%.*s%s%s", keep, image_url, name, opts);
    if (!name[0] || n < 0 || (size_t)n >= outlen)
        return refuse(err, image_url, name, "the name is empty or too long");
    snprintf(note, notelen, "on the image's cluster");
    return 0;
}

static int resolve_unsafe(const char *image_path, const char *name, char *out, size_t outlen, char *note,
                          size_t notelen, Error *err)
{
    path_beside(image_path, name, out, outlen);
    struct stat st;
    if (stat(out, &st) != 0)
        return not_found(err, image_path, name, out);
    snprintf(note, notelen, "plain path resolution (--unsafe-backing)");
    return 0;
}

const char *bdrv_named_file_refusal(BlockNode *bs, const BlockOpenOpts *opts, const char *path)
{
    for (BlockNode *n = bs->file; n; n = n->file)
        if (n->drv->is_protocol) {
            if (strcmp(n->drv->name, "memory") == 0)
                return "an in-memory image may not open files";
            break;
        }
    if (opts && opts->unsafe_backing)
        return NULL;
    if (bdrv_url_scheme_len(path) || bdrv_url_is_bare(path) || bdrv_find_protocol(bs->filename))
        return "a remote location named inside an image is never followed";
    char real[PATH_MAX], dir[PATH_MAX];
    if (!realpath(path, real))
        return NULL; /* does not exist: the caller's open reports it */
    if (is_system_path(real))
        return "only regular files are followed (no devices, /proc, /sys)";
    path_dir_of(bs->filename, dir, sizeof(dir));
    AllowedDirs *a = malloc(sizeof(*a));
    if (!a)
        return "out of memory";
    allowed_dirs_init(a, dir, opts);
    bool inside = allowed_index(a, real) >= 0;
    free(a);
    return inside ? NULL : "it lies outside the image's directory and the --backing-dir directories";
}

int bdrv_resolve_backing(const char *image_path, const char *name, const BlockOpenOpts *opts,
                         char *out, size_t outlen, char *note, size_t notelen, Error *err)
{
    if (notelen)
        note[0] = '\0';
    if (!name || !name[0]) {
        error_set(err, EINVAL, "%s: empty backing file name", image_path);
        return -EINVAL;
    }
    if (bdrv_url_scheme_len(name) || bdrv_url_is_bare(name)) {
        if (!(opts && opts->unsafe_backing))
            return refuse(err, image_path, name, "a remote location named inside an image is never followed");
        if (!bdrv_find_protocol(name))
            return refuse(err, image_path, name, "no driver serves that protocol");
        snprintf(out, outlen, "%s", name);
        snprintf(note, notelen, "a remote location (--unsafe-backing)");
        return 0;
    }
    if (bdrv_url_is_bare(image_path))
        return resolve_bare(image_path, name, out, outlen, note, notelen, err);
    if (bdrv_find_protocol(image_path))
        return resolve_remote(image_path, name, out, outlen, note, notelen, err);
    if (opts && opts->unsafe_backing)
        return resolve_unsafe(image_path, name, out, outlen, note, notelen, err);
    if (is_protocol_style(name))
        return refuse(err, image_path, name, "json: and protocol-style names are never followed");

    char dir[PATH_MAX], cand[2 * PATH_MAX], real[PATH_MAX];
    path_dir_of(image_path, dir, sizeof(dir));
    AllowedDirs *a = malloc(sizeof(*a));
    if (!a)
        return -ENOMEM;
    allowed_dirs_init(a, dir, opts);
    path_beside(image_path, name, cand, sizeof(cand));

    int r = 0, which = -1;
    const char *base = strrchr(name, '/') ? strrchr(name, '/') + 1 : name;
    if (realpath(cand, real)) {
        struct stat st;
        if (is_system_path(real) || stat(real, &st) != 0 || !S_ISREG(st.st_mode)) {
            r = refuse(err, image_path, name, "only regular files are followed (no devices, /proc, /sys)");
        } else if (allowed_index(a, real) >= 0) {
            snprintf(out, outlen, "%s", real);
        } else if (name[0] != '/') {
            r = refuse(err, image_path, name,
                       "it resolves outside the image's directory and the --backing-dir directories");
        } else if (find_by_base_name(a, base, out, outlen, &which) == 0) {
            snprintf(note, notelen, "absolute name outside the allowed directories; found by base name in %s",
                     a->real[which]);
        } else {
            r = refuse(err, image_path, name,
                       "an absolute name outside the image's directory is only looked up by base name "
                       "there and in --backing-dir directories, and it is not there");
        }
    } else if (base[0] && find_by_base_name(a, base, out, outlen, &which) == 0 && which > 0) {
        snprintf(note, notelen, "not at %s; found by base name in --backing-dir %s", cand, a->real[which]);
    } else if (name[0] == '/' && base[0] && find_by_base_name(a, base, out, outlen, &which) == 0) {
        snprintf(note, notelen, "absolute name not found; found by base name in %s", a->real[which]);
    } else {
        char looked[2 * PATH_MAX + 64];
        snprintf(looked, sizeof(looked), "%s%s", cand,
                 a->n > 1 ? " and by base name in the --backing-dir directories" : "");
        r = not_found(err, image_path, name, looked);
    }
    free(a);
    return r;
}

/* ---------------------------------------------------------------- candidates of a search by identity */

static bool has_suffix_nocase(const char *name, const char *suffix)
{
    size_t n = strlen(name), k = strlen(suffix);
    return n > k && strcasecmp(name + n - k, suffix) == 0;
}

static int cmp_str(const void *a, const void *b)
{
    return strcmp(*(char *const *)a, *(char *const *)b);
}

/* Appends the matching names of dir (sorted) to list; *more when the cap was reached. */
static int list_dir(const char *dir, const char *suffix, char **list, int *n, bool *more)
{
    DIR *d = opendir(dir);
    if (!d)
        return 0; /* an unreadable directory holds no candidate */
    int first = *n, r = 0;
    struct dirent *e;
    while (r == 0 && (e = readdir(d))) {
        if (!has_suffix_nocase(e->d_name, suffix))
            continue;
        if (*n >= BDRV_MAX_IDENTITY_CANDIDATES) {
            *more = true;
            break;
        }
        size_t len = strlen(dir) + strlen(e->d_name) + 2;
        if (!(list[*n] = malloc(len)))
            r = -ENOMEM;
        else
            snprintf(list[(*n)++], len, "%s/%s", dir, e->d_name);
    }
    closedir(d);
    qsort(list + first, (size_t)(*n - first), sizeof(*list), cmp_str);
    return r;
}

void bdrv_backing_search_free(char **list, int n)
{
    for (int i = 0; list && i < n; i++)
        free(list[i]);
    free(list);
}

int bdrv_backing_search_list(const char *image_path, const char *suffix, const BlockOpenOpts *opts, char ***list,
                             int *n, bool *more)
{
    *list = NULL;
    *n = 0;
    *more = false;
    char dir[PATH_MAX];
    path_dir_of(image_path, dir, sizeof(dir));
    AllowedDirs *a = malloc(sizeof(*a));
    char **l = calloc(BDRV_MAX_IDENTITY_CANDIDATES, sizeof(*l));
    if (!a || !l) {
        free(a);
        free(l);
        return -ENOMEM;
    }
    allowed_dirs_init(a, dir, opts);
    int r = 0;
    for (int i = 0; r == 0 && i < a->n && !*more; i++) {
        bool dup = false;
        for (int j = 0; j < i; j++)
            dup = dup || strcmp(a->real[i], a->real[j]) == 0;
        if (!dup)
            r = list_dir(a->real[i], suffix, l, n, more);
    }
    free(a);
    if (r < 0) {
        bdrv_backing_search_free(l, *n);
        *n = 0;
        return r;
    }
    *list = l;
    return 0;
}
