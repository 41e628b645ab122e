#!/usr/bin/env bats
# SPDX-License-Identifier: MIT
# mount-ops.bats - the file operations of a writable raw view besides plain read/write: fallocate
# (punch hole, zero range, plain allocation), truncate, fsync, st_blocks and SEEK_DATA/SEEK_HOLE after
# writes, a loop device with a real file system on top of disk.raw, and what happens to the mount when
# the daemon is killed.

load helpers

setup() { setup_tmp; cd "$TMP"; }
teardown() {
  if [ -n "${LOOPDEV:-}" ]; then
    umount "$TMP/fsmnt" 2>/dev/null
    losetup -d "$LOOPDEV" 2>/dev/null
  fi
  teardown_tmp
}

SEEKMAP="$BATS_TEST_DIRNAME/seekmap.py"

@test "fallocate --punch-hole reads back zeros and leaves the rest alone" {
  head -c 4194304 /dev/urandom > p.raw
  cp p.raw orig.raw
  mount_img --rw --discard=unmap p.raw "$MNT"
  fallocate --punch-hole --offset 1048576 --length 65536 "$MNT/disk.raw"
  cmp <(dd if="$MNT/disk.raw" bs=64k skip=16 count=1 status=none) <(head -c 65536 /dev/zero)
  unmount_img
  cmp <(head -c 1048576 p.raw) <(head -c 1048576 orig.raw)
  cmp <(dd if=p.raw bs=64k skip=16 count=1 status=none) <(head -c 65536 /dev/zero)
  cmp <(dd if=p.raw bs=64k skip=17 status=none) <(dd if=orig.raw bs=64k skip=17 status=none)
}

@test "fallocate --punch-hole reads back zeros with the default --discard=ignore too" {
  head -c 1048576 /dev/urandom > q.raw
  mount_img --rw q.raw "$MNT"
  fallocate --punch-hole --offset 4096 --length 8192 "$MNT/disk.raw"
  cmp <(dd if="$MNT/disk.raw" bs=4k skip=1 count=2 status=none) <(head -c 8192 /dev/zero)
  unmount_img
  cmp <(dd if=q.raw bs=4k skip=1 count=2 status=none) <(head -c 8192 /dev/zero)
}

@test "fallocate --zero-range zeroes; plain fallocate is not supported" {
  head -c 1048576 /dev/urandom > z.raw
  mount_img --rw z.raw "$MNT"
  fallocate --zero-range --keep-size --offset 65536 --length 65536 "$MNT/disk.raw"
  cmp <(dd if="$MNT/disk.raw" bs=64k skip=1 count=1 status=none) <(head -c 65536 /dev/zero)
  run fallocate --offset 0 --length 4096 "$MNT/disk.raw"
  [ "$status" -ne 0 ]
  [[ "$output" == *"not supported"* ]]
  [ "$(stat -c %s "$MNT/disk.raw")" -eq 1048576 ]
  unmount_img
  cmp <(dd if=z.raw bs=64k skip=1 count=1 status=none) <(head -c 65536 /dev/zero)
}

@test "truncate grows a raw image and never shrinks it" {
  head -c 1048576 /dev/urandom > t.raw
  cp t.raw orig.raw
  mount_img --rw t.raw "$MNT"
  truncate -s 3M "$MNT/disk.raw"
  [ "$(stat -c %s "$MNT/disk.raw")" -eq 3145728 ]
  cmp <(tail -c 2097152 "$MNT/disk.raw") <(head -c 2097152 /dev/zero)
  run truncate -s 512K "$MNT/disk.raw"
  [ "$status" -ne 0 ]
  [ "$(stat -c %s "$MNT/disk.raw")" -eq 3145728 ]
  unmount_img
  [ "$(stat -c %s t.raw)" -eq 3145728 ]
  cmp <(head -c 1048576 t.raw) orig.raw
}

@test "writes into holes: fsync succeeds, st_blocks grows, SEEK_DATA/SEEK_HOLE follow the image" {
  truncate -s 32M s.raw
  mount_img --rw s.raw "$MNT"
  before=$(stat -c %b "$MNT/disk.raw")
  python3 - "$MNT/disk.raw" <<'EOF'
import os, sys
fd = os.open(sys.argv[1], os.O_WRONLY)
os.pwrite(fd, b"\x5a" * 65536, 5 * 1048576)
os.pwrite(fd, b"\xa5" * 4096, 20 * 1048576)
os.fsync(fd)
os.close(fd)
EOF
  [ "$(stat -c %b "$MNT/disk.raw")" -gt "$before" ]
  map=$(python3 "$SEEKMAP" "$MNT/disk.raw")
  [ "$map" = "$(python3 "$SEEKMAP" s.raw)" ]
  [[ "$map" == *"5242880 5308416"* ]]
  unmount_img
  [ "$(dd if=s.raw bs=64k skip=80 count=1 status=none | tr -d '\132' | wc -c)" -eq 0 ]
}

# loop_ext4_ro [MOUNT OPTIONS...]: an ext4 file system in a raw image, mounted through a read-only loop
# device over disk.raw, shows the file written into it
loop_ext4_ro() {
  truncate -s 32M fs.raw
  mkfs.ext4 -q -F fs.raw
  mkdir -p "$TMP/src" "$TMP/fsmnt"
  head -c 300000 /dev/urandom > "$TMP/src/payload"
  debugfs -w -R "write $TMP/src/payload payload" fs.raw > /dev/null 2>&1
  mount_img "$@" fs.raw "$MNT"
  LOOPDEV=$(losetup --find --show --read-only "$MNT/disk.raw")
  mount -o ro,noload "$LOOPDEV" "$TMP/fsmnt"
  cmp "$TMP/fsmnt/payload" "$TMP/src/payload"
  umount "$TMP/fsmnt"
  losetup -d "$LOOPDEV"
  LOOPDEV=
  unmount_img
}

@test "a loop device over disk.raw mounts the ext4 file system inside, read-only" {
  loop_ext4_ro
}

@test "the same through --direct-io (the loop device's reads go straight to the daemon)" {
  loop_ext4_ro --direct-io
}

@test "kill -9 of the daemon: its watcher removes the dead mount; a clean unmount leaves no watcher" {
  head -c 1048576 /dev/urandom > k.raw
  mount_img k.raw "$MNT"
  pid=$DAEMON_PID
  live() { ps -eo stat=,comm= | awk '$2 == "imgf-unmount" && $1 !~ /^Z/' | wc -l; }
  [ "$(live)" -ge 1 ]
  kill -9 "$pid"; wait "$pid" 2>/dev/null || true; DAEMON_PID=
  for i in $(seq 1 100); do mountpoint -q "$MNT" || break; sleep 0.05; done
  run mountpoint -q "$MNT"
  [ "$status" -ne 0 ]
  wait_unmount_helper "$(realpath "$MNT")"
  [ -z "$(orphan_unmount_watchers)" ]
  # the second mount's own watcher (a child of its daemon; other suites may run watchers meanwhile)
  mount_img k.raw "$MNT"
  watcher=$(ps -o pid=,comm= --ppid "$DAEMON_PID" | awk '$2 == "imgf-unmount" {print $1}')
  [ -n "$watcher" ]
  cmp "$MNT/disk.raw" k.raw
  unmount_img
  run kill -0 $watcher
  [ "$status" -ne 0 ]
}

@test "a new mount at the same path survives the previous daemon's watcher (mount ids are reused)" {
  # A throttled daemon serves its queued readahead for a second or two after its mount is gone; the
  # kernel gives the next mount at the path the same mount ID and device number. The watcher must
  # know its own mount by its unique ID and leave B alone.
  head -c 16777216 /dev/urandom > a.raw
  head -c 1048576 /dev/urandom > b.raw
  for round in 1 2 3 4; do
    mount_img --iops-limit 1 a.raw "$MNT"
    a_pid=$DAEMON_PID
    # 2 MiB are enough: the readahead queued behind them keeps A busy for 2 s after umount, as 8 MiB did
    dd if="$MNT/disk.raw" of=/dev/null bs=1M count=2 status=none
    umount "$MNT"
    kill -0 "$a_pid"   # A's daemon is still draining its throttled requests
    mount_img b.raw "$MNT"
    wait "$a_pid"
    wait_unmount_helper "$(realpath "$MNT")"
    mountpoint -q "$MNT"
    cmp "$MNT/disk.raw" b.raw
    unmount_img
  done
}
