#!/usr/bin/env bats
# qemu-locks.bats - imgfuse and QEMU (qemu-io, qemu-storage-daemon) respect each other's image locks:
# neither can open an image read-write while the other has it open read-write, the second one gets a
# clear line, and --force-share still allows a read-only look.
load helpers
setup() { setup_tmp; qemu-img create -q -f qcow2 "$TMP/d.qcow2" 16M; }
teardown() { [ -n "${QPID:-}" ] && kill "$QPID" 2>/dev/null; wait 2>/dev/null; teardown_tmp; }

# hold_rw IMAGE: a qemu-io process holding IMAGE read-write until killed; waits for its locks.
hold_rw() {
  qemu-io -f qcow2 -c 'sleep 600000' "$1" >/dev/null 2>&1 3>&- &
  QPID=$!
  local ino i
  ino=$(stat -c %i "$1")
  for i in $(seq 1 100); do grep -q ":$ino " /proc/locks && return 0; sleep 0.05; done
  echo "qemu-io took no locks" >&2; return 1
}

@test "a read-write mount is refused while qemu-io writes the image; --force-share mounts read-only" {
  hold_rw "$TMP/d.qcow2"
  run "$IMGFUSE" --rw "$TMP/d.qcow2" "$MNT"
  [ "$status" -eq 2 ]
  [ "${#lines[@]}" -eq 1 ]
  [[ "$output" == "imgfuse: "*"d.qcow2: image is in use by another process"*"--force-share"* ]]
  ! mountpoint -q "$MNT"
  mount_img --force-share "$TMP/d.qcow2" "$MNT"
  [ "$(stat -c %s "$MNT/disk.raw")" -eq $((16 << 20)) ]
  run dd if=/dev/zero of="$MNT/disk.raw" bs=512 count=1 conv=notrunc
  [ "$status" -ne 0 ]
  unmount_img
}

@test "qemu-io cannot write an image imgfuse has mounted read-write, and can again after unmount" {
  mount_img --rw "$TMP/d.qcow2" "$MNT"
  run qemu-io -f qcow2 -c 'write 0 4k' "$TMP/d.qcow2"
  [ "$status" -ne 0 ]
  [[ "$output" == *'Failed to get "write" lock'* ]]
  run qemu-io -f qcow2 -r -U -c 'read 0 4k' "$TMP/d.qcow2"
  [ "$status" -eq 0 ]
  unmount_img
  run qemu-io -f qcow2 -c 'write -P 7 0 4k' "$TMP/d.qcow2"
  [ "$status" -eq 0 ]
  qemu-img check "$TMP/d.qcow2"
}

@test "a qemu-storage-daemon with the image open read-write blocks a read-write mount" {
  command -v qemu-storage-daemon >/dev/null || { echo "qemu-storage-daemon missing: scripts/install-deps installs it" >&2; false; }
  qemu-storage-daemon --blockdev driver=file,filename="$TMP/d.qcow2",node-name=f \
    --blockdev driver=qcow2,file=f,node-name=q >"$TMP/qsd.log" 2>&1 3>&- &
  QPID=$!
  local ino i
  ino=$(stat -c %i "$TMP/d.qcow2")
  for i in $(seq 1 100); do grep -q ":$ino " /proc/locks && break; sleep 0.05; done
  grep -q ":$ino " /proc/locks
  run "$IMGFUSE" --rw "$TMP/d.qcow2" "$MNT"
  [ "$status" -eq 2 ]
  [[ "$output" == *"image is in use by another process"* ]]
  kill "$QPID"; wait "$QPID" || true; QPID=
  mount_img --rw "$TMP/d.qcow2" "$MNT"
  unmount_img
}
