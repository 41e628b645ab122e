#!/usr/bin/env bats
# SPDX-License-Identifier: MIT
# vmdk-zeroes.bats - write-zeroes and discard on --rw VMDK mounts (fallocate --punch-hole and
# --zero-range on disk.raw): with the zeroed-grain flag (qemu-img create -o zeroed_grain=on) each whole
# grain zeroed becomes a zeroed-grain entry (GTE 1: qemu-img map says zero, not data, at depth 0, and the
# parent is not read under it); without the flag zeros are written as data where there is data or a
# parent, and empty grains with no parent stay unallocated. Afterwards qemu-img check is clean, qemu-img
# convert equals what the mount showed, and the mount's SEEK_DATA map and imgfuse map equal qemu-img map's.

load helpers

setup() { setup_tmp; cd "$TMP"; }
teardown() { teardown_tmp; }

# zero_through_mount IMAGE: punches 64k+128k (two whole grains) and zero-ranges 300k+100k (a partial
# grain, a whole one, a partial one) through a --rw mount; expect.raw gets the same changes. The mount must
# read back expect.raw; after unmount qemu-img check is clean, convert equals expect.raw, and a read-only
# mount's bytes and map equal qemu's.
zero_through_mount() {
  local img=$1
  qemu-img convert -f vmdk -O raw "$img" expect.raw
  mount_img --rw "$img" "$MNT"
  fallocate --punch-hole --keep-size -o 64k -l 128k "$MNT/disk.raw"
  fallocate --zero-range --keep-size -o 300k -l 100k "$MNT/disk.raw"
  fallocate --punch-hole --keep-size -o 64k -l 128k expect.raw
  fallocate --zero-range --keep-size -o 300k -l 100k expect.raw
  same_bytes "$MNT/disk.raw" expect.raw
  unmount_img
  run qemu-img check -f vmdk "$img"
  echo "$output"
  [ "$status" -eq 0 ]
  [[ "$output" == *"No errors were found"* ]]
  qemu-img convert -f vmdk -O raw "$img" after.raw
  same_bytes after.raw expect.raw
  mount_equals_qemu vmdk "$img"
  # imgfuse map --output=json equals qemu-img map extent by extent (zero, data, depth, offsets)
  qemu-img map -f vmdk --output=json "$img" > q-map.json
  "$IMGFUSE" map --output=json "$img" > o-map.json
  python3 "$BATS_TEST_DIRNAME/tools/json-agree" --exact q-map.json o-map.json
}

# zero_ranges IMAGE: "start end" of the ranges qemu-img map says read as zeros without data, at depth 0.
zero_ranges() {
  qemu-img map -f vmdk --output=json "$1" | python3 -c '
import json, sys
for e in json.load(sys.stdin):
    if e["zero"] and not e["data"] and e["depth"] == 0 and e.get("present", True):
        print(e["start"], e["start"] + e["length"])'
}

@test "zeroed_grain=on: whole grains punched or zero-ranged become zeroed-grain entries; check clean, map agrees" {
  qemu-img create -q -f vmdk -o zeroed_grain=on z.vmdk 1M
  fmt_io vmdk z.vmdk "write -P 0x11 0 1M"
  local before
  before=$(stat -c %s z.vmdk)
  zero_through_mount z.vmdk
  # grains 1 and 2 (64k..192k) and grain 5 (320k..384k) are zeroed-grain entries now, not data
  run zero_ranges z.vmdk
  echo "$output"
  [ "${lines[0]}" = "65536 196608" ]
  [ "${lines[1]}" = "327680 393216" ]
  [ "${#lines[@]}" -eq 2 ]
  # no grain was appended for them: the partial grains were zeroed in place
  [ "$(stat -c %s z.vmdk)" -eq "$before" ]
}

@test "zeroed_grain=on over a parent: zeroed grains hide the parent's data (depth 0 zero), the rest still reads it" {
  qemu-img create -q -f vmdk base.vmdk 1M
  fmt_io vmdk base.vmdk "write -P 0x22 0 1M"
  qemu-img create -q -f vmdk -o zeroed_grain=on -b base.vmdk -F vmdk child.vmdk
  zero_through_mount child.vmdk
  run zero_ranges child.vmdk
  echo "$output"
  [ "${lines[0]}" = "65536 196608" ]
  [ "${lines[1]}" = "327680 393216" ]
  # the parent was not touched
  head -c 1M /dev/zero | tr '\0' '\042' > base.raw
  qemu-img compare -f vmdk -F raw base.vmdk base.raw
}

@test "without zeroed grains: zeros are written as data over a parent, never dropped to show the parent" {
  qemu-img create -q -f vmdk base.vmdk 1M
  fmt_io vmdk base.vmdk "write -P 0x22 0 1M"
  qemu-img create -q -f vmdk -b base.vmdk -F vmdk child.vmdk
  zero_through_mount child.vmdk
  run zero_ranges child.vmdk
  [ -z "$output" ]
}

@test "without zeroed grains and no parent: empty grains stay unallocated, data grains are zeroed in place" {
  qemu-img create -q -f vmdk n.vmdk 1M
  fmt_io vmdk n.vmdk "write -P 0x33 0 128k"
  local before
  before=$(stat -c %s n.vmdk)
  qemu-img convert -f vmdk -O raw n.vmdk expect.raw
  mount_img --rw n.vmdk "$MNT"
  fallocate --zero-range --keep-size -o 4k -l 1000k "$MNT/disk.raw"
  fallocate --punch-hole --keep-size -o 0 -l 1k "$MNT/disk.raw"
  unmount_img
  fallocate --zero-range --keep-size -o 4k -l 1000k expect.raw
  fallocate --punch-hole --keep-size -o 0 -l 1k expect.raw
  qemu-img check -f vmdk n.vmdk
  qemu-img compare -f vmdk -F raw n.vmdk expect.raw
  # nothing was allocated: the file did not grow and qemu-img sees data in the first two grains only
  [ "$(stat -c %s n.vmdk)" -eq "$before" ]
  [ "$(qemu_data_extents vmdk n.vmdk)" = "0 131072" ]
}
