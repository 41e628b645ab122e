#!/usr/bin/env bats
# SPDX-License-Identifier: MIT
# disk-notrunc.bats - a writable disk.raw behaves like a block device: an O_TRUNC open (dd without
# conv=notrunc, cp, a shell's '>') writes into the disk and changes neither its size nor the other bytes,
# on raw and qcow2, in directory and file mode; truncate/ftruncate never shrink it (EPERM and one line in
# the log), growing still works; dd seek=N without conv=notrunc writes in place, its ftruncate refused.

load helpers

setup() { setup_tmp; cd "$TMP"; }
teardown() { teardown_tmp; }

# expect_patch ORIG PATCH OFFSET OUT: OUT = ORIG with PATCH's bytes written at OFFSET.
expect_patch() {
  cp "$1" "$4"
  dd if="$2" of="$4" bs=1 seek="$3" conv=notrunc status=none
}

# o_trunc_writes VIEW: dd without notrunc (512 B at 0), cp (4 KiB at 0) and '>' (7 bytes at 0), in turn.
o_trunc_writes() {
  dd if=mbr.bin of="$1" bs=512 count=1 status=none
  [ "$(stat -c %s "$1")" -eq "$SIZE" ]
  cp page.bin "$1"
  [ "$(stat -c %s "$1")" -eq "$SIZE" ]
  printf 'shell>\n' > "$1"
  [ "$(stat -c %s "$1")" -eq "$SIZE" ]
}

make_inputs() {
  head -c 512 /dev/urandom > mbr.bin
  head -c 4096 /dev/urandom > page.bin
  printf 'shell>\n' > shell.bin
}

# expected ORIG OUT: what o_trunc_writes leaves on ORIG (page.bin covers mbr.bin, then the 7 bytes).
expected() {
  expect_patch "$1" page.bin 0 "$2"
  dd if=shell.bin of="$2" bs=1 conv=notrunc status=none
}

@test "raw --rw: dd without conv=notrunc, cp and > write into the disk; size and other bytes unchanged" {
  make_inputs
  SIZE=$((64 << 20))
  head -c 1048576 /dev/urandom > head.bin
  truncate -s $SIZE disk.img
  dd if=head.bin of=disk.img bs=1M seek=32 conv=notrunc status=none
  cp disk.img orig.img
  mount_img --rw disk.img "$MNT"
  o_trunc_writes "$MNT/disk.raw"
  [ "$(stat -c %s "$MNT/disk.raw")" -eq $SIZE ]
  unmount_img
  [ "$(stat -c %s disk.img)" -eq $SIZE ]
  expected orig.img want.img
  same_bytes disk.img want.img
}

@test "qcow2 --rw: dd without conv=notrunc, cp and > keep the virtual size and the other clusters" {
  make_inputs
  SIZE=$((64 << 20))
  qemu-img create -q -f qcow2 d.qcow2 64M
  qio d.qcow2 "write -P 0x5a 0 128k" "write -P 0xa5 32M 1M"
  qemu-img convert -O raw d.qcow2 orig.raw
  mount_img --rw d.qcow2 "$MNT"
  o_trunc_writes "$MNT/disk.raw"
  unmount_img
  check_clean d.qcow2
  run qemu-img info --output=json d.qcow2
  [[ "$output" == *"\"virtual-size\": $SIZE"* ]]
  expected orig.raw want.raw
  qemu-img convert -O raw d.qcow2 now.raw
  same_bytes now.raw want.raw
}

@test "file mode: an O_TRUNC open of the mounted file changes nothing but the bytes written" {
  make_inputs
  SIZE=1048576
  head -c $SIZE /dev/urandom > f.raw
  cp f.raw orig.raw
  touch target
  mount_img --rw f.raw "$TMP/target"
  o_trunc_writes "$TMP/target"
  unmount_img "$TMP/target"
  expected orig.raw want.raw
  same_bytes f.raw want.raw
}

@test "truncate and ftruncate never shrink disk.raw (raw and qcow2): EPERM, one line; growing works" {
  head -c 1048576 /dev/urandom > t.raw
  cp t.raw orig.raw
  mount_img --rw t.raw "$MNT"
  run truncate -s 4096 "$MNT/disk.raw"
  [ "$status" -ne 0 ]
  [[ "$output" == *"Operation not permitted"* ]]
  run python3 -c 'import os, sys; fd = os.open(sys.argv[1], os.O_RDWR); os.ftruncate(fd, 0)' "$MNT/disk.raw"
  [ "$status" -ne 0 ]
  [[ "$output" == *"Operation not permitted"* ]]
  [ "$(stat -c %s "$MNT/disk.raw")" -eq 1048576 ]
  grep -q "^imgfuse: .*t.raw: cannot shrink from 1048576 to 4096 bytes: disk.raw never shrinks" "$TMP/daemon.log"
  truncate -s 1048576 "$MNT/disk.raw"     # the same size: nothing to do, no error
  truncate -s 2M "$MNT/disk.raw"
  [ "$(stat -c %s "$MNT/disk.raw")" -eq 2097152 ]
  unmount_img
  [ "$(stat -c %s t.raw)" -eq 2097152 ]
  cmp <(head -c 1048576 t.raw) orig.raw
  cmp <(tail -c 1048576 t.raw) <(head -c 1048576 /dev/zero)

  qemu-img create -q -f qcow2 q.qcow2 4M     # nothing allocated: shrinking would lose nothing, still refused
  mount_img --rw q.qcow2 "$MNT"
  run truncate -s 0 "$MNT/disk.raw"
  [ "$status" -ne 0 ]
  [[ "$output" == *"Operation not permitted"* ]]
  [ "$(stat -c %s "$MNT/disk.raw")" -eq 4194304 ]
  unmount_img
  run qemu-img info --output=json q.qcow2
  [[ "$output" == *'"virtual-size": 4194304'* ]]
}

@test "dd seek=N without conv=notrunc writes in place: its ftruncate to N blocks is refused, nothing lost" {
  head -c 1048576 /dev/urandom > s.raw
  cp s.raw orig.raw
  head -c 4096 /dev/urandom > blk.bin
  mount_img --rw s.raw "$MNT"
  run dd if=blk.bin of="$MNT/disk.raw" bs=4096 seek=2 status=none
  echo "$output"
  # GNU dd reports the refused ftruncate and carries on writing (9.1 exits 0; block devices: no message)
  [[ "$output" == *"failed to truncate to 8192 bytes"*"Operation not permitted"* ]]
  [ "$(stat -c %s "$MNT/disk.raw")" -eq 1048576 ]
  dd if=blk.bin of="$MNT/disk.raw" bs=4096 seek=4 conv=notrunc status=none
  unmount_img
  expect_patch orig.raw blk.bin 8192 want1.raw
  expect_patch want1.raw blk.bin 16384 want.raw
  same_bytes s.raw want.raw
}
