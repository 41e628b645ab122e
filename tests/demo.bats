#!/usr/bin/env bats
# SPDX-License-Identifier: MIT
# demo.bats - `make demo` installs only what the demo needs (`scripts/install-deps --demo`: the build
# dependencies, fuse3, util-linux and hexdump's bsdextrautils, none of the test tools), and
# scripts/demo makes its sample with imgfuse alone: with qemu-img and qemu-io shadowed by stubs that
# fail it still shows the two-layer chain, the snapshot and the three marks in the hexdump.

load helpers

setup() { setup_tmp; SRC=$(cd "$BATS_TEST_DIRNAME/.." && pwd); }
teardown() { teardown_tmp; }

@test "make demo runs install-deps --demo, which lists the build dependencies and no test tool" {
  run make -n -C "$SRC" demo
  echo "$output"
  grep -qx 'scripts/install-deps --demo' <<<"$output"
  ! grep -qx 'scripts/install-deps' <<<"$output" || false
  run "$SRC/scripts/install-deps" --demo --list
  echo "$output"
  for p in build-essential pkg-config libfuse3-dev fuse3 zlib1g-dev libzstd-dev libdeflate-dev libaio-dev libssl-dev bsdextrautils; do
    grep -qx "$p" <<<"$output"
  done
  for p in qemu-utils bats fio clang qemu-system-x86 strace libvhdi-utils e2fsprogs; do
    ! grep -qx "$p" <<<"$output" || false
  done
  # the full set still has them
  "$SRC/scripts/install-deps" --list | grep -qx qemu-utils
}

@test "scripts/demo makes its sample with imgfuse alone (qemu-img and qemu-io are never run)" {
  mkdir "$TMP/stubs"
  for t in qemu-img qemu-io qemu-nbd; do
    printf '#!/bin/sh\necho called >> "%s/stub-called"\nexit 1\n' "$TMP" > "$TMP/stubs/$t"
    chmod +x "$TMP/stubs/$t"
  done
  PATH=$TMP/stubs:$PATH TMPDIR=$TMP run timeout 120 "$SRC/scripts/demo"
  echo "$output"
  [ "$status" -eq 0 ]
  [ ! -e "$TMP/stub-called" ]
  grep -q '^00000000  48 65 6c 6c 6f 20 66 72  6f 6d 20 69 6d 67 66 75  |Hello from imgfu|' <<<"$output"
  grep -q '^00100000  ab ab ab ab ab ab ab ab  ab ab ab ab ab ab ab ab' <<<"$output"
  grep -q '^00110000  00 00 00 00' <<<"$output"
  grep -q '^00fffe00  45 4e 44 20 4f 46 20 44' <<<"$output"
  grep -q 'before-write' <<<"$output"
  grep -q '1-sample-base.qcow2' <<<"$output"
  grep -q '^done: the sample was mounted read-only, shown and unmounted' <<<"$output"
  [ -z "$(ls "$TMP" | grep imgfuse-demo)" ]       # its work directory is gone
  nothing_mounted
}
