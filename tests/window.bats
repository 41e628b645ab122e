#!/usr/bin/env bats
# SPDX-License-Identifier: MIT
# window.bats - --offset/--size on any format (the window filter, drivers/window.c): a qcow2 with its
# backing chain, vmdk and vpc show exactly the slice of `qemu-img convert -O raw`; --rw writes land at
# offset + the window's offset in the guest and never past the window's end (ENOSPC, nothing beyond
# touched); info shows the window; a window past the disk's end is refused with exit 2 and one line.

load helpers

setup() { setup_tmp; cd "$TMP"; }
teardown() { teardown_tmp; }

# slice FILE OFFSET SIZE: SIZE bytes of FILE from OFFSET.
slice() { tail -c +$(($2 + 1)) "$1" | head -c "$3"; }

@test "qcow2 over a backing file: --offset/--size read exactly the slice qemu-img converts; info shows it" {
  qemu-img create -q -f qcow2 base.qcow2 8M
  qio base.qcow2 "write -P 0x11 0 8M"
  qemu-img create -q -f qcow2 -b base.qcow2 -F qcow2 top.qcow2
  qio top.qcow2 "write -P 0x22 1536k 1M" "write -z 3M 64k" "write -P 0x33 5000 3000"
  whole=$(raw_of top.qcow2)
  mount_img --offset 1M --size 3M top.qcow2 "$MNT"
  [ "$(stat -c %s "$MNT/disk.raw")" -eq 3145728 ]
  cmp "$MNT/disk.raw" <(slice "$whole" 1048576 3145728)
  grep -q "^window: offset 1048576, size 3145728 " "$MNT/info"
  grep -q '"window": {"offset": 1048576, "size": 3145728}' "$MNT/info.json"
  grep -q "^layers: 2" "$MNT/info"
  unmount_img
  mount_img --offset=1000 --size=9000 top.qcow2 "$MNT"       # unaligned on both ends
  cmp "$MNT/disk.raw" <(slice "$whole" 1000 9000)
  unmount_img
  mount_img --offset=6M top.qcow2 "$MNT"                      # to the end of the disk
  [ "$(stat -c %s "$MNT/disk.raw")" -eq 2097152 ]
  cmp "$MNT/disk.raw" <(slice "$whole" 6291456 2097152)
}

@test "qcow2 --rw window: writes land at the window's offset, never past its end (ENOSPC)" {
  qemu-img create -q -f qcow2 w.qcow2 8M
  qio w.qcow2 "write -P 0x44 0 8M"
  qemu-img convert -O raw w.qcow2 orig.raw
  head -c 65536 /dev/urandom > blk.bin
  mount_img --rw --offset 2M --size 1M w.qcow2 "$MNT"
  dd if=blk.bin of="$MNT/disk.raw" bs=64k seek=3 conv=notrunc status=none
  run dd if=/dev/zero of="$MNT/disk.raw" bs=64k seek=15 count=2 conv=notrunc,fsync status=none
  [ "$status" -ne 0 ]
  [[ "$output" == *"No space left on device"* ]]
  # a zero range over the window's end is cut at the end, as at the end of any disk.raw
  fallocate --zero-range --keep-size --offset 917504 --length 200000 "$MNT/disk.raw"
  [ "$(stat -c %s "$MNT/disk.raw")" -eq 1048576 ]
  unmount_img
  check_clean w.qcow2
  qemu-img convert -O raw w.qcow2 now.raw
  cp orig.raw want.raw
  dd if=blk.bin of=want.raw bs=1 seek=$((2097152 + 196608)) conv=notrunc status=none
  dd if=/dev/zero of=want.raw bs=64k seek=$((32 + 14)) count=2 conv=notrunc status=none  # dd's 64k, fallocate
  same_bytes now.raw want.raw
}

@test "vmdk and vpc: the window reads their slice and --rw writes land inside it" {
  head -c 65536 /dev/urandom > blk.bin
  for fmt in vmdk vpc; do
    qemu-img create -q -f $fmt d.$fmt 16M
    fmt_io $fmt d.$fmt "write -P 0x5a 1M 4M" "write -P 0x6b 12M 64k"
    qemu-img convert -f $fmt -O raw d.$fmt orig.$fmt.raw
    mount_img -f $fmt --offset 3M --size 10M d.$fmt "$MNT"
    [ "$(stat -c %s "$MNT/disk.raw")" -eq 10485760 ]
    cmp "$MNT/disk.raw" <(slice orig.$fmt.raw 3145728 10485760)
    unmount_img
    mount_img -f $fmt --rw --offset 3M --size 10M d.$fmt "$MNT"
    dd if=blk.bin of="$MNT/disk.raw" bs=64k seek=100 conv=notrunc status=none
    run dd if=blk.bin of="$MNT/disk.raw" bs=64k seek=160 conv=notrunc status=none
    [ "$status" -ne 0 ]
    unmount_img
    cp orig.$fmt.raw want.raw
    dd if=blk.bin of=want.raw bs=64k seek=$((48 + 100)) conv=notrunc status=none
    qemu-img convert -f $fmt -O raw d.$fmt now.raw
    same_bytes now.raw want.raw
  done
}

@test "a window past the end of the disk is refused with exit 2 and one line, on qcow2 as on raw" {
  qemu-img create -q -f qcow2 s.qcow2 4M
  refused_open s.qcow2 "--offset 3145728 + --size 2097152 is beyond the end of the disk (4194304 bytes)" \
    --offset 3M --size 2M
  refused_open s.qcow2 "--offset 5242880 is beyond the end of the disk (4194304 bytes)" --offset 5M
  refused_open s.qcow2 "is beyond the end of the disk" --rw --offset 1M --size 4M
  truncate -s 1M r.raw
  refused_open r.raw "--offset 0 + --size 1048577 is beyond the end of the disk (1048576 bytes)" --size 1048577
}
