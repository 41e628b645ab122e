#!/usr/bin/env bats
# SPDX-License-Identifier: MIT
# deb.bats - the Debian package (slow: about a minute): scripts/build-deb builds it out of tree with
# dpkg-buildpackage, lintian finds no error in it, its dependencies are runtime libraries and fuse3,
# `dpkg -i` installs it, `mount -t fuse.imgfuse` then mounts through mount.fuse3 and the installed
# /usr/bin/imgfuse with disk.raw equal to qemu-img convert's output, and `dpkg -r` removes it again.
# The build tools come from `scripts/install-deps --deb`, which this suite runs itself.

load helpers

setup_file() {
  SRC=$(cd "$BATS_TEST_DIRNAME/.." && pwd)
  "$SRC/scripts/install-deps" --deb >/dev/null
  DEBDIR=$(mktemp -d /tmp/imgfuse-deb-test.XXXXXX)
  export SRC DEBDIR
  "$SRC/scripts/build-deb" "$DEBDIR" > "$DEBDIR/build.out" 2>&1 || { cat "$DEBDIR/build.out" >&2; return 1; }
}
teardown_file() {
  if [ -f "$DEBDIR/installed-by-test" ]; then
    grep -o " $DEBDIR[^ ]*" /proc/mounts | while read -r m; do umount -l "$m"; done
    dpkg -r imgfuse >/dev/null 2>&1 || true
  fi
  [ -n "${DEBDIR:-}" ] && rm -rf "$DEBDIR"
}

setup() { setup_tmp; DEB=$(ls "$DEBDIR"/imgfuse_*.deb); }
teardown() { teardown_tmp; }

# dpkg_retry ARGS...: dpkg, waited for while another engineer's apt or dpkg holds the lock.
dpkg_retry() {
  local i
  for i in $(seq 1 60); do
    dpkg "$@" 2>"$TMP/dpkg.err" && return 0
    grep -q 'lock' "$TMP/dpkg.err" || { cat "$TMP/dpkg.err" >&2; return 1; }
    sleep 2
  done
  cat "$TMP/dpkg.err" >&2; return 1
}

@test "deb: scripts/build-deb made one .deb and left nothing in the checkout" {
  [ -f "$DEB" ]
  [ "$(tail -1 "$DEBDIR/build.out")" = "$DEB" ]
  [ ! -e "$SRC/debian/imgfuse" ] && [ ! -e "$SRC/debian/files" ] && [ ! -e "$SRC/debian/.debhelper" ]
  ! (cd "$SRC" && git status --porcelain --ignored --untracked-files=all debian) | grep -E "^(\?\?|!!)"
}

@test "deb: lintian reports no error" {
  run lintian "$DEB"
  echo "$output"
  ! grep -q '^E: ' <<<"$output"
}

@test "deb: the files installed, and Depends are runtime libraries and fuse3 only" {
  run dpkg-deb -c "$DEB"
  [[ "$output" == *" ./usr/bin/imgfuse"* ]]
  [[ "$output" == *" ./usr/share/man/man1/imgfuse.1.gz"* ]]
  [[ "$output" == *" ./usr/share/bash-completion/completions/imgfuse"* ]]
  [[ "$output" == *" ./usr/share/doc/imgfuse/copyright"* ]]
  deps=$(dpkg-deb -f "$DEB" Depends)
  echo "Depends: $deps"
  [[ "$deps" == *libfuse3-3* && "$deps" == *fuse3* && "$deps" == *libc6* ]]
  ! grep -qE -- '-dev|pkg-config|debhelper|qemu|bats' <<<"$deps"
}

@test "deb: dpkg -i, mount -t fuse.imgfuse with the installed binary reads as qemu-img does, dpkg -r" {
  if dpkg-query -W -f='${Status}' imgfuse 2>/dev/null | grep -q 'install ok installed'; then
    echo "an imgfuse package is installed already; this test would replace and remove it" >&2
    false
  fi
  touch "$DEBDIR/installed-by-test"
  dpkg_retry -i "$DEB"
  [ "$(env -i /bin/sh -c 'command -v imgfuse')" = /usr/bin/imgfuse ]
  qemu-img create -q -f qcow2 "$TMP/d.qcow2" 8M
  qio "$TMP/d.qcow2" 'write -P 0x5a 1M 192k' 'write -P 0xa5 7M 4k'
  mount -t fuse.imgfuse "$TMP/d.qcow2" "$MNT"
  MOUNTED=$MNT
  grep -q " $MNT fuse.imgfuse ro," /proc/mounts
  pid=$(pgrep -f "^imgfuse $TMP/d.qcow2 $MNT" | head -1)
  [ "$(readlink "/proc/$pid/exe")" = /usr/bin/imgfuse ]
  same_bytes "$MNT/disk.raw" "$(raw_of "$TMP/d.qcow2")"
  umount "$MNT"
  wait_gone "$MNT"
  dpkg_retry -r imgfuse
  rm -f "$DEBDIR/installed-by-test"
  [ ! -e /usr/bin/imgfuse ] && [ ! -e /usr/share/man/man1/imgfuse.1.gz ] && [ ! -e /usr/share/bash-completion/completions/imgfuse ]
  ! dpkg-query -W -f='${Status}' imgfuse 2>/dev/null | grep -q 'install ok installed'
}
