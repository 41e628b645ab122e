/* SPDX-License-Identifier: MIT */
/*
 * tap.h - a tiny TAP producer for the C unit tests: ok()/is() print "ok N - name" or "not ok N - name",
 * done_testing() prints the plan and returns the exit status.  No framework, no allocation.
 */
#ifndef IMGFUSE_TAP_H
#define IMGFUSE_TAP_H
#include <stdio.h>
#include <inttypes.h>
static int tap_n, tap_failed;
#define ok(cond, ...) do { tap_n++; int c_ = !!(cond); if (!c_) tap_failed++; \
    printf("%sok %d - ", c_ ? "" : "not ", tap_n); printf(__VA_ARGS__); printf("\n"); \
    if (!c_) printf("#   failed at %s:%d\n", __FILE__, __LINE__); } while (0)
#define is_int(got, want, ...) do { long long g_ = (long long)(got), w_ = (long long)(want); \
    ok(g_ == w_, __VA_ARGS__); if (g_ != w_) printf("#   got %lld, want %lld\n", g_, w_); } while (0)
static inline int done_testing(void) { printf("1..%d\n", tap_n); return tap_failed ? 1 : 0; }
#endif
