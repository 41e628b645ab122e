#!/usr/bin/env bats
# SPDX-License-Identifier: MIT
# parallels.bats - the Parallels driver on real mounts. Images made by qemu-img create -f parallels (two
# cluster sizes, sizes not a multiple of the cluster size) and qemu-io writes, and the same images
# rewritten with the old signature "WithoutFreeSpace" (BAT in sectors), read byte for byte like
# `qemu-img convert -O raw` with the same data map; an image marked in use opens read-only with one
# warning and --rw checks its BAT first; writes through --rw mounts (fio with 4 jobs and verification)
# leave an image `qemu-img check` calls clean whose conversion equals what the mount showed; damaged
# headers are refused with one line; --backing is refused (parallels has no backing files).

load helpers

setup() { setup_tmp; cd "$TMP"; }
teardown() { teardown_tmp; }

# check_mount IMAGE [options]: size, bytes and SEEK_DATA map of disk.raw equal QEMU's view.
check_mount() { mount_equals_qemu parallels "$@"; }

# to_old_signature IN OUT: the image rewritten with the "WithoutFreeSpace" signature, BAT in sectors.
to_old_signature() {
  python3 - "$1" "$2" <<'EOF'
import struct, sys
d = bytearray(open(sys.argv[1], "rb").read())
assert d[:16] == b"WithouFreSpacExt"
tracks, n = struct.unpack("<II", d[28:36])
d[:16] = b"WithoutFreeSpace"
for i in range(n):
    e = struct.unpack("<I", d[64 + 4 * i:68 + 4 * i])[0]
    d[64 + 4 * i:68 + 4 * i] = struct.pack("<I", e * tracks)
open(sys.argv[2], "wb").write(d)
EOF
}

# patch_le32 FILE OFFSET VALUE
patch_le32() { patch_le "$1" "$2" 4 "$3"; }

prl_clean() {
  run qemu-img check -f parallels "$1"
  echo "$output"
  [ "$status" -eq 0 ]
  [[ "$output" == *"No errors were found"* ]]
  [[ "$output" != *"leaked"* ]]
}

@test "qemu-img made parallels images (1 MiB and 64 KiB clusters) with qemu-io writes read like qemu-img convert, same map" {
  qemu-img create -q -f parallels a.hdd 5000000
  fmt_io parallels a.hdd 'write -P 0x11 1234 70000' 'write -P 0x22 3000001 5000' 'write -P 0x33 4999000 1000'
  check_mount a.hdd
  check_mount a.hdd -f parallels
  qemu-img create -q -f parallels -o cluster_size=64k b.hdd 10M
  fmt_io parallels b.hdd 'write -P 0x44 65535 2' 'write -P 0x55 9M 70000' 'write -P 0x66 100 1'
  check_mount b.hdd
  qemu-img create -q -f parallels e.hdd 1G
  check_mount e.hdd
}

@test "the old signature WithoutFreeSpace (BAT in sectors) reads like qemu-img convert" {
  qemu-img create -q -f parallels -o cluster_size=64k b.hdd 10M
  fmt_io parallels b.hdd 'write -P 0x44 65535 2' 'write -P 0x55 9M 70000' 'write -P 0x66 100 1'
  to_old_signature b.hdd old.hdd
  [ "$(head -c 16 old.hdd)" = WithoutFreeSpace ]
  check_mount old.hdd
  qemu-img convert -f parallels -O raw b.hdd new.raw
  same_bytes new.raw "$TMP/old.hdd.oracle.raw"
  "$IMGFUSE" info old.hdd | grep -q '^  bat_unit: sector$'
}

@test "an image marked in use opens read-only with one warning; --rw checks its BAT, then clears the mark at unmount" {
  qemu-img create -q -f parallels -o cluster_size=64k d.hdd 4M
  fmt_io parallels d.hdd 'write -P 0x12 0 100k'
  patch_le32 d.hdd 44 0x746F6E59
  check_mount d.hdd
  grep -c 'not closed cleanly (in-use flag set); served read-only as it is' "$TMP/daemon.log" | grep -qx 1
  # qemu-img refuses to check or write it until repaired; this driver checks the BAT and opens it
  mount_img --rw d.hdd "$MNT"
  grep -q 'not closed cleanly (in-use flag set); its BAT checks out, opened read-write' "$TMP/daemon.log"
  printf 'hello' | dd of="$MNT/disk.raw" bs=1 seek=3000000 conv=notrunc status=none
  unmount_img
  prl_clean d.hdd
  qemu-img convert -f parallels -O raw d.hdd d.raw
  [ "$(dd if=d.raw bs=1 skip=3000000 count=5 status=none)" = hello ]
  # a dirty image whose BAT names a cluster past the end of the file: read-only only
  patch_le32 d.hdd 44 0x746F6E59
  patch_le32 d.hdd $((64 + 4 * 3)) 0x1000
  refused_open d.hdd "BAT entry 3 (0x1000) points into the header or BAT or past the end of the file (1 problem); the image can only be opened read-only" --rw
  mount_img d.hdd "$MNT"
  run dd if="$MNT/disk.raw" bs=64k skip=3 count=1 of=/dev/null status=none
  [ "$status" -ne 0 ]
  cmp -n 65536 "$MNT/disk.raw" <(python3 -c "import sys; sys.stdout.buffer.write(b'\x12' * 65536)")
}

@test "--rw fio with 4 jobs and crc32c verification on a created image; qemu-img check clean, convert equal" {
  "$IMGFUSE" create -f parallels f.hdd 128M
  qemu-img info --output=json f.hdd | python3 -c 'import json, sys; j = json.load(sys.stdin); assert j["format"] == "parallels" and j["virtual-size"] == 128 << 20, j'
  prl_clean f.hdd
  mount_img --rw f.hdd "$MNT"
  fio --name=v --filename="$MNT/disk.raw" --rw=randwrite --bs=4k --size=32M --numjobs=4 --offset_increment=32M \
    --verify=crc32c --direct=1 --ioengine=psync --verify_fatal=1 --randseed=7 --group_reporting > fio.log 2>&1 || { cat fio.log; return 1; }
  cp "$MNT/disk.raw" shown.raw
  unmount_img
  prl_clean f.hdd
  qemu-img convert -f parallels -O raw f.hdd after.raw
  same_bytes after.raw shown.raw
  # 64 KiB clusters, unaligned block sizes, the old signature
  "$IMGFUSE" create -f parallels -o cluster_size=64k g.hdd 32M
  to_old_signature g.hdd o.hdd
  for img in g.hdd o.hdd; do
    mount_img --rw "$img" "$MNT"
    fio --name=w --filename="$MNT/disk.raw" --rw=randrw --bsrange=512-256k --verify=crc32c --numjobs=4 \
      --size=8M --offset_increment=8M --ioengine=psync --randseed=7 --verify_fatal=1 --group_reporting > fio.log 2>&1 || { cat fio.log; return 1; }
    cp "$MNT/disk.raw" shown.raw
    unmount_img
    prl_clean "$img"
    qemu-img convert -f parallels -O raw "$img" after.raw
    same_bytes after.raw shown.raw
  done
}

@test "imgfuse create -f parallels takes cluster_size as qemu-img does; bad values refused" {
  "$IMGFUSE" create -f parallels -o cluster_size=64k c.hdd 10M
  qemu-img create -q -f parallels -o cluster_size=64k q.hdd 10M
  cmp c.hdd q.hdd
  "$IMGFUSE" create -f parallels d.hdd 5000000
  qemu-img create -q -f parallels q2.hdd 5000000
  cmp d.hdd q2.hdd
  run "$IMGFUSE" create -f parallels -o cluster_size=1000 x.hdd 1M
  [ "$status" -eq 2 ]
  [ "$output" = "imgfuse: x.hdd: cluster_size must be a multiple of 512 up to 64M, not '1000'" ]
  "$IMGFUSE" create -f parallels -o help | grep -q cluster_size
}

@test "--backing on a parallels image exits 2 with one line; create -b too" {
  qemu-img create -q -f parallels p.hdd 1M
  qemu-img create -q -f qcow2 b.qcow2 1M
  run "$IMGFUSE" --foreground --backing b.qcow2 p.hdd "$MNT"
  echo "$output"
  [ "$status" -eq 2 ]
  [ "${#lines[@]}" -eq 1 ]
  [ "$output" = "imgfuse: p.hdd: format 'parallels' does not support backing files" ]
  run "$IMGFUSE" create -f parallels -b b.qcow2 -F qcow2 n.hdd 1M
  [ "$status" -eq 2 ]
  [ "$output" = "imgfuse: n.hdd: format 'parallels' does not support backing files" ]
}

@test "damaged parallels headers are refused with one line naming the file and the reason" {
  qemu-img create -q -f parallels -o cluster_size=64k good.hdd 4M
  cp good.hdd t.hdd && patch_le32 t.hdd 28 0
  refused_open t.hdd "cluster size of 0 sectors is out of range (1 to 4186127)"
  cp good.hdd v.hdd && patch_le32 v.hdd 16 3
  refused_open v.hdd "unsupported Parallels version 3 (only 2)" -f parallels
  cp good.hdd b.hdd && patch_le32 b.hdd 32 0x80000000
  refused_open b.hdd "BAT of 2147483648 entries is larger than the 16777216 entries (64 MiB) limit"
  cp good.hdd e.hdd && patch_le32 e.hdd 32 100000
  refused_open e.hdd "BAT of 100000 entries extends past the end of the file"
  cp good.hdd o.hdd && patch_le32 o.hdd 48 0
  patch_le32 o.hdd 32 200 && truncate -s 1M o.hdd && patch_le32 o.hdd 48 1
  refused_open o.hdd "data offset of 1 sectors lies inside the BAT"
}
