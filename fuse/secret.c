/* SPDX-License-Identifier: MIT */
/*
 * secret.c - the key of an encrypted image as the user gives it: --key-file FILE (its whole content, as
 * cryptsetup's --key-file reads it), --passphrase-fd N (the first line read from descriptor N, newline
 * excluded) or a no-echo prompt on the terminal (asked twice for a new image's, `imgfuse create`).  The
 * bytes live in one locked page range left out of core dumps (MADV_DONTDUMP) and wiped at exit; they go
 * into BlockOpenOpts.secret (CreateOpts.secret), never into the driver options, the mount summary or any
 * log.  qemu-img's spelling is taken too: --object secret,id=ID,file=FILE (or data=STRING), named by
 * -o key-secret=ID / encrypt.key-secret=ID for a new image; secret_option is the one parser every command
 * that takes keys calls.  It knows no image format.
 */
#include "imgfuse.h"

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <termios.h>
#include <unistd.h>

#define SECRET_FILE_MAX (8 << 20)   /* cryptsetup's default key file limit */
#define SECRET_LINE_MAX (64 << 10)

/* Up to SECRET_SLOTS keys at once (convert: its sources' and its target's; --object secrets), each in
 * its own locked, undumpable mapping, owned by the options (or object) it is for. */
#define SECRET_SLOTS 8
static struct {
    const void *owner;
    uint8_t *buf;
    size_t cap, len;
} slots[SECRET_SLOTS];

static void secret_wipe_slot(int i)
{
    if (!slots[i].buf)
        return;
    explicit_bzero(slots[i].buf, slots[i].cap);
    munlock(slots[i].buf, slots[i].cap);
    munmap(slots[i].buf, slots[i].cap);
    slots[i].buf = NULL;
    slots[i].owner = NULL;
}

static void secret_wipe(void)
{
    for (int i = 0; i < SECRET_SLOTS; i++)
        secret_wipe_slot(i);
}

/* A locked, undumpable buffer of cap bytes for owner (a second key of the same owner replaces the first);
 * NULL when out of memory or slots. */
static uint8_t *secret_alloc(const void *owner, size_t cap)
{
    int i, free_slot = -1;
    for (i = 0; i < SECRET_SLOTS && slots[i].owner != owner; i++)
        if (!slots[i].buf && free_slot < 0)
            free_slot = i;
    if (i == SECRET_SLOTS)
        i = free_slot;
    if (i < 0)
        return NULL;
    secret_wipe_slot(i);
    void *p = mmap(NULL, cap, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (p == MAP_FAILED)
        return NULL;
    (void)madvise(p, cap, MADV_DONTDUMP);
    (void)mlock(p, cap);
    static bool registered;
    if (!registered)
        registered = atexit(secret_wipe) == 0;
    slots[i].owner = owner;
    slots[i].buf = p;
    slots[i].cap = cap;
    slots[i].len = 0;
    return p;
}

/* The slot of owner, or -1. */
static int secret_slot_of(const void *owner)
{
    for (int i = 0; i < SECRET_SLOTS; i++)
        if (slots[i].buf && slots[i].owner == owner)
            return i;
    return -1;
}

/* Reads fd into the secret buffer: until EOF (whole) or the first newline (line); 0 or an exit code. */
static int secret_read(BlockOpenOpts *o, int fd, const char *what, bool line, size_t max)
{
    uint8_t *buf = secret_alloc(o, max + 1);
    if (!buf) {
        errmsg(what, "out of memory for the key");
        return EXIT_USAGE;
    }
    size_t n = 0;
    for (;;) {
        ssize_t r = read(fd, buf + n, line ? 1 : max + 1 - n);
        if (r < 0 && errno == EINTR)
            continue;
        if (r < 0) {
            errmsg(what, "cannot read the key: %s", strerror(errno));
            return EXIT_USAGE;
        }
        if (r == 0 || (line && buf[n] == '\n'))
            break;
        n += (size_t)r;
        if (n > max) {
            errmsg(what, "the key is longer than %zu bytes", max);
            return EXIT_USAGE;
        }
    }
    o->secret = buf;
    o->secret_len = n;
    return 0;
}

int secret_from_file(BlockOpenOpts *o, const char *path)
{
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) {
        errmsg(path, "cannot open the key file: %s", strerror(errno));
        return EXIT_USAGE;
    }
    int r = secret_read(o, fd, path, false, SECRET_FILE_MAX);
    close(fd);
    return r;
}

int secret_from_fd(BlockOpenOpts *o, const char *arg)
{
    char *end;
    long fd = strtol(arg, &end, 10);
    if (!*arg || *end || fd < 0 || fd > 1 << 20 || fcntl((int)fd, F_GETFD) < 0) {
        errmsg("--passphrase-fd", "'%s' is not an open file descriptor", arg);
        return EXIT_USAGE;
    }
    return secret_read(o, (int)fd, "--passphrase-fd", true, SECRET_LINE_MAX);
}

int secret_ask_tty(const char *filename, uint8_t *buf, size_t size)
{
    int fd = open("/dev/tty", O_RDWR | O_CLOEXEC | O_NOCTTY);
    if (fd < 0)
        return -errno;
    struct termios old, quiet;
    bool echo_off = tcgetattr(fd, &old) == 0;
    if (echo_off) {
        quiet = old;
        quiet.c_lflag &= ~(tcflag_t)(ECHO | ECHONL);
        quiet.c_lflag |= ICANON;
        echo_off = tcsetattr(fd, TCSAFLUSH, &quiet) == 0;
    }
    dprintf(fd, "Passphrase for %s: ", filename);
    size_t n = 0;
    int r = 0;
    char c;
    while ((r = (int)read(fd, &c, 1)) == 1 && c != '\n' && n < size)
        buf[n++] = (uint8_t)c;
    dprintf(fd, "\n");
    if (echo_off)
        tcsetattr(fd, TCSAFLUSH, &old);
    close(fd);
    return r < 0 ? -EIO : (int)n;
}

static const char secret_kept_owner[] = "kept";

int secret_ask_and_keep(const char *filename, uint8_t *buf, size_t size)
{
    int k = secret_slot_of(secret_kept_owner);
    if (k >= 0 && slots[k].len <= size) { /* asked once already: the chain's next image, the next open */
        memcpy(buf, slots[k].buf, slots[k].len);
        return (int)slots[k].len;
    }
    int n = secret_ask_tty(filename, buf, size);
    if (n < 0)
        return n;
    uint8_t *kept = secret_alloc(secret_kept_owner, (size_t)n + 1);
    if (!kept)
        return -ENOMEM;
    memcpy(kept, buf, (size_t)n);
    kept[n] = 0;
    slots[secret_slot_of(secret_kept_owner)].len = (size_t)n;
    return n;
}

bool secret_use_kept(BlockOpenOpts *o)
{
    int k = secret_slot_of(secret_kept_owner);
    if (k < 0)
        return false;
    o->secret = slots[k].buf;
    o->secret_len = slots[k].len;
    return true;
}

int secret_prompt_new(BlockOpenOpts *o, const char *filename)
{
    uint8_t *first = secret_alloc(o, SECRET_LINE_MAX + 1), *again = NULL;
    int n = first ? secret_ask_tty(filename, first, SECRET_LINE_MAX) : -ENOMEM, m = -1;
    if (n >= 0 && (again = mmap(NULL, SECRET_LINE_MAX, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1,
                                0)) != MAP_FAILED) {
        (void)madvise(again, SECRET_LINE_MAX, MADV_DONTDUMP);
        (void)mlock(again, SECRET_LINE_MAX);
        char again_name[PATH_MAX + 16];
        snprintf(again_name, sizeof again_name, "%s (again)", filename);
        m = secret_ask_tty(again_name, again, SECRET_LINE_MAX);
        bool same = m == n && memcmp(first, again, (size_t)n) == 0;
        explicit_bzero(again, SECRET_LINE_MAX);
        munmap(again, SECRET_LINE_MAX);
        if (!same) {
            errmsg(filename, "the passphrases do not match");
            return EXIT_USAGE;
        }
    }
    if (n < 0 || m < 0) {
        errmsg(filename, "cannot read a passphrase from the terminal");
        return EXIT_USAGE;
    }
    o->secret = first;
    o->secret_len = (size_t)n;
    return 0;
}

/* ---------------------------------------------------------------- --object secret (qemu-img's spelling) */

#define SECRET_OBJECTS 4
#define SECRET_ID_MAX 64

typedef struct SecretObject {
    char id[SECRET_ID_MAX];
    BlockOpenOpts key;   /* only its secret: the object's bytes */
    bool named;          /* taken by -o key-secret=ID (a new image's key), not the images' key */
} SecretObject;
static SecretObject objects[SECRET_OBJECTS];
static int n_objects;

/* The next comma-separated item of *p into out (",," is a comma, as in QEMU's option syntax); false at
 * the end or when it does not fit. */
static bool object_item(const char **p, char *out, size_t size)
{
    size_t n = 0;
    const char *s = *p;
    if (!*s)
        return false;
    for (; *s && (*s != ',' || s[1] == ','); s++) {
        if (*s == ',')
            s++;
        if (n + 1 >= size)
            return false;
        out[n++] = *s;
    }
    out[n] = 0;
    *p = *s ? s + 1 : s;
    return true;
}

/* The bytes of data= into the object's locked buffer. */
static int object_data(BlockOpenOpts *key, const char *data)
{
    size_t n = strlen(data);
    uint8_t *buf = secret_alloc(key, n + 1);
    if (!buf) {
        errmsg("--object", "out of memory for the key");
        return EXIT_USAGE;
    }
    memcpy(buf, data, n);
    key->secret = buf;
    key->secret_len = n;
    return 0;
}

/* --object secret,id=ID,file=FILE|data=STRING[,format=raw]: kept under ID. 0, or EXIT_USAGE printed. */
static int secret_object(const char *arg)
{
    char item[PATH_MAX + 16];
    const char *p = arg;
    if (!object_item(&p, item, sizeof item) || (strcmp(item, "secret") != 0 && strcmp(item, "qom-type=secret") != 0)) {
        errmsg("--object", "only 'secret,id=ID,file=FILE' (or data=STRING) is supported");
        return EXIT_USAGE;
    }
    if (n_objects == SECRET_OBJECTS) {
        errmsg("--object", "more than %d secrets", SECRET_OBJECTS);
        return EXIT_USAGE;
    }
    SecretObject *obj = &objects[n_objects];
    block_open_opts_init(&obj->key);
    int rc = 0;
    while (rc == 0 && object_item(&p, item, sizeof item)) {
        char *eq = strchr(item, '=');
        const char *v = eq ? eq + 1 : "";
        if (eq)
            *eq = 0;
        if (strcmp(item, "id") == 0 && *v && strlen(v) < SECRET_ID_MAX)
            snprintf(obj->id, sizeof obj->id, "%s", v);
        else if (strcmp(item, "file") == 0 && !obj->key.secret)
            rc = secret_from_file(&obj->key, v);
        else if (strcmp(item, "data") == 0 && !obj->key.secret)
            rc = object_data(&obj->key, v);
        else if (!(strcmp(item, "format") == 0 && strcmp(v, "raw") == 0)) {
            errmsg("--object", "'%s%s%s' is not supported: a secret takes id=, file= or data= (format=raw)", item,
                   eq ? "=" : "", v);
            rc = EXIT_USAGE;
        }
    }
    if (rc == 0 && *p) {
        errmsg("--object", "an item is too long");
        rc = EXIT_USAGE;
    }
    if (rc == 0 && (!obj->id[0] || !obj->key.secret)) {
        errmsg("--object", "a secret needs id=ID and file=FILE or data=STRING");
        rc = EXIT_USAGE;
    }
    for (int i = 0; rc == 0 && i < n_objects; i++)
        if (strcmp(objects[i].id, obj->id) == 0) {
            errmsg("--object", "secret id '%s' given twice", obj->id);
            rc = EXIT_USAGE;
        }
    if (rc == 0)
        n_objects++;
    else
        memset(obj, 0, sizeof *obj);
    return rc;
}

int secret_from_object(BlockOpenOpts *o, const char *id)
{
    for (int i = 0; i < n_objects; i++)
        if (strcmp(objects[i].id, id) == 0) {
            objects[i].named = true;
            o->secret = objects[i].key.secret;
            o->secret_len = objects[i].key.secret_len;
            return 0;
        }
    errmsg(id, "no --object secret,id=%s was given", id);
    return EXIT_USAGE;
}

int secret_option(BlockOpenOpts *o, int c, const char *arg)
{
    switch (c) {
    case SECRET_OPT_KEY_FILE: return secret_from_file(o, arg);
    case SECRET_OPT_PASSPHRASE_FD: return secret_from_fd(o, arg);
    case SECRET_OPT_OBJECT: return secret_object(arg);
    default: return -1;
    }
}

int secret_objects_done(BlockOpenOpts *o)
{
    int unnamed = -1;
    for (int i = 0; i < n_objects; i++) {
        if (objects[i].named)
            continue;
        if (unnamed >= 0 || o->secret) {
            errmsg("--object", "more than one key for the images (one --key-file, --passphrase-fd or secret)");
            return EXIT_USAGE;
        }
        unnamed = i;
    }
    if (unnamed >= 0) {
        o->secret = objects[unnamed].key.secret;
        o->secret_len = objects[unnamed].key.secret_len;
    }
    return 0;
}

int secret_options_done(BlockOpenOpts *o)
{
    if (secret_objects_done(o) != 0)
        return EXIT_USAGE;
    if (!o->secret && isatty(STDIN_FILENO))
        o->ask_secret = secret_ask_and_keep; /* asked once, for every image of the chain and every open */
    return 0;
}

int secret_take_key_secret(BlockOpenOpts *o, const char *options, char **rest)
{
    *rest = NULL;
    if (!options)
        return 0;
    size_t n = strlen(options);
    char *copy = strdup(options), *out = malloc(n + 1);
    if (!copy || !out) {
        free(copy);
        free(out);
        errmsg("-o", "out of memory");
        return EXIT_USAGE;
    }
    size_t len = 0;
    int rc = 0;
    for (char *save = NULL, *tok = strtok_r(copy, ",", &save); rc == 0 && tok; tok = strtok_r(NULL, ",", &save)) {
        if (strncmp(tok, "key-secret=", 11) == 0 || strncmp(tok, "encrypt.key-secret=", 19) == 0) {
            rc = secret_from_object(o, strchr(tok, '=') + 1);
            continue;
        }
        len += (size_t)sprintf(out + len, "%s%s", len ? "," : "", tok);
    }
    free(copy);
    if (rc != 0 || !len) {
        free(out);
        return rc;
    }
    *rest = out;
    return 0;
}
