#!/usr/bin/env bats
# SPDX-License-Identifier: MIT
# emulate.bats - output emulation (issue 21, drivers/emulate.c): --emulate vmdk,vhd,vdi adds disk.vmdk (a
# monolithicFlat descriptor naming disk.raw), disk.vhd (disk.raw + a fixed-VHD footer) and disk.vdi (a
# static VDI header and block map + disk.raw). qemu-img reads them as vmdk, vpc and vdi with disk.raw's
# virtual size and converts each to disk.raw's bytes; a write through disk.vhd on an --overlay mount
# lands in the overlay and shows in disk.raw, the image untouched; headers are never written.

load helpers

setup() { setup_tmp; cd "$TMP"; }
teardown() { teardown_tmp; }

# virtual_size / format_of [-f FMT] FILE: what qemu-img info says (a fixed VHD probes as raw in QEMU, whose
# vpc probe looks for the footer copy at offset 0 that only dynamic disks have: read it with -f vpc).
virtual_size() { qemu-img info --output=json "$@" | python3 -c 'import json,sys; print(json.load(sys.stdin)["virtual-size"])'; }
format_of() { qemu-img info --output=json "$@" | python3 -c 'import json,sys; print(json.load(sys.stdin)["format"])'; }

@test "--emulate vmdk,vhd,vdi: qemu-img reads vmdk, vpc, vdi with disk.raw's size; convert of each equals disk.raw" {
  qemu-img create -q -f qcow2 e.qcow2 100M
  qio e.qcow2 "write -P 0x5a 1M 3M" "write -P 0x33 99M 1M" "write -P 0x77 50001k 7k"
  mount_img --emulate vmdk,vhd,vdi e.qcow2 "$MNT"
  size=$(stat -c %s "$MNT/disk.raw")
  [ "$(format_of "$MNT/disk.vmdk")" = vmdk ]
  [ "$(format_of "$MNT/disk.vdi")" = vdi ]
  [ "$(format_of -f vpc "$MNT/disk.vhd")" = vpc ]
  [ "$(virtual_size "$MNT/disk.vmdk")" -eq "$size" ]
  [ "$(virtual_size "$MNT/disk.vdi")" -eq "$size" ]
  [ "$(virtual_size -f vpc "$MNT/disk.vhd")" -eq "$size" ]
  grep -qx 'RW 204800 FLAT "disk.raw" 0' "$MNT/disk.vmdk"
  grep -qx 'createType="monolithicFlat"' "$MNT/disk.vmdk"
  [ "$(stat -c %s "$MNT/disk.vhd")" -eq $((size + 512)) ]
  cmp -n "$size" "$MNT/disk.vhd" "$MNT/disk.raw"                # the data area is disk.raw itself
  [ "$(tail -c 512 "$MNT/disk.vhd" | head -c 8)" = conectix ]
  [ "$(tail -c 512 "$MNT/disk.vhd" | tail -c +29 | head -c 4)" = "win " ]
  qemu-img convert -f vmdk -O raw "$MNT/disk.vmdk" vmdk.raw
  qemu-img convert -f vpc -O raw "$MNT/disk.vhd" vhd.raw
  qemu-img convert -f vdi -O raw "$MNT/disk.vdi" vdi.raw
  for f in vmdk.raw vhd.raw vdi.raw; do same_bytes "$f" "$MNT/disk.raw"; done
  same_bytes vdi.raw "$(raw_of e.qcow2)"
  "$IMGFUSE" info "$MNT/disk.vdi" | grep -q '^  format: vdi'
  # headers are never written, and disk.vmdk is read-only even on a writable mount
  [ "$(stat -c %a "$MNT/disk.vmdk")" = 444 ]
}

@test "--emulate on a disk that is no multiple of 512 bytes: the padding reads as zeros; -o emulate=vdi" {
  head -c 1000000 /dev/urandom > odd.raw
  mount_img --emulate vhd,vmdk odd.raw "$MNT"
  qemu-img convert -f vpc -O raw "$MNT/disk.vhd" vhd.raw
  [ "$(stat -c %s vhd.raw)" -eq 1000448 ]
  cmp -n 1000000 vhd.raw odd.raw
  [ -z "$(tail -c 448 vhd.raw | tr -d '\0')" ]
  grep -qx 'RW 1954 FLAT "disk.raw" 0' "$MNT/disk.vmdk"
  unmount_img
  mount_img -o emulate=vdi odd.raw "$MNT"
  [ ! -e "$MNT/disk.vhd" ]
  qemu-img convert -f vdi -O raw "$MNT/disk.vdi" vdi.raw
  [ "$(virtual_size "$MNT/disk.vdi")" -eq 1000448 ]
  cmp -n 1000000 vdi.raw odd.raw
}

@test "a write through disk.vhd on an --overlay mount lands in the overlay and shows in disk.raw; the image untouched" {
  qemu-img create -q -f qcow2 ev.qcow2 64M
  qio ev.qcow2 "write -P 0x11 0 64M"
  sum=$(md5sum < ev.qcow2)
  head -c 65536 /dev/urandom > blk.bin
  mount_img --overlay work.qcow2 --emulate vhd,vdi ev.qcow2 "$MNT"
  [ "$(stat -c %a "$MNT/disk.vhd")" = 644 ]
  dd if=blk.bin of="$MNT/disk.vhd" bs=64k seek=16 conv=notrunc,fsync status=none
  cmp <(dd if="$MNT/disk.raw" bs=64k skip=16 count=1 status=none) blk.bin
  # the footer and the VDI header refuse writes (EPERM) and stay as they were
  foot=$(tail -c 512 "$MNT/disk.vhd" | md5sum)
  run dd if=/dev/zero of="$MNT/disk.vhd" bs=512 seek=$((64 * 2048)) count=1 conv=notrunc,fsync status=none
  [ "$status" -ne 0 ]
  run dd if=/dev/zero of="$MNT/disk.vdi" bs=512 count=1 conv=notrunc,fsync status=none
  [ "$status" -ne 0 ]
  [ "$(tail -c 512 "$MNT/disk.vhd" | md5sum)" = "$foot" ]
  unmount_img
  [ "$(md5sum < ev.qcow2)" = "$sum" ]
  qemu-img check -q work.qcow2
  qemu-img convert -O raw work.qcow2 work.raw
  cmp <(dd if=work.raw bs=64k skip=16 count=1 status=none) blk.bin
  [ "$(qemu-img map --output=json work.qcow2 | python3 -c '
import json, sys
print(sum(e["length"] for e in json.load(sys.stdin) if e["depth"] == 0 and e["data"]))')" -ge 65536 ]
}

@test "--emulate: a bad value, a file mount point and a VHD larger than 2040 GiB are refused with exit 2 and one line" {
  qemu-img create -q -f qcow2 big.qcow2 3T
  run "$IMGFUSE" --emulate vhd,qcow2 big.qcow2 "$MNT"
  [ "$status" -eq 2 ]
  [ "$output" = "imgfuse: --emulate: invalid value 'vhd,qcow2' (expected vmdk, vhd, vdi or a comma-separated list of them)" ]
  run "$IMGFUSE" --foreground --emulate vhd big.qcow2 "$MNT"
  [ "$status" -eq 2 ]
  [ "$output" = "imgfuse: big.qcow2: --emulate vhd: the disk (3298534883328 bytes) is larger than a VHD may be (2040 GiB)" ]
  touch f.img
  run "$IMGFUSE" --emulate vdi big.qcow2 f.img
  [ "$status" -eq 2 ]
  [ "$output" = "imgfuse: f.img: --emulate needs a directory as mount point (a file mount point shows disk.raw alone)" ]
  nothing_mounted
  mount_img --emulate vdi,vmdk big.qcow2 "$MNT"                # 3 TiB: the VDI map is computed, not held
  [ "$(virtual_size "$MNT/disk.vdi")" -eq 3298534883328 ]
  [ "$(virtual_size "$MNT/disk.vmdk")" -eq 3298534883328 ]
}
