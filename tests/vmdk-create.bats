#!/usr/bin/env bats
# SPDX-License-Identifier: MIT
# vmdk-create.bats - issue 19: `imgfuse create -f vmdk` makes monolithicSparse, monolithicFlat,
# twoGbMaxExtentSparse and twoGbMaxExtentFlat images with qemu-img's option names (subformat,
# adapter_type, hwversion, compat6, toolsversion, zeroed_grain, backing_file/backing_fmt or -b/-F) that
# qemu-img reads as vmdk of that size and checks clean; fio with 4 jobs and verification on a --rw mount
# of each leaves an image that checks clean and converts to what the mount showed; a delta link made with
# -b reads as qemu-img convert of the chain; bad options are refused with one line and exit 2.

load helpers

setup() { setup_tmp; cd "$TMP"; }
teardown() { teardown_tmp; }

# jget JSON PATH...: one value out of a JSON document (keys and list indexes).
jget() {
  python3 -c 'import json, sys
v = json.loads(sys.argv[1])
for k in sys.argv[2:]:
    v = v[int(k)] if isinstance(v, list) else v[k]
print(json.dumps(v) if isinstance(v, (dict, list, bool)) else v)' "$@"
}

# qemu_accepts IMAGE SIZE SUBFORMAT: qemu-img info says vmdk, SIZE bytes and SUBFORMAT; check is clean.
qemu_accepts() {
  local j
  j=$(qemu-img info -f vmdk --output=json "$1")
  [ "$(jget "$j" format)" = vmdk ]
  [ "$(jget "$j" virtual-size)" = "$2" ]
  [ "$(jget "$j" format-specific data create-type)" = "$3" ]
  run qemu-img check -f vmdk "$1"
  echo "$output"
  [ "$status" -eq 0 ]
  [[ "$output" == *"No errors were found"* ]]
}

# header_field IMAGE OFFSET: the little-endian u32 at OFFSET of a sparse extent file.
header_field() {
  python3 -c 'import struct, sys; f = open(sys.argv[1], "rb"); f.seek(int(sys.argv[2])); print(struct.unpack("<I", f.read(4))[0])' "$@"
}

# descriptor IMAGE: the descriptor text of a descriptor file or of a monolithic sparse file.
descriptor() {
  if [ "$(head -c 4 "$1")" = KDMV ]; then dd if="$1" bs=512 skip=1 count=20 status=none | tr -d '\0'; else cat "$1"; fi
}

@test "each subformat is read by qemu-img as vmdk of that size and checks clean; extent files as qemu names them" {
  local sf
  for sf in monolithicSparse monolithicFlat twoGbMaxExtentSparse twoGbMaxExtentFlat; do
    "$IMGFUSE" create -f vmdk -o subformat=$sf $sf.vmdk 100M
    qemu_accepts $sf.vmdk 104857600 $sf
  done
  [ -f monolithicFlat-flat.vmdk ] && [ "$(stat -c %s monolithicFlat-flat.vmdk)" -eq 104857600 ]
  [ -f twoGbMaxExtentSparse-s001.vmdk ] && [ -f twoGbMaxExtentFlat-f001.vmdk ]
  # split subformats: 2 GiB extents, the last one shorter; sizes not a multiple of 512 round up
  "$IMGFUSE" create -f vmdk -o subformat=twoGbMaxExtentSparse s.vmdk 5G
  qemu_accepts s.vmdk 5368709120 twoGbMaxExtentSparse
  [ "$(grep -c '^RW .* SPARSE "s-s00[123].vmdk"$' s.vmdk)" -eq 3 ]
  grep -q '^RW 2097152 SPARSE "s-s003.vmdk"$' s.vmdk
  "$IMGFUSE" create -f vmdk -o subformat=twoGbMaxExtentFlat f.vmdk 3G
  qemu_accepts f.vmdk 3221225472 twoGbMaxExtentFlat
  [ "$(stat -c %s f-f002.vmdk)" -eq 1073741824 ]
  "$IMGFUSE" create -f vmdk odd.vmdk 1000001
  qemu_accepts odd.vmdk 1000448 monolithicSparse
  # the default is monolithicSparse with a redundant grain directory, 64 KiB grains, version 1
  "$IMGFUSE" create -f vmdk d.vmdk 1G
  qemu_accepts d.vmdk 1073741824 monolithicSparse
  [ "$(jget "$(qemu-img info --output=json d.vmdk)" cluster-size)" = 65536 ]
  [ "$(header_field d.vmdk 4)" -eq 1 ] && [ "$(header_field d.vmdk 8)" -eq 3 ]
}

@test "options: adapter_type, hwversion, compat6, toolsversion and zeroed_grain are written as qemu-img writes them" {
  "$IMGFUSE" create -f vmdk -o adapter_type=lsilogic,hwversion=7,toolsversion=123 a.vmdk 100M
  qemu_accepts a.vmdk 104857600 monolithicSparse
  descriptor a.vmdk > a.txt
  grep -q '^ddb.adapterType = "lsilogic"$' a.txt
  grep -q '^ddb.virtualHWVersion = "7"$' a.txt
  grep -q '^ddb.toolsVersion = "123"$' a.txt
  grep -q '^ddb.geometry.heads = "255"$' a.txt
  "$IMGFUSE" create -f vmdk -o compat6=on,adapter_type=buslogic,subformat=monolithicFlat b.vmdk 10M
  qemu_accepts b.vmdk 10485760 monolithicFlat
  grep -q '^ddb.virtualHWVersion = "6"$' b.vmdk
  grep -q '^ddb.adapterType = "buslogic"$' b.vmdk
  # zeroed grains: a version 2 header with flag bit 2, and qemu-io's write -z makes zeroed-grain entries
  "$IMGFUSE" create -f vmdk -o zeroed_grain=on z.vmdk 1M
  qemu_accepts z.vmdk 1048576 monolithicSparse
  [ "$(header_field z.vmdk 4)" -eq 2 ] && [ "$(header_field z.vmdk 8)" -eq 7 ]
  fmt_io vmdk z.vmdk "write -P 0x11 0 1M" "write -z 64k 64k"
  qemu-img check -q z.vmdk
  mount_equals_qemu vmdk z.vmdk
  "$IMGFUSE" info z.vmdk | grep -q "zeroed grains"
}

@test "bad options are refused with one line and exit 2, and nothing is left behind" {
  run "$IMGFUSE" create -f vmdk -o subformat=streamOptimized s.vmdk 1M
  [ "$status" -eq 2 ] && [ "${#lines[@]}" -eq 1 ]
  [[ "$output" == "imgfuse: s.vmdk: vmdk creation option 'subformat': "*"'streamOptimized'"* ]]
  run "$IMGFUSE" create -f vmdk -o compat6=on,hwversion=6 s.vmdk 1M
  [ "$status" -eq 2 ] && [ "${#lines[@]}" -eq 1 ]
  [[ "$output" == *"compat6"*"hwversion"* ]]
  run "$IMGFUSE" create -f vmdk -o adapter_type=scsi s.vmdk 1M
  [ "$status" -eq 2 ] && [[ "$output" == *"adapter_type"* ]]
  run "$IMGFUSE" create -f vmdk -o cluster_size=4k s.vmdk 1M
  [ "$status" -eq 2 ] && [[ "$output" == "imgfuse: s.vmdk: unknown vmdk creation option 'cluster_size'" ]]
  run "$IMGFUSE" create -f vmdk -o zeroed_grain=maybe s.vmdk 1M
  [ "$status" -eq 2 ] && [ "${#lines[@]}" -eq 1 ]
  qemu-img create -q -f qcow2 q.qcow2 1M
  run "$IMGFUSE" create -f vmdk -b q.qcow2 -F qcow2 s.vmdk
  [ "$status" -eq 2 ] && [ "${#lines[@]}" -eq 1 ]
  [[ "$output" == *"needs a vmdk parent, not 'qcow2'"* ]]
  qemu-img create -q -f vmdk p.vmdk 1M
  run "$IMGFUSE" create -f vmdk -o subformat=monolithicFlat -b p.vmdk -F vmdk s.vmdk
  [ "$status" -eq 2 ] && [[ "$output" == *"a flat image cannot have a backing file"* ]]
  [ ! -e s.vmdk ]
}

@test "a new image never overwrites its parent: the same file, or an extent file that is the parent, is refused" {
  qemu-img create -q -f vmdk p.vmdk 1M
  fmt_io vmdk p.vmdk "write -P 0x44 0 1M"
  cp p.vmdk p.orig
  run "$IMGFUSE" create -f vmdk -b p.vmdk -F vmdk p.vmdk
  [ "$status" -eq 2 ] && [ "${#lines[@]}" -eq 1 ]
  [[ "$output" == *"would overwrite the backing file"* ]]
  cmp p.vmdk p.orig
  cp p.vmdk c-s001.vmdk
  run "$IMGFUSE" create -f vmdk -o subformat=twoGbMaxExtentSparse -b c-s001.vmdk -F vmdk c.vmdk
  [ "$status" -eq 2 ] && [[ "$output" == *"would overwrite the backing file"* ]]
  cmp c-s001.vmdk p.orig
}

# fio_roundtrip IMAGE [fio options...]: fio with 4 jobs and crc32c verification through a --rw mount; the
# region written is copied from the mount; after unmount qemu-img check is clean and qemu-img convert
# holds the same bytes there, and nothing elsewhere.
fio_roundtrip() {
  local img=$1 off=$2 span=$3; shift 3
  mount_img --rw "$img" "$MNT"
  fio --name=v --filename="$MNT/disk.raw" --rw=randwrite --bs=4k --size=$(( span / 4 )) --offset=$off \
    --numjobs=4 --offset_increment=$(( span / 4 )) --verify=crc32c --direct=1 --ioengine=psync --verify_fatal=1 \
    --randseed=7 --group_reporting "$@" > fio.log 2>&1 || { cat fio.log; return 1; }
  dd if="$MNT/disk.raw" of=shown.raw bs=1M iflag=skip_bytes,count_bytes skip=$off count=$span status=none
  unmount_img
  run qemu-img check -f vmdk "$img"
  echo "$output"
  [ "$status" -eq 0 ]
  [[ "$output" == *"No errors were found"* ]]
  qemu-img convert -f vmdk -O raw "$img" after.raw
  dd if=after.raw of=after-region.raw bs=1M iflag=skip_bytes,count_bytes skip=$off count=$span status=none
  same_bytes after-region.raw shown.raw
  # outside the region the disk is still zeros
  python3 -c 'import sys, os
f = open(sys.argv[1], "rb"); off, span = int(sys.argv[2]), int(sys.argv[3])
pos = 0
while True:
    try: d = os.lseek(f.fileno(), pos, os.SEEK_DATA)
    except OSError: break
    h = os.lseek(f.fileno(), d, os.SEEK_HOLE)
    f.seek(d); data = f.read(h - d)
    for i in range(0, len(data), 1 << 20):
        a = d + i
        chunk = data[i:i + (1 << 20)]
        if chunk.strip(b"\0") and not (off <= a and a + len(chunk) <= off + span):
            sys.exit("data outside the region at %d" % a)
    pos = h' after.raw $off $span
  rm -f after.raw after-region.raw shown.raw
}

@test "--rw fio with 4 jobs and verification on each created subformat: check clean, convert equals the mount" {
  local sf
  for sf in monolithicSparse monolithicFlat; do
    "$IMGFUSE" create -f vmdk -o subformat=$sf $sf.vmdk 64M
    fio_roundtrip $sf.vmdk $(( 8 << 20 )) $(( 32 << 20 ))
  done
  "$IMGFUSE" create -f vmdk -o zeroed_grain=on z.vmdk 64M
  fio_roundtrip z.vmdk 0 $(( 16 << 20 )) --bsrange=512-256k --rw=randrw
  # the split subformats: the jobs straddle the boundary of the first two 2 GiB extents
  for sf in twoGbMaxExtentSparse twoGbMaxExtentFlat; do
    "$IMGFUSE" create -f vmdk -o subformat=$sf $sf.vmdk 3G
    fio_roundtrip $sf.vmdk $(( (2048 - 6) << 20 )) $(( 12 << 20 ))
  done
  [ "$(stat -c %s twoGbMaxExtentSparse-s002.vmdk)" -gt 327680 ]
}

@test "-b: a delta link (parentFileNameHint, parentCID = the parent's CID) reads as qemu-img convert of the chain" {
  qemu-img create -q -f vmdk base.vmdk 4M
  fmt_io vmdk base.vmdk "write -P 0x5a 0 4M"
  local cid
  cid=$(descriptor base.vmdk | sed -n 's/^CID=//p')
  "$IMGFUSE" create -f vmdk -b base.vmdk -F vmdk child.vmdk
  qemu_accepts child.vmdk 4194304 monolithicSparse
  descriptor child.vmdk > child.txt
  grep -q "^parentCID=$cid\$" child.txt
  grep -q '^parentFileNameHint="base.vmdk"$' child.txt
  qemu-img info --backing-chain child.vmdk | grep -q "^image: base.vmdk"
  fmt_io vmdk child.vmdk "write -P 0x61 100k 200k" "write -P 0x62 3M 4k"
  mount_equals_qemu vmdk child.vmdk
  # a split child of an imgfuse-made parent, written through the mount
  "$IMGFUSE" create -f vmdk -o zeroed_grain=on p2.vmdk 4M
  fmt_io vmdk p2.vmdk "write -P 0x33 0 2M"
  "$IMGFUSE" create -f vmdk -o subformat=twoGbMaxExtentSparse,backing_file=p2.vmdk,backing_fmt=vmdk c2.vmdk 4M
  qemu_accepts c2.vmdk 4194304 twoGbMaxExtentSparse
  mount_img --rw c2.vmdk "$MNT"
  printf 'abc' | dd of="$MNT/disk.raw" bs=1 seek=70000 conv=notrunc status=none
  unmount_img
  qemu-img check -f vmdk c2.vmdk
  mount_equals_qemu vmdk c2.vmdk
  [ "$(qemu-io -f vmdk -c 'read -P 0x33 0 64k' c2.vmdk | grep -c 'read 65536')" -eq 1 ]
  # without -F the backing format is asked for, as qemu-img does
  run "$IMGFUSE" create -f vmdk -b base.vmdk c3.vmdk
  [ "$status" -eq 2 ] && [[ "$output" == *"add -F FMT"* ]]
}
