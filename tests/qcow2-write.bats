#!/usr/bin/env bats
# SPDX-License-Identifier: MIT
# qcow2-write.bats - issue 4: writes through a --rw mount keep qcow2 images valid and exact.
# fio random read/write with crc32c verification on v3, v2, overlays, extended L2 over a backing file,
# 512 B and 2 MiB clusters, refcount widths 1 and 64; after unmount `qemu-img check` finds no errors and
# no leaks and `qemu-img compare` matches a copy of disk.raw taken before unmount. Also: an ext4
# filesystem through a loop device, kill -9 during fsync'd writes, truncate, zero writes and discard.

load helpers

setup() { setup_tmp; cd "$TMP"; }
teardown() {
  [ -n "${LOOPDEV:-}" ] && { umount "$TMP/fs" 2>/dev/null; losetup -d "$LOOPDEV" 2>/dev/null; }
  teardown_tmp
}

# fio_verify: 4 jobs on disjoint 8 MiB regions of MNT/disk.raw, random read/write, crc32c verified.
fio_verify() {
  fio --name=w --filename="$MNT/disk.raw" --rw=randrw --bsrange=4k-256k --verify=crc32c \
      --numjobs=4 --size=8M --offset_increment=8M --ioengine=psync --randseed=42 \
      --verify_fatal=1 --group_reporting "$@" > "$TMP/fio.log" 2>&1 || { cat "$TMP/fio.log"; return 1; }
}

# rw_roundtrip IMAGE [mount options]: fio, raw copy, unmount, check + compare.
rw_roundtrip() {
  local img=$1; shift
  mount_img --rw "$@" "$img" "$MNT"
  fio_verify
  cp "$MNT/disk.raw" "$TMP/copy.raw"
  unmount_img
  check_clean "$img"
  run qemu-img compare -f qcow2 -F raw "$img" "$TMP/copy.raw"
  echo "$output"
  [ "$status" -eq 0 ]
}

@test "fio verify on a fresh qcow2 v3" {
  "$IMGFUSE" create -f qcow2 a.qcow2 32M
  rw_roundtrip a.qcow2
}

@test "fio verify on a qcow2 v2 (compat=0.10) made by qemu-img" {
  qemu-img create -q -f qcow2 -o compat=0.10 a.qcow2 32M
  qio a.qcow2 "write -P 0x11 0 3M" "write -P 0x22 20M 1M"
  rw_roundtrip a.qcow2
}

@test "fio verify on an overlay over a qcow2 base keeps the base untouched" {
  qemu-img create -q -f qcow2 base.qcow2 32M
  qio base.qcow2 "write -P 0x5a 0 32M"
  local sum; sum=$(sha256sum base.qcow2)
  "$IMGFUSE" create -f qcow2 -b base.qcow2 -F qcow2 top.qcow2
  rw_roundtrip top.qcow2
  [ "$(sha256sum base.qcow2)" = "$sum" ]
}

@test "fio verify through --overlay over a qcow2 base: base bytes and mtime unchanged" {
  qemu-img create -q -f qcow2 base.qcow2 32M
  qio base.qcow2 "write -P 0x5b 0 20M"
  local sum mtime; sum=$(sha256sum base.qcow2); mtime=$(stat -c %Y.%y base.qcow2)
  mount_img --overlay ov.qcow2 base.qcow2 "$MNT"
  fio_verify
  cp "$MNT/disk.raw" copy.raw
  unmount_img
  check_clean ov.qcow2
  qemu-img compare -f qcow2 -F raw ov.qcow2 copy.raw
  [ "$(sha256sum base.qcow2)" = "$sum" ]
  [ "$(stat -c %Y.%y base.qcow2)" = "$mtime" ]
  run qemu-img info --output=json ov.qcow2
  [[ "$output" == *'"backing-filename-format": "qcow2"'* ]]
}

@test "fio verify with extended L2 entries over a backing file" {
  qemu-img create -q -f qcow2 base.qcow2 32M
  qio base.qcow2 "write -P 0x33 0 32M"
  "$IMGFUSE" create -f qcow2 -o extended_l2=on,cluster_size=64k -b base.qcow2 -F qcow2 top.qcow2
  rw_roundtrip top.qcow2
}

@test "partial writes into extended L2 subclusters allocate only what is touched" {
  qemu-img create -q -f qcow2 base.qcow2 4M
  qio base.qcow2 "write -P 0x44 0 4M"
  "$IMGFUSE" create -f qcow2 -o extended_l2=on,cluster_size=64k -b base.qcow2 -F qcow2 top.qcow2
  mount_img --rw top.qcow2 "$MNT"
  printf 'hello' | dd of="$MNT/disk.raw" bs=1 seek=5000 conv=notrunc status=none
  cp "$MNT/disk.raw" copy.raw
  unmount_img
  check_clean top.qcow2
  qemu-img compare -f qcow2 -F raw top.qcow2 copy.raw
  # Only the first 2 KiB subcluster of the first cluster is allocated in the top layer.
  run qemu-img map --output=json top.qcow2
  echo "$output"
  python3 - "$output" <<'EOF'
import json, sys
m = json.loads(sys.argv[1])
top = [e for e in m if e["depth"] == 0 and e["data"]]
assert len(top) == 1 and top[0]["start"] == 4096 and top[0]["length"] == 2048, top
EOF
}

@test "fio verify with 512-byte clusters" {
  "$IMGFUSE" create -f qcow2 -o cluster_size=512 a.qcow2 32M
  rw_roundtrip a.qcow2
}

@test "fio verify with 2 MiB clusters" {
  "$IMGFUSE" create -f qcow2 -o cluster_size=2M a.qcow2 32M
  rw_roundtrip a.qcow2
}

@test "fio verify with refcount_bits=1" {
  "$IMGFUSE" create -f qcow2 -o refcount_bits=1 a.qcow2 32M
  rw_roundtrip a.qcow2
}

@test "fio verify with refcount_bits=64 and 512-byte clusters (refcount table grows)" {
  "$IMGFUSE" create -f qcow2 -o refcount_bits=64,cluster_size=512 a.qcow2 32M
  rw_roundtrip a.qcow2
  run qemu-img info a.qcow2
  [[ "$output" == *"refcount bits: 64"* ]]
}

# dirty_bit IMAGE: prints 1 if the qcow2 dirty bit (incompatible feature bit 0) is set on disk, else 0.
dirty_bit() {
  python3 -c 'import struct, sys; d = open(sys.argv[1], "rb").read(80); print(struct.unpack(">Q", d[72:80])[0] & 1)' "$1"
}

@test "fio verify with lazy refcounts: dirty bit set while mounted, clear after unmount" {
  "$IMGFUSE" create -f qcow2 -o lazy_refcounts=on a.qcow2 32M
  mount_img --rw a.qcow2 "$MNT"
  [ "$(dirty_bit a.qcow2)" = 0 ]   # not before the first write
  fio_verify
  [ "$(dirty_bit a.qcow2)" = 1 ]
  cp "$MNT/disk.raw" copy.raw
  unmount_img
  [ "$(dirty_bit a.qcow2)" = 0 ]
  check_clean a.qcow2
  qemu-img compare -f qcow2 -F raw a.qcow2 copy.raw
  run qemu-img info --output=json a.qcow2
  [[ "$output" == *'"lazy-refcounts": true'* ]]
  [[ "$output" != *'"dirty-flag": true'* ]]
}

@test "a dirty lazy-refcount image gets its refcounts rebuilt when opened read-write" {
  qemu-img create -q -f qcow2 -o lazy_refcounts=on a.qcow2 16M
  # qemu-io with an abort leaves the dirty bit set and the refcounts stale.
  qemu-io -f qcow2 -c "write -P 0x66 0 4M" -c "abort" a.qcow2 >/dev/null 2>&1 || true
  run qemu-img info --output=json a.qcow2
  [[ "$output" == *'"dirty-flag": true'* ]]
  mount_img --rw a.qcow2 "$MNT"
  dd if=/dev/zero of="$MNT/disk.raw" bs=4k count=1 seek=2000 conv=notrunc status=none
  unmount_img
  grep -q "rebuilding refcounts" "$TMP/daemon.log"
  check_clean a.qcow2
  qemu-io -f qcow2 -c "read -P 0x66 0 4M" a.qcow2 | grep -q "read 4194304"
}

# ext4_through_loop [MOUNT OPTIONS...]: mkfs.ext4 and files written through a loop device on a writable
# disk.raw; the image then checks clean and its qemu-img conversion holds the same files
ext4_through_loop() {
  "$IMGFUSE" create -f qcow2 a.qcow2 64M
  mount_img --rw "$@" a.qcow2 "$MNT"
  LOOPDEV=$(losetup -f --show "$MNT/disk.raw")
  mkfs.ext4 -q -F "$LOOPDEV"
  mkdir -p fs
  mount "$LOOPDEV" fs
  head -c 3000000 /dev/urandom > fs/blob
  seq 1 100000 > fs/numbers
  mkdir fs/dir && echo hello > fs/dir/file
  local sum; sum=$(sha256sum < fs/blob)
  sync
  umount fs
  e2fsck -fn "$LOOPDEV"
  losetup -d "$LOOPDEV"; LOOPDEV=
  unmount_img
  check_clean a.qcow2
  qemu-img convert -O raw a.qcow2 conv.raw
  e2fsck -fn conv.raw
  LOOPDEV=$(losetup -f --show -r conv.raw)
  mount -o ro "$LOOPDEV" fs
  [ "$(sha256sum < fs/blob)" = "$sum" ]
  [ "$(tail -1 fs/numbers)" = 100000 ]
  [ "$(cat fs/dir/file)" = hello ]
  umount fs
  losetup -d "$LOOPDEV"; LOOPDEV=
}

@test "ext4 through a loop device on disk.raw, then read from qemu-img convert output" {
  ext4_through_loop
}

@test "the same with --direct-io (the loop device's writes go straight to the daemon)" {
  ext4_through_loop --direct-io
}

@test "kill -9 during fsync'd random writes: 20 rounds, never corrupt, fsynced data survives" {
  "$IMGFUSE" create -f qcow2 -o cluster_size=4k a.qcow2 16M
  local round writer
  for round in $(seq 1 20); do
    mount_img --rw a.qcow2 "$MNT"
    : > "$TMP/log.$round"
    crash_writer "$MNT/disk.raw" "$TMP/log.$round" "$round" 2>/dev/null &
    writer=$!
    sleep "0.$((RANDOM % 8 + 2))"
    kill -0 "$DAEMON_PID"   # still alive: the load did not crash it
    kill_daemon -9
    kill -9 "$writer" 2>/dev/null || true; wait "$writer" 2>/dev/null || true
    run qemu-img check a.qcow2
    echo "round $round: $output"
    [ "$status" -eq 0 ] || [ "$status" -eq 3 ]   # 3 = leaked clusters only
    [[ "$output" != *"ERROR"* ]]
    qemu-img convert -O raw a.qcow2 now.raw
    crash_verify now.raw "$TMP/log.$round"
  done
  qemu-img check -q -r leaks a.qcow2
  check_clean a.qcow2
}

@test "truncate grows the virtual size (L1 grows), shrinking over data is refused" {
  "$IMGFUSE" create -f qcow2 -o cluster_size=512 a.qcow2 1M
  mount_img --rw a.qcow2 "$MNT"
  printf 'A%.0s' $(seq 1 1000) | dd of="$MNT/disk.raw" bs=1 seek=1000 conv=notrunc status=none
  truncate -s 64M "$MNT/disk.raw"
  [ "$(stat -c %s "$MNT/disk.raw")" = 67108864 ]
  printf 'tail' | dd of="$MNT/disk.raw" bs=1 seek=$((64*1024*1024 - 4)) conv=notrunc status=none
  run truncate -s 512 "$MNT/disk.raw"
  [ "$status" -ne 0 ]
  run truncate -s 60M "$MNT/disk.raw"   # the tail holds data: refused
  [ "$status" -ne 0 ]
  [ "$(stat -c %s "$MNT/disk.raw")" = 67108864 ]
  grep -q "cannot shrink" "$TMP/daemon.log"
  cp "$MNT/disk.raw" copy.raw
  unmount_img
  check_clean a.qcow2
  qemu-img compare -f qcow2 -F raw a.qcow2 copy.raw
  run qemu-img info --output=json a.qcow2
  [[ "$output" == *'"virtual-size": 67108864'* ]]
}

@test "truncate through the mount never shrinks, even when the tail is unallocated" {
  "$IMGFUSE" create -f qcow2 a.qcow2 64M
  mount_img --rw a.qcow2 "$MNT"
  printf 'data' | dd of="$MNT/disk.raw" bs=1 seek=100 conv=notrunc status=none
  run truncate -s 8M "$MNT/disk.raw"
  [ "$status" -ne 0 ]
  [ "$(stat -c %s "$MNT/disk.raw")" = 67108864 ]
  unmount_img
  check_clean a.qcow2
  run qemu-img info --output=json a.qcow2
  [[ "$output" == *'"virtual-size": 67108864'* ]]
  qemu-io -f qcow2 -c "read -v 100 4" a.qcow2 | grep -q "data"
}

@test "zero writes (fallocate zero-range) set zero clusters on v3 and agree with qemu-img map" {
  qemu-img create -q -f qcow2 a.qcow2 8M
  qio a.qcow2 "write -P 0x77 0 8M"
  mount_img --rw a.qcow2 "$MNT"
  fallocate -z -o 1M -l 2M "$MNT/disk.raw"
  fallocate -z -o $((5*1024*1024 + 1000)) -l 70000 "$MNT/disk.raw"
  cp "$MNT/disk.raw" copy.raw
  unmount_img
  check_clean a.qcow2
  qemu-img compare -f qcow2 -F raw a.qcow2 copy.raw
  run qemu-img map --output=json a.qcow2
  echo "$output"
  [[ "$output" == *'"start": 1048576, "length": 2097152, "depth": 0, "present": true, "zero": true, "data": false'* ]]
}

@test "discard with --discard=unmap frees clusters and punches holes; v3 over backing reads zeros" {
  qemu-img create -q -f qcow2 base.qcow2 8M
  qio base.qcow2 "write -P 0x12 0 8M"
  qemu-img create -q -f qcow2 -b base.qcow2 -F qcow2 top.qcow2
  qio top.qcow2 "write -P 0x34 0 8M"
  local before; before=$(stat -c %b top.qcow2)
  mount_img --rw --discard=unmap top.qcow2 "$MNT"
  fallocate -p -o 2M -l 4M "$MNT/disk.raw"
  cp "$MNT/disk.raw" copy.raw
  unmount_img
  check_clean top.qcow2
  qemu-img compare -f qcow2 -F raw top.qcow2 copy.raw
  cmp -n 4194304 -i 2097152:0 copy.raw /dev/zero
  [ "$(stat -c %b top.qcow2)" -lt "$before" ]
  run qemu-img map --output=json top.qcow2
  echo "$output"
  [[ "$output" == *'"start": 2097152, "length": 4194304, "depth": 0, "present": true, "zero": true, "data": false'* ]]
}

@test "discard on v2 falls through to the backing file" {
  qemu-img create -q -f qcow2 -o compat=0.10 base.qcow2 4M
  qio base.qcow2 "write -P 0x12 0 4M"
  qemu-img create -q -f qcow2 -o compat=0.10 -b base.qcow2 -F qcow2 top.qcow2
  qio top.qcow2 "write -P 0x34 0 4M"
  mount_img --rw --discard=unmap top.qcow2 "$MNT"
  fallocate -p -o 1M -l 1M "$MNT/disk.raw"
  cp "$MNT/disk.raw" copy.raw
  unmount_img
  check_clean top.qcow2
  qemu-img compare -f qcow2 -F raw top.qcow2 copy.raw
  qemu-io -f qcow2 -c "read -P 0x12 1M 1M" -c "read -P 0x34 0 1M" -c "read -P 0x34 2M 2M" top.qcow2 | grep -c "^read" | grep -q 3
}

@test "overwriting compressed clusters allocates new ones" {
  qemu-img create -q -f qcow2 src.qcow2 4M
  qio src.qcow2 "write -P 0x21 0 4M"
  qemu-img convert -c -O qcow2 src.qcow2 a.qcow2
  mount_img --rw a.qcow2 "$MNT"
  printf 'xyz' | dd of="$MNT/disk.raw" bs=1 seek=70000 conv=notrunc status=none
  dd if=/dev/zero of="$MNT/disk.raw" bs=64k seek=10 count=3 conv=notrunc status=none
  cp "$MNT/disk.raw" copy.raw
  unmount_img
  check_clean a.qcow2
  qemu-img compare -f qcow2 -F raw a.qcow2 copy.raw
}

# point_l2_entry IMAGE WHERE: make the first L2 entry (COPIED set) point at the refcount table ("reftable")
# or at 1 GiB, far past the end of the file ("eof").
point_l2_entry() {
  python3 - "$1" "$2" <<'PY'
import struct, sys
f = open(sys.argv[1], "r+b")
d = f.read(1 << 20)
l1 = struct.unpack(">Q", d[40:48])[0]
rt = struct.unpack(">Q", d[48:56])[0]
l2 = struct.unpack(">Q", d[l1:l1 + 8])[0] & 0x00fffffffffffe00
f.seek(l2)
f.write(struct.pack(">Q", (rt if sys.argv[2] == "reftable" else 1 << 30) | (1 << 63)))
PY
}

@test "an L2 entry pointing into metadata or past EOF marks the image corrupt and fails with EIO" {
  local where
  for where in reftable eof; do
    rm -f a.qcow2
    qemu-img create -q -f qcow2 a.qcow2 4M
    qio a.qcow2 "write -P 0x21 0 64k"
    point_l2_entry a.qcow2 "$where"
    local size; size=$(stat -c %s a.qcow2)
    mount_img --rw a.qcow2 "$MNT"
    run dd if=/dev/zero of="$MNT/disk.raw" bs=4k count=1 conv=notrunc,fsync status=none
    [ "$status" -ne 0 ]
    run dd if=/dev/zero of="$MNT/disk.raw" bs=4k count=1 seek=100 conv=notrunc,fsync status=none
    [ "$status" -ne 0 ]   # the node is read-only now
    unmount_img || true
    echo "$where: $(cat "$TMP/daemon.log")"
    [ "$(grep -c "corrupt" "$TMP/daemon.log")" -eq 1 ]
    run qemu-img info --output=json a.qcow2
    [[ "$output" == *'"corrupt": true'* ]]
    [ "$(stat -c %s a.qcow2)" -eq "$size" ]   # nothing was written through the bad entry
  done
}

@test "writing clears the autoclear bitmaps bit" {
  qemu-img create -q -f qcow2 a.qcow2 4M
  qemu-img bitmap --add a.qcow2 b0
  run qemu-img info a.qcow2
  [[ "$output" == *"b0"* ]]
  mount_img --rw a.qcow2 "$MNT"
  printf 'x' | dd of="$MNT/disk.raw" bs=1 seek=10 conv=notrunc status=none
  unmount_img
  python3 -c 'import struct,sys; d=open(sys.argv[1],"rb").read(); assert struct.unpack(">Q", d[88:96])[0] & 1 == 0' a.qcow2
}

@test "an injected I/O error on each kind of metadata write fails the request but never corrupts" {
  local ev failed
  for ev in refblock_update l2_update l1_update cow_write; do
    rm -f a.qcow2 base.qcow2
    qemu-img create -q -f qcow2 base.qcow2 8M
    qio base.qcow2 "write -P 0x17 0 8M"
    "$IMGFUSE" create -f qcow2 -o cluster_size=4k -b base.qcow2 -F qcow2 a.qcow2
    echo "event=$ev errno=5 once" > rules
    mount_img --rw --blkdebug rules a.qcow2 "$MNT"
    # Partial-cluster writes (copy-on-write from the backing file) across many new L2 tables.
    failed=0
    for i in $(seq 0 40); do
      printf 'x%.0s' $(seq 1 100) | dd of="$MNT/disk.raw" bs=100 seek=$((i * 2000 + 7)) conv=notrunc,fsync status=none 2>/dev/null ||
        failed=$((failed + 1))
    done
    unmount_img || true
    echo "$ev: $failed failed writes"
    [ "$failed" -ge 1 ]
    run qemu-img check a.qcow2
    echo "$ev: $output"
    [ "$status" -eq 0 ] || [ "$status" -eq 3 ]
    [[ "$output" != *ERROR* ]]
  done
}

@test "kill -9 with lazy refcounts leaves the dirty bit; the next read-write open rebuilds the refcounts" {
  "$IMGFUSE" create -f qcow2 -o lazy_refcounts=on,cluster_size=4k a.qcow2 16M
  head -c 4M /dev/urandom > data.bin
  mount_img --rw a.qcow2 "$MNT"
  dd if=data.bin of="$MNT/disk.raw" bs=64k conv=notrunc,fsync status=none
  kill -0 "$DAEMON_PID"
  kill_daemon -9
  run qemu-img info --output=json a.qcow2
  [[ "$output" == *'"dirty-flag": true'* ]]
  mount_img --rw a.qcow2 "$MNT"
  cmp -n 4194304 "$MNT/disk.raw" data.bin
  unmount_img
  grep -q "rebuilding refcounts" "$TMP/daemon.log"
  check_clean a.qcow2
  run qemu-img info --output=json a.qcow2
  [[ "$output" != *'"dirty-flag": true'* ]]
  qemu-img convert -O raw a.qcow2 out.raw
  cmp -n 4194304 out.raw data.bin
}

@test "growing an overlay over a longer backing file shows zeros, not the backing data" {
  qemu-img create -q -f qcow2 base.qcow2 8M
  qio base.qcow2 "write -P 0x55 0 8M"
  "$IMGFUSE" create -f qcow2 -b base.qcow2 -F qcow2 top.qcow2 2M
  mount_img --rw top.qcow2 "$MNT"
  truncate -s 6M "$MNT/disk.raw"
  cmp -n 2097152 "$MNT/disk.raw" <(head -c 2097152 /dev/zero | tr '\0' '\125')
  cmp -i 2097152:0 -n 4194304 "$MNT/disk.raw" /dev/zero
  unmount_img
  check_clean top.qcow2
  qemu-img convert -O raw top.qcow2 out.raw
  [ "$(stat -c %s out.raw)" = 6291456 ]
  cmp -i 2097152:0 -n 4194304 out.raw /dev/zero
}
