#!/usr/bin/env bats
# SPDX-License-Identifier: MIT
# fstab.bats - fstab lines of type fuse.imgfuse, mounted with `mount -T FILE -a` (or `mount -T FILE
# MNT`) as the lines say: read-only, a backing chain across directories (-o backing-dir=), a writable
# overlay that leaves the image untouched (-o overlay=), and x-systemd.* words (mount(8) keeps them
# from its helpers; imgfuse ignores them when a helper run by hand passes them on).
# mount(8) runs mount.fuse3, which starts `imgfuse` through /bin/sh with no PATH, so sh's default path
# must find it: each test runs in a private mount namespace where /usr/local/sbin (first on that path)
# is a directory holding only a link to the imgfuse under test; nothing outside the test changes.

load helpers

setup() {
  setup_tmp; cd "$TMP"
  [ -d /usr/local/sbin ]
  mkdir bin; ln -s "$IMGFUSE" bin/imgfuse
}
teardown() {
  # mounts live in the test's namespace; a test that failed half-way may leave a daemon there
  pkill -9 -f "^imgfuse .*$TMP/" 2>/dev/null || true
  teardown_tmp
}

# in_ns SCRIPT: runs bash SCRIPT in a private mount namespace with imgfuse on sh's default path; the
# script's mounts are unmounted (and their daemons waited for) when it ends, whatever its status.
in_ns() {
  cat > ns.sh <<EOS
set -euo pipefail
mount --bind "$TMP/bin" /usr/local/sbin
cleanup() { for m in \$(grep -o " $TMP/[^ ]*" /proc/self/mounts); do "$IMGFUSE" unmount "\$m" || umount -l "\$m"; done; }
trap cleanup EXIT
ro_line() { grep " \$1 fuse.imgfuse " /proc/self/mounts | grep -q " fuse.imgfuse ro,"; }
rw_line() { grep " \$1 fuse.imgfuse " /proc/self/mounts | grep -q " fuse.imgfuse rw,"; }
$(cat "$1")
EOS
  run timeout 120 unshare -m --propagation private bash ns.sh
  echo "$output"
  [ "$status" -eq 0 ]
}

@test "fstab: a read-only line mounts read-only (mount -T FILE -a), content equals qemu-img convert" {
  qemu-img create -q -f qcow2 ev.qcow2 8M
  qio ev.qcow2 'write -P 0x61 0 64k' 'write -P 0x62 5M 1M'
  raw=$(raw_of ev.qcow2); sum=$(sha256sum < ev.qcow2)
  mkdir m1
  echo "$TMP/ev.qcow2 $TMP/m1 fuse.imgfuse ro 0 0" > fstab
  cat > t.sh <<EOS
mount -T "$TMP/fstab" -a
ro_line "$TMP/m1"
cmp "$TMP/m1/disk.raw" "$raw"
! dd if=/dev/zero of="$TMP/m1/disk.raw" bs=512 count=1 conv=notrunc status=none
EOS
  in_ns t.sh
  [ "$(sha256sum < ev.qcow2)" = "$sum" ]
  nothing_mounted
}

@test "fstab: a chain across directories, the backing file found through -o backing-dir=" {
  mkdir base top m2 oracle
  qemu-img create -q -f qcow2 base/base.qcow2 8M
  fmt_io qcow2 base/base.qcow2 'write -P 0x11 0 2M'
  qemu-img create -q -f qcow2 -u -b base.qcow2 -F qcow2 top/top.qcow2 8M
  (cd top && qemu-io -f qcow2 -c 'write -P 0x22 1M 64k' "json:{\"file.filename\":\"top.qcow2\",\"backing.file.filename\":\"../base/base.qcow2\"}" >/dev/null)
  cp base/base.qcow2 top/top.qcow2 oracle/
  raw=$(raw_of oracle/top.qcow2)
  echo "$TMP/top/top.qcow2 $TMP/m2 fuse.imgfuse ro,backing-dir=$TMP/base 0 0" > fstab
  cat > t.sh <<EOS
mount -T "$TMP/fstab" -a
ro_line "$TMP/m2"
cmp "$TMP/m2/disk.raw" "$raw"
EOS
  in_ns t.sh
  nothing_mounted
}

@test "fstab: an overlay line (-o overlay=) is writable, the writes land in the overlay, the image untouched" {
  qemu-img create -q -f qcow2 ev.qcow2 8M
  qio ev.qcow2 'write -P 0x33 0 1M'
  sum=$(sha256sum < ev.qcow2)
  mkdir m3
  echo "$TMP/ev.qcow2 $TMP/m3 fuse.imgfuse overlay=$TMP/work.qcow2 0 0" > fstab
  cat > t.sh <<EOS
mount -T "$TMP/fstab" "$TMP/m3"
rw_line "$TMP/m3"
printf 'written through fstab' | dd of="$TMP/m3/disk.raw" bs=1 seek=4096 conv=notrunc status=none
EOS
  in_ns t.sh
  [ "$(sha256sum < ev.qcow2)" = "$sum" ]
  qemu-img info work.qcow2 | grep -q "^backing file: .*ev.qcow2"
  cp "$(raw_of ev.qcow2)" want.raw
  printf 'written through fstab' | dd of=want.raw bs=1 seek=4096 conv=notrunc status=none
  same_bytes "$(raw_of work.qcow2)" want.raw
  nothing_mounted
}

@test "fstab: a line with x-systemd.automount mounts; imgfuse ignores x-* words a helper passes on" {
  qemu-img create -q -f qcow2 ev.qcow2 4M
  qio ev.qcow2 'write -P 0x44 64k 64k'
  raw=$(raw_of ev.qcow2)
  mkdir m4 m5
  echo "$TMP/ev.qcow2 $TMP/m4 fuse.imgfuse ro,nofail,x-systemd.automount,x-systemd.idle-timeout=60 0 0" > fstab
  cat > t.sh <<EOS
mount -T "$TMP/fstab" -a
ro_line "$TMP/m4"
cmp "$TMP/m4/disk.raw" "$raw"
# mount.fuse3 run by hand hands every word to imgfuse, x-* and comment= included
mount.fuse3 "imgfuse#$TMP/ev.qcow2" "$TMP/m5" -o ro,x-systemd.automount,comment=systemd.automount
ro_line "$TMP/m5"
cmp "$TMP/m5/disk.raw" "$raw"
EOS
  in_ns t.sh
  nothing_mounted
}
