/* SPDX-License-Identifier: MIT */
/*
 * progress.c - the progress line of the long commands (hash, verify, convert, ...): a bar redrawn in place
 * on a terminal, a plain line every few seconds when standard error is not one, nothing when off; and
 * sizes of any magnitude rounded for humans.
 */
#include <inttypes.h>
#include <stdio.h>

#include "imgfuse.h"
#include "util.h"

/* "8.0 EiB", "1.5 GiB", "512 bytes": sizes of any magnitude, rounded, for progress and messages. */
const char *approx_size(uint64_t v, char *buf, size_t len)
{
    static const char *const units[] = { "KiB", "MiB", "GiB", "TiB", "PiB", "EiB" };
    if (v < 1024) {
        snprintf(buf, len, "%" PRIu64 " bytes", v);
        return buf;
    }
    double x = (double)v;
    size_t u = 0;
    for (x /= 1024; x >= 1024 && u + 1 < ARRAY_SIZE(units); u++)
        x /= 1024;
    snprintf(buf, len, "%.1f %s", x, units[u]);
    return buf;
}

void progress_show(Progress *p, int64_t done)
{
    if (!p->on)
        return;
    uint64_t now = now_ns();
    if (done < p->total && now - p->last_ns < (p->tty ? 200000000ULL : 2000000000ULL))
        return;
    p->last_ns = now;
    int pct = p->total ? (int)((double)done * 100 / (double)p->total) : 100;
    char a[32], b[32];
    approx_size((uint64_t)done, a, sizeof a);
    approx_size((uint64_t)p->total, b, sizeof b);
    const char *name = p->name ? p->name : "", *sep = p->name ? ": " : "";
    if (!p->tty) {
        fprintf(stderr, "imgfuse: %s: %s%s%3d%% (%s of %s)\n", p->cmd ? p->cmd : "hash", name, sep, pct, a, b);
        return;
    }
    char bar[41];
    int fill = pct * 40 / 100;
    for (int i = 0; i < 40; i++)
        bar[i] = i < fill ? '#' : '.';
    bar[40] = '\0';
    fprintf(stderr, "\r%s%s[%s] %3d%% (%s of %s)\033[K", name, sep, bar, pct, a, b);
    fflush(stderr);
}
