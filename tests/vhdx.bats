#!/usr/bin/env bats
# SPDX-License-Identifier: MIT
# vhdx.bats - the VHDX driver on real mounts (read-only). Fixed and dynamic images made by qemu-img (block
# sizes 1 to 256 MiB, log sizes 1 and 8 MiB) and filled by qemu-io read byte for byte like `qemu-img
# convert -O raw` and like vhdimount (libvhdi); their data map (SEEK_DATA and `imgfuse map`, host offsets
# included) equals the BAT as tests/vhdxlib.py reads it (qemu-img 7.2 has no VHDX block status: its map
# calls every byte data). Damaged images are refused with one line naming the file and the reason.
# Writes (--rw) are tests/vhdx-write.bats.

load helpers

setup() { setup_tmp; cd "$TMP"; }
teardown() { teardown_tmp; }

SEEKMAP="$BATS_TEST_DIRNAME/seekmap.py"
VHDXLIB="$BATS_TEST_DIRNAME/vhdxlib.py"

# imgfuse_data_map IMAGE: the data runs of `imgfuse map --json IMAGE` as "start end host" lines.
imgfuse_data_map() {
  "$IMGFUSE" map --json "$1" | python3 -c '
import json, sys
for e in json.load(sys.stdin):
    if e["data"]:
        print(e["start"], e["start"] + e["length"], e["offset"])'
}

# check_vhdx IMAGE [SAME_AS]: size and bytes of disk.raw equal qemu-img convert of IMAGE (or of SAME_AS,
# an undamaged copy, where QEMU refuses IMAGE); the SEEK_DATA map of disk.raw and the data runs of
# `imgfuse map` (with host offsets) equal the BAT's fully present blocks.
check_vhdx() {
  local img=$1 oracle=$TMP/oracle.raw
  rm -f "$oracle"
  qemu-img convert -f vhdx -O raw "${2:-$img}" "$oracle"
  mount_img "$img" "$MNT"
  [ "$(stat -c %s "$MNT/disk.raw")" -eq "$(stat -c %s "$oracle")" ]
  same_bytes "$MNT/disk.raw" "$oracle"
  local ours want map
  ours=$(python3 "$SEEKMAP" "$MNT/disk.raw")
  unmount_img
  want=$(python3 "$VHDXLIB" map "$img")
  map=$(imgfuse_data_map "$img")
  [ "$map" = "$want" ] || { echo "imgfuse map:"; echo "$map"; echo "BAT:"; echo "$want"; return 1; }
  [ "$ours" = "$(echo "$want" | python3 -c '
import sys
ext = []
for l in sys.stdin:
    if not l.strip():
        continue
    s, t, _ = map(int, l.split())
    if ext and ext[-1][1] == s:
        ext[-1][1] = t
    else:
        ext.append([s, t])
for s, t in ext:
    print(s, t)')" ] || { echo "SEEK_DATA map: $ours"; echo "BAT: $want"; return 1; }
}

# fill IMAGE SIZE_MIB: qemu-io writes at unaligned offsets, across block boundaries, and zeroes (write -z)
write_pattern() {
  local img=$1 size=$(( $2 << 20 ))
  fmt_io vhdx "$img" 'write -P 0x11 1000 5000' "write -P 0x22 $(( size / 3 - 777 )) 1234567" \
    "write -z $(( size / 3 + 4096 )) 65536" "write -P 0x33 $(( size - 4608 )) 4096" \
    "write -z 2000 3000" "write -P 0x44 $(( size / 2 + 1 )) 513"
}

@test "dynamic and fixed, block sizes 1, 8, 32 and 256 MiB, log sizes 1 and 8 MiB: read like qemu-img convert" {
  for cfg in "1M 1M 20" "8M 8M 40" "32M 1M 100" "256M 1M 600" "32M 8M 70"; do
    set -- $cfg
    qemu-img create -q -f vhdx -o block_size=$1,log_size=$2 d.vhdx ${3}M
    check_vhdx d.vhdx
    write_pattern d.vhdx $3
    check_vhdx d.vhdx
    run "$IMGFUSE" info d.vhdx
    [[ "$output" == *"subformat: dynamic"* ]]
    [[ "$output" == *"block_size: $(( ${1%M} << 20 ))"* ]]
    [[ "$output" == *"log_length: $(( ${2%M} << 20 ))"* ]]
    [[ "$output" == *"log: clean"* ]]
    rm -f d.vhdx
  done
  for bs in 1M 8M; do
    qemu-img create -q -f vhdx -o subformat=fixed,block_size=$bs f.vhdx 24M
    write_pattern f.vhdx 24
    check_vhdx f.vhdx
    run "$IMGFUSE" info f.vhdx
    [[ "$output" == *"subformat: fixed"* ]]
    rm -f f.vhdx
  done
}

@test "a sparse 1 GiB image with qemu-io writes and zeroes at unaligned offsets; info facts" {
  qemu-img create -q -f vhdx s.vhdx 1G
  fmt_io vhdx s.vhdx 'write -P 0x5a 0 1' 'write -P 0x5b 33554431 2' 'write -z 100000000 77777' \
    'write -P 0x5c 500000001 3000000' 'write -z 500001000 4096' 'write -P 0x5d 1073741311 512' \
    'write -z 700000000 70000000' 'write -P 0x5e 700000512 512'
  check_vhdx s.vhdx
  run "$IMGFUSE" info s.vhdx
  [[ "$output" == *"logical_sector_size: 512"* ]]
  [[ "$output" == *"physical_sector_size: 512"* ]]
  [[ "$output" == *"block_size: 8388608"* ]]
  [[ "$output" == *"virtual_disk_id: {"* ]]
  [[ "$output" == *"allocated_blocks: "* ]]
  qemu-img convert -f vhdx -O vhdx -o block_size=1M s.vhdx c.vhdx
  check_vhdx c.vhdx
}

@test "vhdimount (libvhdi) reads the same bytes" {
  qemu-img create -q -f vhdx -o block_size=8M v.vhdx 50M
  write_pattern v.vhdx 50
  mkdir vm
  vhdimount v.vhdx vm >/dev/null
  mount_img v.vhdx "$MNT"
  local rc=0
  same_bytes "$MNT/disk.raw" vm/vhdi1 || rc=1
  unmount_img
  fusermount3 -u vm
  [ $rc -eq 0 ]
}

@test "an --overlay over a VHDX is writable and leaves it untouched" {
  qemu-img create -q -f vhdx r.vhdx 4M
  local before; before=$(md5sum < r.vhdx)
  mount_img --overlay ov.qcow2 r.vhdx "$MNT"
  printf 'hello' | dd of="$MNT/disk.raw" bs=1 seek=4096 conv=notrunc status=none
  [ "$(dd if="$MNT/disk.raw" bs=1 skip=4096 count=5 status=none)" = hello ]
  unmount_img
  [ "$(md5sum < r.vhdx)" = "$before" ]
}

# patch IMAGE OFFSET HEXBYTES: overwrite bytes of a file in place.
patch() {
  printf "$(echo "$3" | sed 's/../\\x&/g')" | dd of="$1" bs=1 seek="$2" conv=notrunc status=none
}

# fix_crc IMAGE OFFSET LENGTH: recompute the CRC-32C of the structure at OFFSET (field at +4).
fix_crc() {
  python3 - "$VHDXLIB" "$@" <<'EOF'
import importlib.util, sys
spec = importlib.util.spec_from_file_location("vhdxlib", sys.argv[1]); v = importlib.util.module_from_spec(spec)
spec.loader.exec_module(v)
path, off, n = sys.argv[2], int(sys.argv[3], 0), int(sys.argv[4], 0)
with open(path, "r+b") as f:
    f.seek(off); b = bytearray(f.read(n)); v.set_crc(b); f.seek(off); f.write(b)
EOF
}

@test "headers: the valid one with the higher sequence number wins; neither valid is refused" {
  qemu-img create -q -f vhdx h.vhdx 8M
  fmt_io vhdx h.vhdx 'write -P 0x77 0 1M'
  cp h.vhdx one.vhdx
  # damage the current header: the other one is used
  local cur other
  cur=$("$IMGFUSE" info h.vhdx | sed -n 's/^ *header: //p')
  other=$(( 3 - cur ))
  patch one.vhdx $(( cur * 64 * 1024 + 200 )) ffff
  run "$IMGFUSE" info one.vhdx
  [ "$status" -eq 0 ]
  [[ "$output" == *"header: $other"* ]]
  check_vhdx one.vhdx
  patch one.vhdx $(( other * 64 * 1024 + 200 )) ffff
  refused_open one.vhdx "neither header is valid (signature 'head' and CRC-32C at 64 KiB and 128 KiB)"
  # a valid header of an unknown version
  cp h.vhdx ver.vhdx
  for h in 64 128; do
    patch ver.vhdx $(( h * 1024 + 66 )) 0200
    fix_crc ver.vhdx $(( h * 1024 )) 4096
  done
  refused_open ver.vhdx "unsupported header version 2 (log version 0); version 1 (log version 0) is known"
}

@test "region tables: the second stands in for a damaged first; unknown required regions and bad offsets refused" {
  qemu-img create -q -f vhdx g.vhdx 8M
  fmt_io vhdx g.vhdx 'write -P 0x78 1M 1M'
  cp g.vhdx rt.vhdx
  patch rt.vhdx $(( 192 * 1024 + 100 )) 01
  check_vhdx rt.vhdx g.vhdx
  patch rt.vhdx $(( 256 * 1024 + 100 )) 01
  refused_open rt.vhdx "neither region table is valid (signature 'regi', CRC-32C, at most 2047 entries)"
  # a third region, unknown and required, in both tables
  cp g.vhdx unk.vhdx
  for t in 192 256; do
    patch unk.vhdx $(( t * 1024 + 8 )) 03000000
    patch unk.vhdx $(( t * 1024 + 16 + 64 )) 0123456789abcdef0123456789abcdef00005000000000000000100001000000
    fix_crc unk.vhdx $(( t * 1024 )) 65536
  done
  refused_open unk.vhdx "unknown required region {67452301-ab89-efcd-0123-456789abcdef} in the region table"
  # the BAT region pointing outside the file
  cp g.vhdx out.vhdx
  for t in 192 256; do
    patch out.vhdx $(( t * 1024 + 16 + 16 )) 0000000001000000
    fix_crc out.vhdx $(( t * 1024 )) 65536
  done
  refused_open out.vhdx "BAT region (offset 4294967296, 1048576 bytes) is not 1 MiB aligned, lies outside the file"
}

@test "metadata: bad block size, sector size and missing items are refused by name" {
  qemu-img create -q -f vhdx m.vhdx 8M
  local md=$(( 3 << 20 )) fp
  # qemu-img puts the items at 64 KiB into the metadata region: file parameters first
  fp=$(( md + 65536 ))
  cp m.vhdx bs.vhdx; patch bs.vhdx $fp 00003000
  refused_open bs.vhdx "invalid block size 3145728 (a power of two from 1 MiB to 256 MiB)"
  cp m.vhdx ls.vhdx; patch ls.vhdx $(( md + 65536 + 32 )) 00040000
  refused_open ls.vhdx "invalid sector size (logical 1024, physical 512; 512 or 4096)"
  # the virtual disk size item's GUID changed: an unknown item, required; then not required
  cp m.vhdx no.vhdx; patch no.vhdx $(( md + 32 + 32 )) 00
  refused_open no.vhdx "unknown required metadata item {2fa54200-cd1b-4876-b211-5dbed83bf4b8}"
  patch no.vhdx $(( md + 32 + 32 + 24 )) 00000000
  refused_open no.vhdx "the metadata has no virtual disk size item"
}

# ---------------------------------------------------------------- the log

@test "dirty log: a read-only mount shows the replayed disk, the file's md5 and mtime unchanged; QEMU agrees" {
  vhdx_dirty_image d --stale
  local md5 mtime
  md5=$(md5sum < d.vhdx); mtime=$(stat -c %Y.%y d.vhdx)
  ! cmp -s d.before.raw d.expect.raw || false
  mount_img d.vhdx "$MNT"
  same_bytes "$MNT/disk.raw" d.expect.raw
  grep -q "log: replayed in memory (2 entries, sequence" "$MNT/info"
  python3 "$SEEKMAP" "$MNT/disk.raw" > seek.txt
  unmount_img
  [ "$(md5sum < d.vhdx)" = "$md5" ]
  [ "$(stat -c %Y.%y d.vhdx)" = "$mtime" ]
  # blocks 0 to 2, 5 and 11 were present: the log set block 1 to ZERO and gave block 3 a home past the old end
  [ "$(cat seek.txt)" = "$(printf '0 1048576\n2097152 4194304\n5242880 6291456\n11534336 12582912')" ] || { cat seek.txt; false; }
  run "$IMGFUSE" map --json d.vhdx
  [ "$status" -eq 0 ]
  # blocks the log wrote are read through the overlay in memory (no host offset), the others from the file
  [[ "$output" == *'{ "start": 3145728, "length": 1048576, "depth": 0, "present": true, "zero": false, "data": true},'* ]]
  [[ "$output" == *'{ "start": 0, "length": 1048576, "depth": 0, "present": true, "zero": false, "data": true},'* ]]
  [[ "$output" == *'{ "start": 2097152, "length": 1048576, "depth": 0, "present": true, "zero": false, "data": true, "offset": '* ]]
  # QEMU replays the log of a copy when it opens it read-write: the same disk
  cp d.vhdx q.vhdx
  qemu-io -f vhdx -c 'read 0 512' q.vhdx >/dev/null
  qemu-img convert -f vhdx -O raw q.vhdx q.raw
  same_bytes q.raw d.expect.raw
}

@test "dirty log: no complete sequence and a file shorter than the log's flushed offset refused" {
  vhdx_dirty_image c --break-crc
  refused_open c.vhdx "the header names a log (LogGuid set) but the log holds no valid sequence of entries"
  vhdx_dirty_image t --flushed-past-end
  refused_open t.vhdx "the file ($(stat -c %s t.vhdx) bytes) is shorter than the log's flushed file offset $(( $(stat -c %s t.vhdx) + 1048576 )): it was truncated"
}

# ---------------------------------------------------------------- differencing disks

MAKE_DIFF="$BATS_TEST_DIRNAME/vhdx-make-diff.py"

# make_parent: p.vhdx (dynamic, 1 MiB blocks, 10 MiB, 0xaa but for an empty block) and p.raw.
make_parent() {
  qemu-img create -q -f vhdx -o block_size=1M p.vhdx 10M
  fmt_io vhdx p.vhdx 'write -P 0xaa 0 7M' 'write -P 0xab 8M 2M'
  qemu-img convert -f vhdx -O raw p.vhdx p.raw
}

@test "differencing: parent by relative_path; every block state, sector bitmaps; the child's sectors on top" {
  make_parent
  python3 "$MAKE_DIFF" p.vhdx p.raw c.vhdx expect.raw
  mount_img c.vhdx "$MNT"
  same_bytes "$MNT/disk.raw" expect.raw
  grep -q "backing_resolved: $TMP/p.vhdx" "$MNT/info"
  grep -q "subformat: differencing" "$MNT/info"
  grep -q "parent_locator: relative_path" "$MNT/info"
  grep -q "parent_linkage: {" "$MNT/info"
  unmount_img
  # this layer alone: its own sectors, the parent's read as zeros
  mount_img --no-backing c.vhdx "$MNT"
  cmp -n 1048576 "$MNT/disk.raw" expect.raw
  [ "$(dd if="$MNT/disk.raw" bs=512 skip=2049 count=1 status=none | od -An -tx1 | tr -d ' \n' | head -c 4)" = 0000 ]
  [ "$(dd if="$MNT/disk.raw" bs=512 skip=2051 count=1 status=none | od -An -tx1 | tr -d ' \n' | head -c 4)" = 2222 ]
  unmount_img
}

@test "differencing: vhdimount (libvhdi) reads the same bytes" {
  make_parent
  python3 "$MAKE_DIFF" p.vhdx p.raw c.vhdx expect.raw --plain 1
  mkdir vm
  vhdimount c.vhdx vm >/dev/null
  mount_img c.vhdx "$MNT"
  local rc=0
  same_bytes "$MNT/disk.raw" vm/vhdi2 || rc=1
  same_bytes "$MNT/disk.raw" expect.raw || rc=1
  unmount_img
  fusermount3 -u vm
  [ $rc -eq 0 ]
}

@test "differencing: volume_path and absolute_win32_path name the parent by base name when relative_path fails" {
  make_parent
  python3 "$MAKE_DIFF" p.vhdx p.raw c.vhdx expect.raw --relative '..\gone\p.vhdx'
  mount_img c.vhdx "$MNT"
  same_bytes "$MNT/disk.raw" expect.raw
  grep -q "parent_locator: volume_path" "$MNT/info"
  unmount_img
  python3 "$MAKE_DIFF" p.vhdx p.raw a.vhdx expect.raw --only absolute_win32_path
  mount_img a.vhdx "$MNT"
  same_bytes "$MNT/disk.raw" expect.raw
  grep -q "parent_locator: absolute_win32_path" "$MNT/info"
  grep -q "backing_resolved: $TMP/p.vhdx" "$MNT/info"
  unmount_img
}

@test "differencing: a parent whose DataWriteGuid is not the child's parent_linkage is refused by one line" {
  make_parent
  python3 "$MAKE_DIFF" p.vhdx p.raw c.vhdx expect.raw --linkage '{01234567-89ab-cdef-0123-456789abcdef}'
  local got
  got=$(python3 -c "import sys; sys.path.insert(0, '$BATS_TEST_DIRNAME'); import vhdxlib as v; print(v.guid_str(v.Image('p.vhdx').data_write_guid))")
  refused_open c.vhdx "parent $TMP/p.vhdx has DataWriteGuid $got, but this differencing disk's parent_linkage is {01234567-89ab-cdef-0123-456789abcdef}"
  # no parent at all: refused by the backing-name policy's line
  python3 "$MAKE_DIFF" p.vhdx p.raw o.vhdx expect.raw --only relative_path --relative 'other.vhdx'
  run "$IMGFUSE" info o.vhdx
  echo "$output"
  [ "$status" -eq 2 ]
  [ "${#lines[@]}" -eq 1 ]
  [[ "${lines[0]}" == "imgfuse: "*"other.vhdx"* ]]
}

# set_logical IMAGE BYTES: rewrite the logical sector size item of a qemu-img-made VHDX (qemu-img always
# writes 512; its items sit at 64 KiB into the metadata region at 3 MiB, the logical sector size fourth).
set_logical() {
  patch_le "$1" $(( (3 << 20) + 65536 + 32 )) 4 "$2"
}

@test "4096-byte logical sectors: a dynamic disk, and a differencing one (chunk ratio and sector bitmaps in 4 KiB units)" {
  qemu-img create -q -f vhdx -o block_size=1M p.vhdx 10M
  fmt_io vhdx p.vhdx 'write -P 0xaa 0 7M' 'write -P 0xab 8M 2M'
  qemu-img convert -f vhdx -O raw p.vhdx p.raw
  set_logical p.vhdx 4096
  run "$IMGFUSE" info p.vhdx
  [[ "$output" == *"logical_sector_size: 4096"* ]]
  mount_img p.vhdx "$MNT"
  same_bytes "$MNT/disk.raw" p.raw
  unmount_img
  python3 "$MAKE_DIFF" p.vhdx p.raw c.vhdx expect.raw
  mount_img c.vhdx "$MNT"
  same_bytes "$MNT/disk.raw" expect.raw
  unmount_img
  # block 1 holds logical sectors 0, 3-10 and 255 of 4 KiB: bytes 4096-12287 of it are the parent's
  [ "$(python3 -c "
d = open('expect.raw', 'rb').read(); p = open('p.raw', 'rb').read(); M = 1 << 20
print(d[M + 4096:M + 12288] == p[M + 4096:M + 12288], d[M + 12288] == 0x22, d[M + 11 * 4096 - 1] == 0x22, d[2 * M - 1] == 0x23)")" = "True True True True" ]
  # a child whose logical sector size is not the parent's is refused
  set_logical p.vhdx 512
  refused_open c.vhdx "has 512-byte logical sectors, this differencing disk 4096"
}
