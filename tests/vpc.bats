#!/usr/bin/env bats
# SPDX-License-Identifier: MIT
# vpc.bats - the VHD ("vpc") driver on real mounts. Dynamic and fixed images made by qemu-img and filled
# by qemu-io read byte for byte like `qemu-img convert -O raw`, with the same size and data map;
# differencing disks (written by tests/vpc-make-diff.py, QEMU cannot make them) read as the parent with
# the child's sectors on top, checked against the expected bytes and against vhdimount (libvhdi);
# writes through --rw mounts (qemu-io and dd at unaligned offsets, fio with 4 jobs and verification) keep
# the image valid (tests/vpc-check.py and vhdiinfo: `qemu-img check` does not support vpc) and exact
# (qemu-img compare); damaged images are refused with one line naming the file and the reason.

load helpers

setup() { setup_tmp; cd "$TMP"; }
teardown() { teardown_tmp; }

SEEKMAP="$BATS_TEST_DIRNAME/seekmap.py"
MAKE_DIFF="$BATS_TEST_DIRNAME/vpc-make-diff.py"

# check_mount IMAGE [options]: size, bytes and SEEK_DATA map of disk.raw equal QEMU's view. With
# HOST_MAP=1 (fixed disks) the map must be the image file's own SEEK_DATA map instead: holes of the file
# are holes of the disk, where qemu-img map calls a fixed VHD data throughout.
check_mount() {
  local img=$1; shift
  local oracle="$TMP/$(basename "$img").oracle.raw"
  qemu-img convert -f vpc -O raw "$img" "$oracle"
  mount_img "$@" "$img" "$MNT"
  [ "$(stat -c %s "$MNT/disk.raw")" -eq "$(stat -c %s "$oracle")" ]
  same_bytes "$MNT/disk.raw" "$oracle"
  local ours theirs
  ours=$(python3 "$SEEKMAP" "$MNT/disk.raw")
  if [ -n "${HOST_MAP:-}" ]; then
    theirs=$(python3 "$SEEKMAP" "$img" 0 "$(stat -c %s "$oracle")")
  else
    theirs=$(qemu_data_extents vpc "$img")
  fi
  unmount_img
  if [ "$ours" != "$theirs" ]; then
    echo "map differs for $img"; echo "imgfuse:"; echo "$ours"; echo "qemu-img:"; echo "$theirs"
    return 1
  fi
}

# patch IMAGE OFFSET HEXBYTES: overwrite bytes of a file in place.
patch() {
  printf "$(echo "$3" | sed 's/../\\x&/g')" | dd of="$1" bs=1 seek="$2" conv=notrunc status=none
}

# ---------------------------------------------------------------- dynamic and fixed disks made by QEMU

@test "dynamic: empty, partly allocated, odd offsets, 4 KiB in an empty block read like qemu-img convert" {
  qemu-img create -q -f vpc e.vhd 7M
  check_mount e.vhd
  qemu-img create -q -f vpc d.vhd 13M
  fmt_io vpc d.vhd 'write -P 0x11 0 7000' 'write -P 0x22 3M 1M' 'write -P 0x33 6291968 4096' \
    'write -P 0x44 9000000 1234567' 'write -P 0x55 300 1'
  check_mount d.vhd
  # the 4 KiB write allocated a whole block, QEMU-style: the bitmap says every sector is present
  run "$IMGFUSE" info d.vhd
  [[ "$output" == *"subformat: dynamic"* ]]
  [[ "$output" == *"block_size: 2097152"* ]]
  [[ "$output" == *"allocated_blocks: 4"* ]]
}

@test "dynamic: sizes not a multiple of the block size, from the CHS geometry and from force_size" {
  for size in 1000k 5M 33M; do
    qemu-img create -q -f vpc a.vhd $size
    fmt_io vpc a.vhd 'write -P 0x66 0 64k' "write -P 0x77 $(( $(qemu-img info --output=json a.vhd | python3 -c 'import json,sys; print(json.load(sys.stdin)["virtual-size"])') - 1024 )) 1024"
    check_mount a.vhd
    qemu-img create -q -f vpc -o force_size=on b.vhd $size
    fmt_io vpc b.vhd 'write -P 0x68 4k 4k'
    check_mount b.vhd
    run "$IMGFUSE" info b.vhd
    [[ "$output" == *"creator_app: qem2"* ]]
    [[ "$output" == *"size_from: current_size"* ]]
    rm -f a.vhd b.vhd
  done
}

@test "fixed: read with --format vpc like qemu-img convert; probed, it is raw (as in QEMU)" {
  qemu-img create -q -f vpc -o subformat=fixed f.vhd 6M
  fmt_io vpc f.vhd 'write -P 0x12 0 1M' 'write -P 0x34 5000000 77777'
  HOST_MAP=1 check_mount f.vhd -f vpc
  run "$IMGFUSE" info -f vpc f.vhd
  [[ "$output" == *"subformat: fixed"* ]]
  # without --format it has no magic at offset 0: raw, footer included, exactly like qemu-img
  mount_img f.vhd "$MNT"
  [ "$(stat -c %s "$MNT/disk.raw")" -eq "$(stat -c %s f.vhd)" ]
  same_bytes "$MNT/disk.raw" f.vhd
}

@test "qemu-img convert -O vpc from raw (dynamic and fixed) reads back the raw bytes" {
  python3 -c "
import sys
d = bytearray(9 << 20)
for off, n, b in ((0, 5000, 1), (2 << 20, 4096, 2), (5 << 20, 1 << 20, 3), ((9 << 20) - 700, 700, 4)):
    d[off:off + n] = bytes([b]) * n
open('src.raw', 'wb').write(d)"
  qemu-img convert -f raw -O vpc -o force_size=on src.raw dyn.vhd
  qemu-img convert -f raw -O vpc -o subformat=fixed,force_size=on src.raw fix.vhd
  check_mount dyn.vhd
  HOST_MAP=1 check_mount fix.vhd -f vpc
  mount_img dyn.vhd "$MNT"
  same_bytes "$MNT/disk.raw" src.raw
}

# ---------------------------------------------------------------- differencing disks

# make_parent: p.vhd (dynamic, 8 MiB + CHS rounding, every byte 0xaa except one empty block) and p.raw.
make_parent() {
  qemu-img create -q -f vpc p.vhd 8M
  fmt_io vpc p.vhd 'write -P 0xaa 0 4M' 'write -P 0xab 6M 2M'
  qemu-img convert -f vpc -O raw p.vhd p.raw
}

@test "differencing: parent found by its relative locator; the child's sectors on top, the rest from the parent" {
  make_parent
  python3 "$MAKE_DIFF" --parent-raw p.raw --expect expect.raw p.vhd c.vhd \
    0:512:0x11 1536:2560:0x12 4096:8192:0x22 3145728:1048576:0x33 4194304:4096:0x44 8388608:1024:0x55
  mount_img c.vhd "$MNT"
  same_bytes "$MNT/disk.raw" expect.raw
  grep -q "backing_resolved: $TMP/p.vhd" "$MNT/info"
  grep -q "parent_locator: W2ru" "$MNT/info"
  grep -q "subformat: differencing" "$MNT/info"
  grep -q "parent_name: p.vhd" "$MNT/info"
  unmount_img
}

@test "differencing: vhdimount (libvhdi) reads the same bytes" {
  make_parent
  # bitmap runs end on 8-sector boundaries and blocks are 2 MiB: libvhdi 20210425 takes the sectors after
  # a set bit in the same bitmap byte from the child too (sector 3 alone set: sectors 3-7 from the child),
  # and with 512 KiB blocks its reads across a block boundary came out wrong in sequential reads
  python3 "$MAKE_DIFF" --parent-raw p.raw --expect expect.raw p.vhd c.vhd \
    0:4096:0x11 1536:2560:0x12 524288:8192:0x22 3145728:1048576:0x33 7340032:4096:0x44
  mount_img c.vhd "$MNT"
  same_bytes "$MNT/disk.raw" expect.raw
  unmount_img
  vhdi_equals c.vhd expect.raw
}

@test "differencing: absolute W2ku locator, MacX file URL, and the header's parent name each find the parent" {
  make_parent
  mkdir sub
  python3 "$MAKE_DIFF" --locators w2ku --parent-name nothere.vhd --parent-raw p.raw --expect expect.raw p.vhd c1.vhd 0:4096:0x61
  python3 "$MAKE_DIFF" --locators macx --locator-path "$TMP/p.vhd" --parent-name nothere.vhd p.vhd c2.vhd 0:4096:0x61
  python3 "$MAKE_DIFF" --locators "" p.vhd c3.vhd 0:4096:0x61
  local c
  for c in c1 c2 c3; do
    mount_img $c.vhd "$MNT"
    same_bytes "$MNT/disk.raw" expect.raw
    unmount_img
  done
  run "$IMGFUSE" info c1.vhd
  [[ "$output" == *"backing_file: /images/p.vhd"* ]]
  [[ "$output" == *"parent_locator: W2ku"* ]]
  run "$IMGFUSE" info c2.vhd
  [[ "$output" == *"backing_file: $TMP/p.vhd"* ]]
  [[ "$output" == *"parent_locator: MacX"* ]]
  run "$IMGFUSE" info c3.vhd
  [[ "$output" == *"parent_locator: header"* ]]
}

@test "differencing: a parent with another UUID is served with a warning, and info says it does not match" {
  make_parent
  python3 "$MAKE_DIFF" p.vhd c.vhd 0:4096:0x61
  run "$IMGFUSE" info c.vhd
  [[ "$output" == *"parent_uuid_matches: yes"* ]]
  mv p.vhd orig.vhd
  qemu-img convert -f vpc -O vpc orig.vhd p.vhd   # the same bytes, a new UUID
  mount_img c.vhd "$MNT"
  grep -q "parent_uuid_matches: no" "$MNT/info"
  cmp -i 4096 -n 100000 "$MNT/disk.raw" p.raw
  unmount_img
  grep -q "c.vhd: warning: parent .*p.vhd has UUID .*, but this differencing disk was made from" "$TMP/daemon.log"
}

@test "differencing: a missing parent is refused with one line naming the image and the parent" {
  make_parent
  python3 "$MAKE_DIFF" p.vhd c.vhd 0:4096:0x61
  rm p.vhd
  refused_open c.vhd "backing file './p.vhd' not found"
  # --no-backing shows the child alone: its sectors, zeros elsewhere
  mount_img --no-backing c.vhd "$MNT"
  cmp -n 4096 "$MNT/disk.raw" <(head -c 4096 /dev/zero | tr '\0' '\141')
  cmp -i 4096:0 -n 100000 "$MNT/disk.raw" /dev/zero
}

# ---------------------------------------------------------------- writes

@test "--rw dynamic: unaligned writes into new and allocated blocks; check clean, bytes exact" {
  qemu-img create -q -f vpc d.vhd 11M
  fmt_io vpc d.vhd 'write -P 0x11 2M 2M'
  qemu-img convert -f vpc -O raw d.vhd expect.raw
  mount_img --rw d.vhd "$MNT"
  write_both expect.raw "100 3000 0x21" "2097000 5000 0x22" "5000001 77 0x23" "9437184 1048576 0x24" "11000000 333 0x25"
  printf 'hello, vhd' | dd of="$MNT/disk.raw" bs=1 seek=7340033 conv=notrunc status=none
  printf 'hello, vhd' | dd of=expect.raw bs=1 seek=7340033 conv=notrunc status=none
  same_bytes "$MNT/disk.raw" expect.raw
  unmount_img
  vhd_clean d.vhd
  qemu-img compare -f vpc -F raw d.vhd expect.raw
  qemu-img convert -f vpc -O raw d.vhd back.raw
  same_bytes back.raw expect.raw
  # every block written to is allocated, no other
  mount_img d.vhd "$MNT"
  grep -q "allocated_blocks: 6" "$MNT/info"
}

@test "--rw fixed: writes in place, the file keeps its size and footer" {
  qemu-img create -q -f vpc -o subformat=fixed f.vhd 4M
  qemu-img convert -f vpc -O raw f.vhd expect.raw
  local size; size=$(stat -c %s f.vhd)
  mount_img --rw -f vpc f.vhd "$MNT"
  qemu-io -f raw -c "write -P 0x5a 1 4097" -c "write -P 0x5b 4000000 100000" "$MNT/disk.raw" >/dev/null
  qemu-io -f raw -c "write -P 0x5a 1 4097" -c "write -P 0x5b 4000000 100000" expect.raw >/dev/null
  unmount_img
  [ "$(stat -c %s f.vhd)" -eq "$size" ]
  vhd_clean f.vhd
  qemu-img compare -f vpc -F raw f.vhd expect.raw
  # a write past the virtual size is refused
  mount_img --rw -f vpc f.vhd "$MNT"
  run dd if=/dev/zero of="$MNT/disk.raw" bs=512 count=1 seek=$(( $(stat -c %s expect.raw) / 512 )) conv=notrunc status=none
  [ "$status" -ne 0 ]
}

@test "--rw differencing: partial writes keep the parent's bytes around them; the parent is untouched" {
  make_parent
  python3 "$MAKE_DIFF" --block-size 1048576 p.vhd c.vhd 4194304:4096:0x44
  python3 "$MAKE_DIFF" --block-size 1048576 --parent-raw p.raw --expect expect.raw p.vhd /dev/null 4194304:4096:0x44
  local psum; psum=$(sha256sum p.vhd)
  mount_img --rw c.vhd "$MNT"
  write_both expect.raw "1000 10 0x71" "2097152 4096 0x72" "4194000 1000 0x73" "7000001 300000 0x74"
  same_bytes "$MNT/disk.raw" expect.raw
  unmount_img
  [ "$(sha256sum p.vhd)" = "$psum" ]
  vhd_clean c.vhd
  mount_img c.vhd "$MNT"
  same_bytes "$MNT/disk.raw" expect.raw
  unmount_img
  # sectors written are present in the child; their neighbours still come from the parent
  run "$IMGFUSE" map --json c.vhd
  echo "$output"
  python3 - "$output" <<'EOF'
import json, sys
m = json.loads(sys.argv[1])
top = [(e["start"], e["start"] + e["length"]) for e in m if e.get("depth") == 0 and e["data"]]
# the write at 1000 (10 bytes) made sector 1 present, nothing around it
assert (512, 1024) in top and (1024, 1536) not in top, top
assert not any(s < 512 for s, t in top), top
EOF
}

@test "--rw fio with 4 jobs and crc32c verification on a dynamic disk and on a differencing child" {
  qemu-img create -q -f vpc -o force_size=on d.vhd 32M
  qemu-img create -q -f vpc -o force_size=on p.vhd 32M
  fmt_io vpc p.vhd 'write -P 0x5c 0 32M'
  python3 "$MAKE_DIFF" --block-size 524288 p.vhd c.vhd 0:4096:0x61
  local psum; psum=$(sha256sum p.vhd)
  local img
  for img in d.vhd c.vhd; do
    mount_img --rw "$img" "$MNT"
    fio --name=w --filename="$MNT/disk.raw" --rw=randrw --bsrange=4k-256k --verify=crc32c --numjobs=4 \
      --size=8M --offset_increment=8M --ioengine=psync --randseed=42 --verify_fatal=1 --group_reporting \
      > fio.log 2>&1 || { cat fio.log; return 1; }
    cp "$MNT/disk.raw" copy.raw
    unmount_img
    vhd_clean "$img"
    mount_img "$img" "$MNT"
    same_bytes "$MNT/disk.raw" copy.raw
    unmount_img
    # QEMU reads a dynamic disk, not a differencing one
    [ "$img" = c.vhd ] || qemu-img compare -f vpc -F raw "$img" copy.raw
  done
  [ "$(sha256sum p.vhd)" = "$psum" ]
}

# ---------------------------------------------------------------- damaged images

@test "damaged: bad checksums, a BAT past the end, truncated files, --backing on a dynamic disk" {
  qemu-img create -q -f vpc d.vhd 5M
  fmt_io vpc d.vhd 'write -P 0x11 0 3M'
  local size; size=$(stat -c %s d.vhd)

  cp d.vhd both.vhd; patch both.vhd 100 ff; patch both.vhd $((size - 512 + 100)) ff
  refused_open both.vhd "footer checksum mismatch"

  cp d.vhd hdr.vhd; patch hdr.vhd $((512 + 40)) ff
  refused_open hdr.vhd "dynamic disk header checksum mismatch"

  cp d.vhd bat.vhd; patch bat.vhd $((512 + 16)) 00000000ffff0000
  python3 - bat.vhd <<'EOF'
import struct, sys
p = sys.argv[1]
d = bytearray(open(p, "rb").read())
d[512 + 36:512 + 40] = b"\0\0\0\0"
d[512 + 36:512 + 40] = struct.pack(">I", (~sum(d[512:512 + 1024])) & 0xFFFFFFFF)
open(p, "wb").write(d)
EOF
  refused_open bat.vhd "BAT (offset 4294901760, 12 bytes) lies past the end of the file"

  cp d.vhd cut.vhd; truncate -s 1000000 cut.vhd
  refused_open cut.vhd "the file is truncated"

  qemu-img create -q -f vpc -o subformat=fixed f.vhd 1M
  truncate -s -4096 f.vhd
  refused_open f.vhd "no VHD footer" -f vpc

  refused_open d.vhd "does not support backing files" --backing f.vhd

  # only the footer at the end is damaged: the copy at offset 0 stands in, and info says so
  cp d.vhd tail.vhd; patch tail.vhd $((size - 512 + 100)) ff
  mount_img tail.vhd "$MNT"
  same_bytes "$MNT/disk.raw" "$(raw_of d.vhd)"
  grep -q "footer: copy at offset 0" "$MNT/info"
}

@test "damaged: a BAT entry pointing past the end or into the header reads as EIO, the rest reads" {
  qemu-img create -q -f vpc d.vhd 7M
  fmt_io vpc d.vhd 'write -P 0x11 0 6M'
  local good; good=$(raw_of d.vhd)
  cp d.vhd past.vhd; patch past.vhd $((1536 + 4)) 00ffffff
  cp d.vhd meta.vhd; patch meta.vhd $((1536 + 4)) 00000001
  local img
  for img in past.vhd meta.vhd; do
    mount_img "$img" "$MNT"
    run dd if="$MNT/disk.raw" bs=4096 skip=512 count=1 of=/dev/null status=none
    [ "$status" -ne 0 ]
    [[ "$output" == *"Input/output error"* ]]
    cmp -n $((2 << 20)) "$MNT/disk.raw" "$good"
    cmp -i $((4 << 20)) "$MNT/disk.raw" "$good"
    unmount_img
    grep -q "BAT entry 1 .*EIO" "$TMP/daemon.log"
  done
}

@test "--copy-on-read into a differencing disk copies whole VHD blocks (the driver's cluster_size fact)" {
  make_parent
  python3 "$MAKE_DIFF" p.vhd c.vhd 0:4096:0x61
  mount_img --rw --copy-on-read c.vhd "$MNT"
  cmp -i 2101248 -n 4096 "$MNT/disk.raw" p.raw   # 2 MiB + 4 KiB: block 1, held by the parent only
  cor=$(python3 -c 'import json, sys; print(json.load(open(sys.argv[1]))["nodes"][0]["cor_bytes"])' "$MNT/stats.json")
  unmount_img
  [ "$cor" -eq 2097152 ]   # the parent's 2 MiB block, not 64 KiB of it
  mount_img --no-backing c.vhd "$MNT"
  cmp -i 2097152:2097152 -n 2097152 "$MNT/disk.raw" p.raw
  unmount_img
}

@test "differencing: the parent's UUID is checked once the chain is attached, before any read" {
  make_parent
  python3 "$MAKE_DIFF" p.vhd c.vhd 0:4096:0x61
  mv p.vhd orig.vhd
  qemu-img convert -f vpc -O vpc orig.vhd p.vhd   # the same bytes, a new UUID
  run "$IMGFUSE" info c.vhd
  [ "$status" -eq 0 ]
  [[ "$output" == *"c.vhd: warning: parent "*"p.vhd has UUID "*", but this differencing disk was made from "* ]]
  mount_img c.vhd "$MNT"   # nothing reads disk.raw
  unmount_img
  grep -q "c.vhd: warning: parent .*p.vhd has UUID .*, but this differencing disk was made from" "$TMP/daemon.log"
}

@test "differencing: the core picks the first parent locator the backing policy allows, not the first that exists" {
  make_parent
  mkdir img outside
  cp p.vhd outside/p.vhd   # a file of the parent's name outside the image's directory
  python3 "$MAKE_DIFF" --locators w2ru --locator-path ../outside/p.vhd --parent-name p.vhd \
    --parent-raw p.raw --expect expect.raw p.vhd img/c.vhd 0:4096:0x61
  mv p.vhd img/p.vhd
  mount_img img/c.vhd "$MNT"
  same_bytes "$MNT/disk.raw" expect.raw
  grep -q "backing_resolved: $TMP/img/p.vhd" "$MNT/info"
  grep -q "parent_locator: header" "$MNT/info"
  unmount_img
  # no candidate allowed: the first one's refusal, on one line
  rm img/p.vhd
  refused_open img/c.vhd "backing file '../outside/p.vhd' refused: it resolves outside the image's directory"
}
