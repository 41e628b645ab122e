#!/usr/bin/env bats
# SPDX-License-Identifier: MIT
# vmdk.bats - the VMDK driver on real mounts. Images of every subformat qemu-img makes (monolithicSparse,
# monolithicFlat, twoGbMaxExtentSparse, twoGbMaxExtentFlat, streamOptimized; zeroed grains, adapter
# types, sizes that are not a multiple of the grain) filled by qemu-io or converted from a pattern read
# byte for byte like `qemu-img convert -O raw`, with QEMU's data map; delta links read the parent under
# the child's grains; extent names escaping the descriptor's directory are refused unless
# --unsafe-backing; damaged images are refused with one line naming the file, or read EIO on the
# damaged grain only; --rw mounts write sparse and flat extents (unaligned, into empty, allocated and
# zeroed grains, through a delta link) and leave the image `qemu-img check` clean and equal to the
# expected raw (qemu-img compare); stream-optimized and ZERO extents refuse --rw.

load helpers

setup() { setup_tmp; cd "$TMP"; }
teardown() { teardown_tmp; }

SEEKMAP="$BATS_TEST_DIRNAME/seekmap.py"

# check_mount IMAGE [options]: size and bytes of disk.raw equal QEMU's view; with MAP=1 the SEEK_DATA
# map of disk.raw equals qemu-img map's data ranges too.
check_mount() {
  local img=$1; shift
  local oracle="$TMP/$(basename "$img").oracle.raw"
  qemu-img convert -f vmdk -O raw "$img" "$oracle"
  mount_img "$@" "$img" "$MNT"
  [ "$(stat -c %s "$MNT/disk.raw")" -eq "$(stat -c %s "$oracle")" ]
  same_bytes "$MNT/disk.raw" "$oracle"
  local ours theirs=
  ours=$(python3 "$SEEKMAP" "$MNT/disk.raw")
  [ -n "${MAP:-}" ] && theirs=$(qemu_data_extents vmdk "$img")
  unmount_img
  if [ -n "${MAP:-}" ] && [ "$ours" != "$theirs" ]; then
    echo "map differs for $img"; echo "imgfuse:"; echo "$ours"; echo "qemu-img:"; echo "$theirs"
    return 1
  fi
}

# patch IMAGE OFFSET STRUCT VALUE: packs VALUE (python struct format STRUCT, little-endian) at OFFSET.
patch() {
  python3 -c 'import struct,sys
p, off, fmt, v = sys.argv[1], int(sys.argv[2], 0), sys.argv[3], int(sys.argv[4], 0)
with open(p, "r+b") as f:
    f.seek(off); f.write(struct.pack("<" + fmt, v))' "$@"
}

# fill IMAGE: data in the first grain, across a grain boundary, a partial grain and the last sectors.
fill() {
  fmt_io vmdk "$1" "write -P 0xa1 0 4k" "write -P 0xb2 60k 8k" "write -P 0xc3 200k 1k" "write -P 0xd4 $(( $2 - 1024 )) 1k"
}

@test "monolithicSparse: bytes, size and data map equal qemu-img's (size not a multiple of the grain)" {
  local size=$(( 1000 * 1024 + 512 ))
  qemu-img create -q -f vmdk -o subformat=monolithicSparse d.vmdk $size
  fill d.vmdk $size
  MAP=1 check_mount d.vmdk
  run "$IMGFUSE" info d.vmdk
  [[ "$output" == *"subformat: monolithicSparse"* ]]
  [[ "$output" == *"virtual_size: $size "* ]]
}

@test "monolithicSparse with zeroed grains and a SCSI adapter: zero grains read as zeros, map as QEMU's" {
  qemu-img create -q -f vmdk -o zeroed_grain=on,adapter_type=lsilogic z.vmdk 1M
  fmt_io vmdk z.vmdk "write -P 0x55 0 300k" "write -z 64k 64k" "write -z 512k 128k" "write -P 0x66 600k 4k"
  MAP=1 check_mount z.vmdk
  run "$IMGFUSE" map z.vmdk
  [[ "$output" == *"zero"* ]]
  [[ "$output" == *"zeroed grains"* ]] || "$IMGFUSE" info z.vmdk | grep -q "zeroed grains"
}

@test "monolithicSparse: the redundant grain directory is checked, and a damaged one refuses the image" {
  qemu-img create -q -f vmdk r.vmdk 1M
  fmt_io vmdk r.vmdk "write -P 0x12 0 64k"
  "$IMGFUSE" info r.vmdk | grep -q "redundant GD"
  patch r.vmdk 48 Q 0x7fffffff   # rgdOffset far past the end of the file
  refused_open r.vmdk "redundant grain directory lies outside the file"
}

@test "monolithicFlat and twoGbMaxExtentFlat: descriptor files and their flat extents read exactly" {
  for sf in monolithicFlat twoGbMaxExtentFlat; do
    qemu-img create -q -f vmdk -o subformat=$sf,adapter_type=buslogic $sf.vmdk 777k
    fill $sf.vmdk $(( 777 * 1024 ))
    check_mount $sf.vmdk
  done
  "$IMGFUSE" info monolithicFlat.vmdk | grep -q "monolithicFlat-flat.vmdk flat"
}

@test "twoGbMaxExtentSparse: a descriptor with a sparse extent file reads exactly, map as QEMU's" {
  qemu-img create -q -f vmdk -o subformat=twoGbMaxExtentSparse t.vmdk 3M
  fill t.vmdk $(( 3 * 1024 * 1024 ))
  MAP=1 check_mount t.vmdk
}

@test "multi-extent descriptor: two flat, one zero and one sparse extent in order, sizes summed" {
  head -c 64k /dev/urandom > a.bin
  head -c 32k /dev/urandom > b.bin
  qemu-img create -q -f vmdk -o subformat=twoGbMaxExtentSparse s.vmdk 128k
  fmt_io vmdk s.vmdk "write -P 0x77 64k 4k"
  printf '# Disk DescriptorFile\nversion=1\nCID=12345678\nparentCID=ffffffff\ncreateType="custom"\n\n' > m.vmdk
  printf 'RW 128 FLAT "a.bin" 0\nRDONLY 64 FLAT "b.bin" 0\nRW 16 ZERO\nRW 256 SPARSE "s-s001.vmdk"\n' >> m.vmdk
  printf 'ddb.adapterType = "ide"\n' >> m.vmdk
  qemu-img convert -O raw s.vmdk s.raw
  cat a.bin b.bin <(head -c 8k /dev/zero) s.raw > expect.raw
  mount_img m.vmdk "$MNT"
  [ "$(stat -c %s "$MNT/disk.raw")" -eq $(( (64 + 32 + 8 + 128) * 1024 )) ]
  same_bytes "$MNT/disk.raw" expect.raw
  unmount_img
}

@test "streamOptimized: compressed grains (qemu-img convert from a pattern) read exactly" {
  python3 -c 'import sys; sys.stdout.buffer.write(bytes((i * 7 + (i >> 12)) & 255 for i in range(1500 * 1024 + 512)))' > pat.raw
  dd if=/dev/zero of=pat.raw bs=64k seek=5 count=3 conv=notrunc status=none
  qemu-img convert -f raw -O vmdk -o subformat=streamOptimized pat.raw s.vmdk
  check_mount s.vmdk
  same_bytes "$(raw_of s.vmdk)" pat.raw
  qemu-img create -q -f vmdk -o subformat=streamOptimized e.vmdk 1M
  check_mount e.vmdk
  run "$IMGFUSE" map s.vmdk
  [[ "$output" == *"compressed"* ]] || [[ "$output" == *"data"* ]]
}

@test "streamOptimized: a grain that does not inflate to one grain reads EIO, the rest reads" {
  python3 -c 'import sys; sys.stdout.buffer.write(bytes((i * 3) & 255 for i in range(256 * 1024)))' > pat.raw
  qemu-img convert -f raw -O vmdk -o subformat=streamOptimized pat.raw s.vmdk
  # the first grain marker follows the header and descriptor: damage its compressed bytes
  local off
  off=$(python3 -c 'import struct
d = open("s.vmdk", "rb").read()
o = struct.unpack_from("<Q", d, 64)[0] * 512
print(o + 12 + 10)')
  printf '\xff\xff\xff\xff\xff\xff\xff\xff' | dd of=s.vmdk bs=1 seek=$off conv=notrunc status=none
  mount_img s.vmdk
  run dd if="$MNT/disk.raw" of=/dev/null bs=64k count=1 iflag=direct status=none
  [ "$status" -ne 0 ]
  [[ "$output" == *"Input/output error"* ]]
  run cmp <(dd if="$MNT/disk.raw" bs=64k skip=1 status=none) <(dd if=pat.raw bs=64k skip=1 status=none)
  [ "$status" -eq 0 ]
  unmount_img
  grep -q "does not inflate to one grain" "$TMP/daemon.log"
}

@test "delta link: a child made with -b base.vmdk reads the parent under its own grains" {
  qemu-img create -q -f vmdk base.vmdk 2M
  fmt_io vmdk base.vmdk "write -P 0x22 0 1M" "write -P 0x23 1536k 512k"
  qemu-img create -q -f vmdk -b base.vmdk -F vmdk child.vmdk
  fmt_io vmdk child.vmdk "write -P 0x33 100k 200k" "write -P 0x34 1600k 3k"
  check_mount child.vmdk
  run "$IMGFUSE" info child.vmdk
  [[ "$output" == *"backing_resolved: $TMP/base.vmdk"* ]]
  [[ "$output" == *"parent_cid_matches: yes"* ]]
  # the parent changed after the child was made: the CID no longer matches, a warning is logged
  fmt_io vmdk base.vmdk "write -P 0x44 0 512"
  run "$IMGFUSE" info child.vmdk
  [[ "$output" == *"parent_cid_matches: no"* ]]
  mount_img child.vmdk
  cat "$MNT/disk.raw" > /dev/null
  unmount_img
  grep -q "does not match the CID" "$TMP/daemon.log"
}

@test "extent paths: /etc/passwd, ../outside.img and a symlink out of the directory are refused on one line" {
  mkdir sub
  head -c 1M /dev/zero > outside.img
  ln -s ../outside.img sub/link.img
  desc() { printf '# Disk DescriptorFile\nversion=1\nCID=1\nparentCID=ffffffff\ncreateType="monolithicFlat"\nRW %s FLAT "%s" 0\n' "$1" "$2"; }
  desc 1 /etc/passwd > sub/abs.vmdk
  desc 2048 ../outside.img > sub/dotdot.vmdk
  desc 2048 link.img > sub/sym.vmdk
  refused_open sub/abs.vmdk 'extent "/etc/passwd" refused: absolute extent paths are not followed'
  refused_open sub/dotdot.vmdk 'extent "../outside.img" refused: it lies outside the image'
  refused_open sub/sym.vmdk 'extent "link.img" refused: it lies outside the image'
  # the policy is the backing-name policy: --unsafe-backing follows the name as written
  mount_img --unsafe-backing sub/dotdot.vmdk "$MNT"
  same_bytes "$MNT/disk.raw" outside.img
  unmount_img
}

# wr FILE... -- OFF LEN BYTE...: pwrite LEN bytes of BYTE at OFF into every FILE (the mount and the expected raw).
wr() {
  python3 -c 'import os, sys
i = sys.argv.index("--")
files, ops = sys.argv[1:i], sys.argv[i + 1:]
for f in files:
    fd = os.open(f, os.O_RDWR)
    for j in range(0, len(ops), 3):
        off, n, b = int(ops[j], 0), int(ops[j + 1], 0), int(ops[j + 2], 0)
        os.pwrite(fd, bytes([b]) * n, off)
    os.close(fd)' "$@"
}

# rw_roundtrip IMAGE SIZE: unaligned writes through a --rw mount into empty, allocated and zeroed grains,
# across grain boundaries and at the very end; the mount reads what was written, and after unmount
# qemu-img check is clean and qemu-img compare finds the image equal to the expected raw.
rw_roundtrip() {
  local img=$1 size=$2
  qemu-img convert -f vmdk -O raw "$img" expect.raw
  mount_img --rw "$img" "$MNT"
  wr "$MNT/disk.raw" expect.raw -- 1000 3000 0x21  70001 5000 0x22  $(( 131072 - 100 )) 300 0x23 \
     $(( size - 700 )) 700 0x24  300000 200000 0x25  65 1 0x26
  same_bytes "$MNT/disk.raw" expect.raw
  unmount_img
  run qemu-img check -f vmdk "$img"
  echo "$output"
  [ "$status" -eq 0 ]
  [[ "$output" == *"No errors were found"* ]]
  qemu-img compare -f vmdk -F raw "$img" expect.raw
  mount_img "$img" "$MNT"
  same_bytes "$MNT/disk.raw" expect.raw
  unmount_img
}

@test "--rw monolithicSparse: unaligned writes into empty, allocated and zeroed grains; check clean, compare equal" {
  qemu-img create -q -f vmdk w.vmdk 3M
  fmt_io vmdk w.vmdk "write -P 0x11 64k 64k"
  rw_roundtrip w.vmdk $(( 3 * 1024 * 1024 ))
  qemu-img create -q -f vmdk -o zeroed_grain=on z.vmdk 1M
  fmt_io vmdk z.vmdk "write -P 0x11 0 1M" "write -z 0 128k" "write -z 256k 64k"
  rw_roundtrip z.vmdk $(( 1024 * 1024 ))
}

@test "--rw twoGbMaxExtentSparse, monolithicFlat and twoGbMaxExtentFlat: extent files are written; check clean" {
  for sf in twoGbMaxExtentSparse monolithicFlat twoGbMaxExtentFlat; do
    qemu-img create -q -f vmdk -o subformat=$sf $sf.vmdk 2M
    fmt_io vmdk $sf.vmdk "write -P 0x31 0 100k"
    rw_roundtrip $sf.vmdk $(( 2 * 1024 * 1024 ))
  done
}

@test "--rw delta link: a first write into a grain copies the rest of it from the parent" {
  qemu-img create -q -f vmdk base.vmdk 1M
  fmt_io vmdk base.vmdk "write -P 0x22 0 1M"
  qemu-img create -q -f vmdk -b base.vmdk -F vmdk child.vmdk
  rw_roundtrip child.vmdk $(( 1024 * 1024 ))
  # the parent was not touched
  head -c 1M /dev/zero | tr '\0' '\042' > base.raw
  qemu-img compare -f vmdk -F raw base.vmdk base.raw
}

@test "--rw: the first write gives the disk a new CID, so a delta made on it no longer matches" {
  qemu-img create -q -f vmdk base.vmdk 1M
  qemu-img create -q -f vmdk -b base.vmdk -F vmdk child.vmdk
  "$IMGFUSE" info child.vmdk | grep -q "parent_cid_matches: yes"
  mount_img --rw base.vmdk "$MNT"
  wr "$MNT/disk.raw" -- 4096 512 0x55
  unmount_img
  run "$IMGFUSE" info child.vmdk
  [[ "$output" == *"parent_cid_matches: no"* ]]
  qemu-img check base.vmdk
}

@test "--rw: a failed grain table update (blkdebug) fails that write only; the image stays clean and unchanged there" {
  qemu-img create -q -f vmdk w.vmdk 1M
  fmt_io vmdk w.vmdk "write -P 0x11 0 64k"
  qemu-img convert -O raw w.vmdk expect.raw
  echo "event=l2_update errno=5 once" > rules
  mount_img --rw --blkdebug rules w.vmdk "$MNT"
  run dd if=/dev/zero of="$MNT/disk.raw" bs=4k seek=64 count=1 conv=notrunc oflag=direct status=none
  [ "$status" -ne 0 ]
  wr "$MNT/disk.raw" expect.raw -- 4096 100 0x42  300000 512 0x43
  unmount_img
  run qemu-img check -f vmdk w.vmdk
  echo "$output"
  [[ "$output" == *"No errors were found"* ]]
  qemu-img compare -f vmdk -F raw w.vmdk expect.raw
}

@test "--rw is refused with one line for stream-optimized and ZERO extents" {
  qemu-img create -q -f vmdk -o subformat=streamOptimized s.vmdk 1M
  refused_open s.vmdk "writing stream-optimized (compressed) extents is not supported" --rw
  printf '# Disk DescriptorFile\nversion=1\nCID=1\nparentCID=ffffffff\nRW 8 ZERO\n' > z.vmdk
  refused_open z.vmdk "writing ZERO extents is not supported" --rw
}

@test "damaged sparse headers are refused with one line naming the file and the field" {
  qemu-img create -q -f vmdk d.vmdk 1M
  fmt_io vmdk d.vmdk "write -P 0x12 0 64k"
  cp d.vmdk v.vmdk; patch v.vmdk 4 I 4
  refused_open v.vmdk "unsupported VMDK sparse extent version 4"
  cp d.vmdk g.vmdk; patch g.vmdk 20 Q $(( 1 << 20 ))
  refused_open g.vmdk "grain size of 1048576 sectors is not a power of two from 1 to"
  cp d.vmdk g3.vmdk; patch g3.vmdk 20 Q 96
  refused_open g3.vmdk "grain size of 96 sectors"
  cp d.vmdk n.vmdk; patch n.vmdk 44 I 1024
  refused_open n.vmdk "1024 entries per grain table"
  cp d.vmdk gd.vmdk; patch gd.vmdk 56 Q 0x100000
  refused_open gd.vmdk "grain directory lies outside the file"
  cp d.vmdk c.vmdk; patch c.vmdk 12 Q $(( 1 << 55 ))
  refused_open c.vmdk "capacity too large"
  cp d.vmdk c2.vmdk; patch c2.vmdk 12 Q $(( 1 << 52 ))
  refused_open c2.vmdk "68719476736 grain tables exceed the limit of 4194304"
  cp d.vmdk cow.vmdk; printf 'COWD' | dd of=cow.vmdk conv=notrunc status=none
  refused_open cow.vmdk "ESX sparse (COWD) extents are not supported"
  cp d.vmdk t.vmdk; truncate -s 4096 t.vmdk
  refused_open t.vmdk "lies outside the file"
  cp d.vmdk dz.vmdk; patch dz.vmdk 36 Q 1000
  refused_open dz.vmdk "embedded descriptor of 1000 sectors exceeds the limit"
}

@test "a grain table entry past the end of the file reads EIO for that grain only, logged once" {
  qemu-img create -q -f vmdk d.vmdk 1M
  fmt_io vmdk d.vmdk "write -P 0x12 0 64k" "write -P 0x13 64k 64k"
  # first GT (from the first GD entry): point entry 0 far past the end
  python3 -c 'import struct
with open("d.vmdk", "r+b") as f:
    h = f.read(512)
    gd = struct.unpack_from("<Q", h, 56)[0] * 512
    f.seek(gd); gt = struct.unpack("<I", f.read(4))[0] * 512
    f.seek(gt); f.write(struct.pack("<I", 0x7ffffff0))'
  mount_img d.vmdk
  run dd if="$MNT/disk.raw" of=/dev/null bs=64k count=1 iflag=direct status=none
  [ "$status" -ne 0 ]
  run dd if="$MNT/disk.raw" of=/dev/null bs=64k count=1 iflag=direct status=none
  [ "$status" -ne 0 ]
  cmp <(dd if="$MNT/disk.raw" bs=64k skip=1 count=1 status=none) <(python3 -c 'import sys; sys.stdout.buffer.write(b"\x13" * 65536)')
  unmount_img
  [ "$(grep -c "points past the end of the file" "$TMP/daemon.log")" -eq 1 ]
}

@test "descriptor files: garbage lines, overlong lines, huge files and extent size mismatches are refused" {
  head -c 64k /dev/zero > f.bin
  printf '# Disk DescriptorFile\nversion=1\nthis is not a descriptor line\nRW 128 FLAT "f.bin" 0\n' > g.vmdk
  refused_open g.vmdk "descriptor line 3 is neither a comment"
  { printf '# Disk DescriptorFile\n# '; head -c 2000 /dev/zero | tr '\0' x; printf '\nRW 128 FLAT "f.bin" 0\n'; } > l.vmdk
  refused_open l.vmdk "descriptor line 2 is longer than 1024 bytes"
  { printf '# Disk DescriptorFile\nRW 128 FLAT "f.bin" 0\n'; head -c 70000 /dev/zero | tr '\0' '#'; } > h.vmdk
  refused_open h.vmdk "exceeds the limit of 65536 bytes"
  printf '# Disk DescriptorFile\nRW 256 FLAT "f.bin" 0\n' > s.vmdk
  refused_open s.vmdk 'flat extent "f.bin" (65536 bytes) is shorter than the 131072 bytes'
  printf '# Disk DescriptorFile\nRW 128 FLAT "f.bin\n' > q.vmdk
  refused_open q.vmdk "descriptor line 2 is not a valid extent line"
  printf '# Disk DescriptorFile\nRW 128 VMFSSPARSE "f.bin"\n' > v.vmdk
  refused_open v.vmdk "extent type VMFSSPARSE is not supported"
  printf '# Disk DescriptorFile\nversion=1\n' > e.vmdk
  refused_open e.vmdk "the descriptor names no extent"
  # one sparse file with a 16 MiB grain directory, named 20 times: the directories' memory is bounded
  python3 -c 'import struct
cap, n_gts = (1 << 22) * 512, 1 << 22
h = struct.pack("<IIIQQQQIQQQ", 0x564D444B, 1, 0, cap, 1, 0, 0, 512, 0, 1, 1) + b"\0\n \r\n\0\0"
with open("big.vmdk", "wb") as f:
    f.write(h.ljust(512, b"\0")); f.truncate(512 + 4 * n_gts)
with open("many.vmdk", "w") as f:
    f.write("# Disk DescriptorFile\n" + "RW %d SPARSE \"big.vmdk\"\n" % cap * 20)'
  refused_open many.vmdk "extent big.vmdk: the grain directories of the image's extents exceed 64 MiB together"
}

@test "delta links: the parent's CID is checked once the chain is attached, before any read" {
  qemu-img create -q -f vmdk base.vmdk 2M
  qemu-img create -q -f vmdk -b base.vmdk -F vmdk child.vmdk
  fmt_io vmdk base.vmdk "write -P 0x44 0 512"   # the parent changes after the child was made
  run "$IMGFUSE" info child.vmdk
  [ "$status" -eq 0 ]
  [[ "$output" == *"child.vmdk: warning: parentCID "*" does not match the CID "*" of the parent "*"base.vmdk"* ]]
  mount_img child.vmdk "$MNT"   # nothing reads disk.raw
  unmount_img
  grep -q "does not match the CID" "$TMP/daemon.log"
}
