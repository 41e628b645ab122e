#!/usr/bin/env bats
# SPDX-License-Identifier: MIT
# vpc-footer-511.bats - VHDs that end with the 511-byte footer of Virtual PC before 2004 (the 512-byte
# footer without its last reserved byte; generated here by cutting that byte off images qemu-img made):
# fixed and dynamic disks read like `qemu-img convert`, info says which footer it found, and a --rw
# write to a dynamic one leaves a valid image with a 512-byte footer at the end.

load helpers

setup() { setup_tmp; cd "$TMP"; }
teardown() { teardown_tmp; }

VPC_CHECK="$BATS_TEST_DIRNAME/vpc-check.py"

@test "a fixed VHD with a 511-byte footer reads like qemu-img convert; info names the old footer" {
  qemu-img create -q -f vpc -o subformat=fixed f.vhd 4M
  qemu-io -f vpc -c 'write -P 0x61 4096 100000' -c 'write -P 0x62 4000000 100000' f.vhd >/dev/null
  qemu-img convert -f vpc -O raw f.vhd expect.raw
  truncate -s -1 f.vhd
  [ "$(tail -c 511 f.vhd | head -c 8)" = conectix ]
  qemu-img convert -f vpc -O raw f.vhd qemu.raw
  same_bytes qemu.raw expect.raw
  mount_img -f vpc f.vhd "$MNT"
  same_bytes "$MNT/disk.raw" expect.raw
  grep -q "footer: at the end (511 bytes, Virtual PC before 2004)" "$MNT/info"
  unmount_img
}

@test "a dynamic VHD with a 511-byte footer reads like qemu-img convert from it; --rw writes leave a 512-byte footer" {
  qemu-img create -q -f vpc d.vhd 8M
  qemu-io -f vpc -c 'write -P 0x62 1234 3000000' d.vhd >/dev/null
  qemu-img convert -f vpc -O raw d.vhd expect.raw
  truncate -s -1 d.vhd
  mount_img d.vhd "$MNT"
  same_bytes "$MNT/disk.raw" expect.raw
  grep -q "footer: at the end (511 bytes, Virtual PC before 2004)" "$MNT/info"
  unmount_img
  mount_img --rw d.vhd "$MNT"
  qemu-io -f raw -c 'write -P 0x63 7000000 10000' "$MNT/disk.raw" >/dev/null
  unmount_img
  qemu-io -f raw -c 'write -P 0x63 7000000 10000' expect.raw >/dev/null
  run python3 "$VPC_CHECK" d.vhd
  echo "$output"
  [ "$status" -eq 0 ]
  qemu-img convert -f vpc -O raw d.vhd after.raw
  same_bytes after.raw expect.raw
  mount_img d.vhd "$MNT"
  grep -q "footer: at the end$" "$MNT/info"
  unmount_img
}
