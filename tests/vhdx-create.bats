#!/usr/bin/env bats
# SPDX-License-Identifier: MIT
# vhdx-create.bats - issue 19: `imgfuse create -f vhdx` (qemu-img's options subformat, block_size,
# log_size, block_state_zero). Fixed and dynamic images are read by qemu-img as VHDX of the size asked and
# check clean; qemu-io writes into them and the mount then equals `qemu-img convert` (bytes, and the
# SEEK_DATA map equals the BAT as tests/vhdxlib.py reads it: qemu-img 7.2 calls every VHDX byte data).
# Differencing images (-b, which QEMU cannot open) read as their parent through imgfuse and vhdimount,
# their locator names the parent as Hyper-V does, and sectors a spec-following writer puts in the child
# (tests/vhdx-put-sectors.py) read on top of the parent. Bad options: one line each, exit 2, no file.

load helpers

setup() { setup_tmp; cd "$TMP"; }
teardown() { teardown_tmp; }

VHDXLIB="$BATS_TEST_DIRNAME/vhdxlib.py"
SEEKMAP="$BATS_TEST_DIRNAME/seekmap.py"
PUT="$BATS_TEST_DIRNAME/vhdx-put-sectors.py"

# qinfo IMAGE KEY: one field of qemu-img info --output=json.
qinfo() {
  qemu-img info --output=json "$1" | python3 -c 'import json, sys; print(json.load(sys.stdin)[sys.argv[1]])' "$2"
}

# vx IMAGE EXPR: a Python expression over `i`, tests/vhdxlib.py's Image of IMAGE (and `v`, the module).
vx() {
  python3 -c "import sys; sys.path.insert(0, '$BATS_TEST_DIRNAME'); import vhdxlib as v
i = v.Image(sys.argv[1]); print($2)" "$1"
}

# locator IMAGE KEY: a value of the parent locator, UTF-16LE decoded.
locator() {
  python3 -c "import struct, sys; sys.path.insert(0, '$BATS_TEST_DIRNAME'); import vhdxlib as v
loc = v.Image(sys.argv[1]).items[v.PARENT_LOCATOR]
assert loc[:16] == v.LOCATOR_TYPE_VHDX
for n in range(struct.unpack_from('<H', loc, 18)[0]):
    ko, vo, kl, vl = struct.unpack_from('<IIHH', loc, 20 + 12 * n)
    if loc[ko:ko + kl].decode('utf-16-le') == sys.argv[2]:
        print(loc[vo:vo + vl].decode('utf-16-le'))" "$1" "$2"
}

# check_created IMAGE SIZE BLOCK: qemu-img reads IMAGE as a VHDX of SIZE bytes and BLOCK-byte blocks,
# checks it clean; imgfuse names itself the creator.
check_created() {
  [ "$(qinfo "$1" format)" = vhdx ]
  [ "$(qinfo "$1" virtual-size)" = "$2" ]
  [ "$(qinfo "$1" cluster-size)" = "$3" ]
  qemu-img check -q -f vhdx "$1"
  "$IMGFUSE" info "$1" | grep -q "^  creator: imgfuse$"
}

# mount_equals_convert IMAGE: size and bytes of disk.raw equal qemu-img convert; its SEEK_DATA map and
# `imgfuse map`'s data runs equal the BAT's present blocks (tests/vhdxlib.py).
mount_equals_convert() {
  local img=$1 oracle=$TMP/oracle.raw ours want
  rm -f "$oracle"
  qemu-img convert -f vhdx -O raw "$img" "$oracle"
  mount_img "$img" "$MNT"
  [ "$(stat -c %s "$MNT/disk.raw")" -eq "$(stat -c %s "$oracle")" ]
  same_bytes "$MNT/disk.raw" "$oracle"
  ours=$(python3 "$SEEKMAP" "$MNT/disk.raw")
  unmount_img
  want=$(python3 "$VHDXLIB" map "$img" | awk 'n && $1 == e { e = $2; next } { if (n++) print s, e; s = $1; e = $2 }
                                              END { if (n) print s, e }')
  [ "$ours" = "$want" ] || { echo "map: imgfuse '$ours', BAT '$want'"; return 1; }
}

@test "dynamic and fixed images, every option: qemu-img reads the format and size and checks them clean" {
  "$IMGFUSE" create -f vhdx d.vhdx 20M
  check_created d.vhdx 20971520 8388608
  [ "$(vx d.vhdx 'i.log_offset, i.log_length, i.logical, i.has_parent')" = "1048576 1048576 512 False" ]
  [ "$(vx d.vhdx '[i.bat(b)[0] for b in range(i.blocks)]')" = "[0, 0, 0]" ]
  [ "$(stat -c %s d.vhdx)" = 4194304 ]
  "$IMGFUSE" create -f vhdx -o subformat=fixed f.vhdx 20M
  check_created f.vhdx 20971520 8388608
  "$IMGFUSE" info f.vhdx | grep -q "^  subformat: fixed$"
  "$IMGFUSE" create -f vhdx -o block_size=1M,log_size=8M,block_state_zero=on z.vhdx 5G
  check_created z.vhdx 5368709120 1048576
  [ "$(vx z.vhdx 'i.log_length, set(i.bat(b)[0] for b in range(i.blocks))')" = "8388608 {2}" ]
  "$IMGFUSE" create -f vhdx -o block_size=256M,subformat=dynamic,block_state_zero=off b.vhdx 1G
  check_created b.vhdx 1073741824 268435456
  "$IMGFUSE" create -f vhdx -o subformat=fixed,block_size=1M,log_size=2M o.vhdx 3583k
  check_created o.vhdx 3668992 1048576
  # block sizes by size, as qemu-img picks them
  local s
  for s in 1G 2G 200G 40T; do
    "$IMGFUSE" create -f vhdx a.vhdx "$s"
    qemu-img create -q -f vhdx q.vhdx "$s"
    [ "$(qinfo a.vhdx cluster-size)" = "$(qinfo q.vhdx cluster-size)" ]
    qemu-img check -q a.vhdx
  done
}

@test "fixed: every payload block FULLY_PRESENT in place after the metadata, the file sparse" {
  "$IMGFUSE" create -f vhdx -o subformat=fixed,block_size=4M f.vhdx 18M
  # log at 1 MiB, BAT at 2 MiB, metadata at 3 MiB, five 4 MiB blocks from 4 MiB
  [ "$(vx f.vhdx '[i.bat(b) for b in range(i.blocks)]')" = \
    "[(6, 4194304), (6, 8388608), (6, 12582912), (6, 16777216), (6, 20971520)]" ]
  [ "$(stat -c %s f.vhdx)" = $(( 24 << 20 )) ]
  [ "$(( $(stat -c '%b * %B' f.vhdx) ))" -le $(( 1 << 20 )) ]   # the 20 MiB of blocks are a hole
  "$IMGFUSE" map --json f.vhdx | python3 -c '
import json, sys
m = json.load(sys.stdin)
assert [(e["start"], e["length"], e["data"], e["offset"]) for e in m] == [(0, 18874368, True, 4194304)], m'
  mount_img f.vhdx "$MNT"
  cmp -n 18874368 "$MNT/disk.raw" /dev/zero
  unmount_img
}

@test "qemu-io writes into created fixed and dynamic images; the mount then equals qemu-img convert" {
  local o n=0
  for o in subformat=dynamic subformat=fixed block_state_zero=on "subformat=fixed,block_size=1M" \
           "block_size=2M,log_size=3M"; do
    n=$((n + 1))
    "$IMGFUSE" create -f vhdx -o "$o" i$n.vhdx 37M
    fmt_io vhdx i$n.vhdx 'write -P 0x5a 0 3M' 'write -P 0x11 9000k 4097' 'write -P 0x22 36M 1M' \
      'write -z 20M 2M'
    qemu-img check -q i$n.vhdx
    mount_equals_convert i$n.vhdx
  done
}

# make_parent DIR: DIR/p.vhdx (dynamic, 1 MiB blocks, 10 MiB) with data, and DIR/p.raw.
make_parent() {
  mkdir -p "$1"
  qemu-img create -q -f vhdx -o block_size=1M "$1/p.vhdx" 10M
  fmt_io vhdx "$1/p.vhdx" 'write -P 0xaa 0 7M' 'write -P 0xab 8M 2M' 'write -P 0xac 3M 513'
  qemu-img convert -f vhdx -O raw "$1/p.vhdx" "$1/p.raw"
}

@test "differencing: -b over a parent with data reads as the parent through imgfuse and vhdimount" {
  make_parent .
  "$IMGFUSE" create -f vhdx -b p.vhdx c.vhdx
  "$IMGFUSE" create -f vhdx -b p.vhdx -F vhdx -o block_size=2M c2.vhdx 10M
  local c
  for c in c c2; do
    [ "$(vx $c.vhdx 'i.has_parent, i.size, i.logical')" = "True 10485760 512" ]
    [ "$(vx $c.vhdx 'set(i.bat(b)[0] for b in range(i.blocks))')" = "{0}" ]
    mount_img $c.vhdx "$MNT"
    same_bytes "$MNT/disk.raw" p.raw
    grep -q "^  subformat: differencing$" "$MNT/info"
    grep -q "^  backing_resolved: $TMP/p.vhdx$" "$MNT/info"
    unmount_img
    vhdi_equals $c.vhdx p.raw
  done
  # QEMU cannot open a differencing VHDX at all (no oracle there)
  run qemu-img info c.vhdx
  [ "$status" -ne 0 ]
}

@test "differencing: the locator holds parent_linkage, relative_path and absolute_win32_path as Hyper-V writes them" {
  make_parent base
  mkdir -p work/deep
  "$IMGFUSE" create -f vhdx -b p.vhdx base/c.vhdx
  [ "$(locator base/c.vhdx parent_linkage)" = "$(vx base/p.vhdx 'v.guid_str(i.data_write_guid)')" ]
  [ "$(locator base/c.vhdx relative_path)" = '.\p.vhdx' ]
  local win='\\?\Z:'"$(realpath base/p.vhdx | tr / '\\')"
  [ "$(locator base/c.vhdx absolute_win32_path)" = "$win" ]
  [ -z "$(locator base/c.vhdx volume_path)" ]
  vhdiinfo base/c.vhdx | grep -q "Parent identifier.*: $(vx base/p.vhdx 'str(v.uuid.UUID(bytes_le=bytes(i.data_write_guid)))')"
  # relative to the child's directory, given relative or absolute
  "$IMGFUSE" create -f vhdx -b ../../base/p.vhdx work/deep/c.vhdx
  [ "$(locator work/deep/c.vhdx relative_path)" = '..\..\base\p.vhdx' ]
  "$IMGFUSE" create -f vhdx -b "$TMP/base/p.vhdx" work/c.vhdx
  [ "$(locator work/c.vhdx relative_path)" = '..\base\p.vhdx' ]
  [ "$(locator work/c.vhdx absolute_win32_path)" = "$win" ]
  mount_img --backing-dir "$TMP/base" work/deep/c.vhdx "$MNT"   # the parent is outside the image's directory
  same_bytes "$MNT/disk.raw" base/p.raw
  grep -q "^  parent_locator: relative_path$" "$MNT/info"
  unmount_img
  # the child moved away from relative_path: absolute_win32_path finds the parent (outside the child's
  # directory, and not by base name in a --backing-dir: --unsafe-backing)
  mkdir -p elsewhere
  mv work/deep/c.vhdx elsewhere/
  mount_img --unsafe-backing elsewhere/c.vhdx "$MNT"
  same_bytes "$MNT/disk.raw" base/p.raw
  grep -q "^  parent_locator: absolute_win32_path$" "$MNT/info"
  unmount_img
}

@test "differencing: sectors a writer puts in the child (payload block + sector bitmap) read on top of the parent" {
  make_parent .
  "$IMGFUSE" create -f vhdx -o block_size=1M -b p.vhdx c.vhdx
  cp p.raw expect.raw
  python3 "$PUT" c.vhdx expect.raw 3 1 2 0x31
  python3 "$PUT" c.vhdx expect.raw 7 0 2048 0x32
  python3 "$PUT" c.vhdx expect.raw 9 2040 8 0x33
  ! cmp -s p.raw expect.raw || false
  mount_img c.vhdx "$MNT"
  same_bytes "$MNT/disk.raw" expect.raw
  unmount_img
  vhdi_equals c.vhdx expect.raw
}

# refused_create WANT ARGS...: `imgfuse create ARGS` exits 2 with the one line WANT, and makes no x.vhdx.
refused_create() {
  local want=$1; shift
  run "$IMGFUSE" create "$@"
  echo "status $status: $output"
  [ "$status" -eq 2 ]
  [ "${#lines[@]}" -eq 1 ]
  [ "$output" = "$want" ]
  [ ! -e x.vhdx ]
}

@test "bad options, sizes and parents: one line each, exit 2, no file" {
  local p="imgfuse: x.vhdx:"
  refused_create "$p subformat must be dynamic or fixed, not 'sparse'" -f vhdx -o subformat=sparse x.vhdx 1M
  refused_create "$p block_size must be a power of two from 1M to 256M, not '3M'" -f vhdx -o block_size=3M x.vhdx 1M
  refused_create "$p block_size must be a power of two from 1M to 256M, not '512k'" -f vhdx -o block_size=512k x.vhdx 1M
  refused_create "$p block_size must be a power of two from 1M to 256M, not '512M'" -f vhdx -o block_size=512M x.vhdx 1M
  refused_create "$p log_size must be a multiple of 1M from 1M to 256M, not '1536k'" -f vhdx -o log_size=1536k x.vhdx 1M
  refused_create "$p log_size must be a multiple of 1M from 1M to 256M, not '0'" -f vhdx -o log_size=0 x.vhdx 1M
  refused_create "$p log_size must be a multiple of 1M from 1M to 256M, not '257M'" -f vhdx -o log_size=257M x.vhdx 1M
  refused_create "$p block_state_zero must be on or off, not 'maybe'" -f vhdx -o block_state_zero=maybe x.vhdx 1M
  refused_create "$p block_state_zero=on is for dynamic images only (a fixed image's blocks are present, a differencing image's are its parent's)" \
    -f vhdx -o subformat=fixed,block_state_zero=on x.vhdx 1M
  refused_create "$p unknown vhdx creation option 'cluster_size'" -f vhdx -o cluster_size=64k x.vhdx 1M
  refused_create "$p creation option 'log_size' needs a value (key=value)" -f vhdx -o log_size x.vhdx 1M
  refused_create "$p the size must be a multiple of 512 bytes from 512 bytes to 64 TiB, not 1000" -f vhdx x.vhdx 1000
  refused_create "$p the size must be a multiple of 512 bytes from 512 bytes to 64 TiB, not 0" -f vhdx x.vhdx 0
  refused_create "$p the size must be a multiple of 512 bytes from 512 bytes to 64 TiB, not 70368744178176" \
    -f vhdx x.vhdx 70368744178176
  refused_create "$p 8388608 blocks of 1048576 bytes need 8390655 BAT entries, more than the 4194304 imgfuse reads; use a larger block_size" \
    -f vhdx -o block_size=1M x.vhdx 8T
  "$IMGFUSE" create -f vhdx -o block_size=64M m.vhdx 64T   # the largest disk
  qemu-img check -q m.vhdx
  [ "$(qinfo m.vhdx virtual-size)" = 70368744177664 ]
  # parents
  qemu-img create -q -f qcow2 q.qcow2 10M
  qemu-img create -q -f vhdx p.vhdx 10M
  refused_create "$p the parent of a differencing VHDX must be a VHDX, not -F qcow2" -f vhdx -b q.qcow2 -F qcow2 x.vhdx
  refused_create "$p the parent of a differencing VHDX must be a VHDX; q.qcow2 is qcow2" -f vhdx -b q.qcow2 x.vhdx 10M
  refused_create "$p a differencing VHDX has its parent's size (10485760 bytes), not 20971520" -f vhdx -b p.vhdx x.vhdx 20M
  refused_create "$p a differencing image (-b) cannot be subformat=fixed" -f vhdx -o subformat=fixed -b p.vhdx x.vhdx
  refused_create "$p block_state_zero=on is for dynamic images only (a fixed image's blocks are present, a differencing image's are its parent's)" \
    -f vhdx -o block_state_zero=on -b p.vhdx x.vhdx
  cp p.vhdx $'p\xff.vhdx'
  refused_create "$p the parent's name is not valid UTF-8 or too long for the parent locator" \
    -f vhdx -b $'p\xff.vhdx' x.vhdx
  "$IMGFUSE" create -f vhdx -o help | grep -q "^  log_size=SIZE "
  # an image named as its own parent is left as it was
  cp p.vhdx keep.vhdx
  run "$IMGFUSE" create -f vhdx -b p.vhdx p.vhdx
  [ "$status" -eq 2 ]
  [ "$output" = "imgfuse: p.vhdx: the parent (-b) is the image itself" ]
  cmp p.vhdx keep.vhdx
}
