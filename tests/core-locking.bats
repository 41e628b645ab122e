#!/usr/bin/env bats
# SPDX-License-Identifier: MIT
# core-locking.bats - QEMU-compatible image locks through the command line: while qemu-io holds a qcow2
# image read-write, imgfuse refuses to mount it (read-write, or read-only without --force-share) with one
# clear line and exit 2, and mounts it with --force-share; while imgfuse has it mounted read-write, QEMU
# cannot open it; a read-only mount leaves QEMU readers alone.

load helpers

setup() { setup_tmp; cd "$TMP"; QIO=; }
teardown() {
  [ -n "$QIO" ] && { kill -9 "$QIO" 2>/dev/null; wait "$QIO" 2>/dev/null; }
  teardown_tmp
}

# wait_lock FILE BYTE: until some process holds a lock on BYTE of FILE (60 s at most).
wait_lock() {
  local ino i
  ino=$(stat -c %i "$1")
  for i in $(seq 1 1200); do
    awk -v ino=":$ino" -v b="$2" '$6 ~ ino"$" && $7 <= b && $8 >= b { f = 1 } END { exit !f }' /proc/locks && return 0
    sleep 0.05
  done
  return 1
}

@test "qemu-io writing the image: imgfuse refuses rw and plain ro mounts, --force-share mounts read-only" {
  qemu-img create -q -f qcow2 img.qcow2 1M
  qemu-io -f qcow2 -c 'write -P 0x61 0 64k' img.qcow2 >/dev/null
  qemu-io -f qcow2 -c 'sleep 600000' img.qcow2 >/dev/null 2>&1 &
  QIO=$!
  wait_lock img.qcow2 101
  run "$IMGFUSE" --foreground --rw img.qcow2 "$MNT"
  [ "$status" -eq 2 ]
  [ "$output" = "imgfuse: img.qcow2: image is in use by another process for writing (QEMU lock); use --force-share to open it read-only" ]
  ! mountpoint -q "$MNT" || false
  run "$IMGFUSE" --foreground img.qcow2 "$MNT"
  [ "$status" -eq 2 ]
  [[ "$output" == *"QEMU lock"* ]]
  mount_img --force-share img.qcow2 "$MNT"
  [ "$(head -c 1 "$MNT/disk.raw" | od -An -tx1 | tr -d ' ')" = 61 ]
  unmount_img
}

@test "imgfuse writing the image: qemu-io cannot open it, and can again after unmount" {
  qemu-img create -q -f qcow2 img.qcow2 1M
  mount_img --rw img.qcow2 "$MNT"
  run qemu-io -f qcow2 -c 'read 0 512' img.qcow2
  [ "$status" -ne 0 ]
  [[ "$output" == *"lock"* ]]
  unmount_img
  run qemu-io -f qcow2 -c 'write 0 512' img.qcow2
  [ "$status" -eq 0 ]
}

@test "a read-only mount lets QEMU readers in and keeps QEMU writers out" {
  qemu-img create -q -f qcow2 img.qcow2 1M
  mount_img img.qcow2 "$MNT"
  run qemu-io -f qcow2 -r -c 'read 0 512' img.qcow2
  [ "$status" -eq 0 ]
  run qemu-io -f qcow2 -c 'write 0 512' img.qcow2
  [ "$status" -ne 0 ]
  unmount_img
}

@test "a qemu-storage-daemon with the image open read-write blocks a read-write mount until it exits" {
  qemu-img create -q -f qcow2 d.qcow2 16M
  qemu-storage-daemon --blockdev driver=file,filename=d.qcow2,node-name=f \
    --blockdev driver=qcow2,file=f,node-name=q >qsd.log 2>&1 3>&- &
  QIO=$!
  wait_lock d.qcow2 101
  run "$IMGFUSE" --rw d.qcow2 "$MNT"
  [ "$status" -eq 2 ]
  [ "${#lines[@]}" -eq 1 ]
  [[ "$output" == "imgfuse: d.qcow2: image is in use by another process"*"--force-share"* ]]
  ! mountpoint -q "$MNT" || false
  kill "$QIO"; wait "$QIO" || true; QIO=
  mount_img --rw d.qcow2 "$MNT"
  unmount_img
  qemu-img check -q d.qcow2
}
