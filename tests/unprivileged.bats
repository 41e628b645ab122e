#!/usr/bin/env bats
# SPDX-License-Identifier: MIT
# unprivileged.bats - a user without privileges mounts (by the command line, and from an fstab line
# with the `user` option through the setuid mount(8) and mount.fuse3), reads disk.raw equal to
# qemu-img convert's output, and after kill -9 of the daemon has no dead mount left: the watcher
# (fuse/unwatch.c) removes it. Each test runs in a private mount namespace whose /dev/fuse the user
# may open (Debian makes it 0666, this machine's is 0600), whose /etc/fstab is the test's, and where
# /usr/local/sbin holds only imgfuse (mount(8) gives its helper no PATH); nothing outside changes.

load helpers

setup() {
  setup_tmp; cd "$TMP"
  USER_U=$(test_user)
  chmod 755 "$TMP"
  mkdir bin; ln -s "$IMGFUSE" bin/imgfuse
  qemu-img create -q -f qcow2 base.qcow2 8M
  qio base.qcow2 'write -P 0x31 0 3M'
  qemu-img create -q -f qcow2 -b base.qcow2 -F qcow2 u.qcow2
  qio u.qcow2 'write -P 0x32 2M 64k' 'write -P 0x33 7M 512'
  cp "$(raw_of u.qcow2)" want.raw
  chmod 644 want.raw base.qcow2 u.qcow2
  chown "$USER_U" "$MNT"
}
teardown() {
  pkill -9 -u "$USER_U" -f "^imgfuse $TMP/" 2>/dev/null || true
  teardown_tmp
}

# in_ns SCRIPT: bash SCRIPT in the private namespace described above; fails with its output if it does.
in_ns() {
  cp /etc/fstab fstab
  cat >> fstab <<EOS
$TMP/u.qcow2 $MNT fuse.imgfuse ro,user,noauto 0 0
EOS
  cat > ns.sh <<EOS
set -euo pipefail
mknod -m 0666 "$TMP/fuse" c 10 229
mount --bind "$TMP/fuse" /dev/fuse
mount --bind "$TMP/bin" /usr/local/sbin
mount --bind "$TMP/fstab" /etc/fstab
cleanup() { grep -q " $MNT fuse" /proc/self/mounts && umount -l "$MNT"; true; }
trap cleanup EXIT
as_user() { runuser -u "$USER_U" -- "\$@"; }
# daemon_pid: the user's imgfuse daemon of this test (not its watcher, which shares its command line)
daemon_pid() {
  local p
  for p in \$(pgrep -u "$USER_U" -f "^imgfuse $TMP/u.qcow2"); do
    [ "\$(cat /proc/\$p/comm)" = imgfuse ] && echo \$p
  done
}
# killed_leaves_nothing: kill -9 of the daemon; within 10 s the mount is gone and the mount point is
# a plain directory the user can stat (no ENOTCONN)
killed_leaves_nothing() {
  local pid i
  pid=\$(daemon_pid); [ -n "\$pid" ]
  kill -9 \$pid
  for i in \$(seq 1 200); do grep -q " $MNT fuse" /proc/self/mounts || break; sleep 0.05; done
  ! grep " $MNT fuse" /proc/self/mounts || false
  as_user stat "$MNT" >/dev/null
}
$(cat "$1")
EOS
  run timeout 120 unshare -m --propagation private bash ns.sh
  echo "$output"
  [ "$status" -eq 0 ]
}

@test "unprivileged: the user mounts a qcow2 chain by the command line, reads it, kill -9 leaves no dead mount" {
  cat > t.sh <<EOS
as_user imgfuse "$TMP/u.qcow2" "$MNT"
[ "\$(stat -c %U /proc/\$(daemon_pid))" = "$USER_U" ]
grep -q " $MNT fuse.imgfuse ro," /proc/self/mounts
as_user cmp "$MNT/disk.raw" "$TMP/want.raw"
killed_leaves_nothing
EOS
  in_ns t.sh
  nothing_mounted
}

@test "unprivileged: the user mounts an fstab line with 'user' (mount MNT), reads it, umount; kill -9 leaves no dead mount" {
  cat > t.sh <<EOS
as_user mount "$MNT"
[ "\$(stat -c %U /proc/\$(daemon_pid))" = "$USER_U" ]
grep -q " $MNT fuse.imgfuse ro," /proc/self/mounts
as_user cmp "$MNT/disk.raw" "$TMP/want.raw"
as_user umount "$MNT"
! grep " $MNT fuse" /proc/self/mounts || false
as_user mount "$MNT"
as_user cmp "$MNT/disk.raw" "$TMP/want.raw"
killed_leaves_nothing
EOS
  in_ns t.sh
  nothing_mounted
}
