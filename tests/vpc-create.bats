#!/usr/bin/env bats
# SPDX-License-Identifier: MIT
# vpc-create.bats - `imgfuse create -f vpc` (subformat=dynamic|fixed, force_size=on|off, -b PARENT -F vpc
# for a differencing disk): the footer and dynamic header qemu-img create writes (all but time stamp, UUID
# and checksums), the same CHS-rounded virtual size in qemu-img info and imgfuse; fio with 4 jobs and
# verification on every kind of created disk, then a structure check (tests/vpc-check.py, vhdiinfo:
# `qemu-img check` does not support vpc) and qemu-img convert (vhdimount for differencing disks, which
# QEMU cannot read) equal to what the mount showed.

load helpers

setup() { setup_tmp; cd "$TMP"; }
teardown() { teardown_tmp; }

# same_layout OURS THEIRS: the files have the same length, and their footers (and for dynamic disks the
# footer copy, the dynamic header and the BAT) the same bytes but for time stamp, UUID and checksums.
same_layout() {
  python3 - "$1" "$2" <<'EOF'
import sys
a, b = (open(p, "rb").read() for p in sys.argv[1:3])
assert len(a) == len(b), (len(a), len(b))
def masked(d, foot):
    d = bytearray(d)
    for off in ([0] if d[:8] == b"conectix" else []) + [foot]:
        d[off + 24:off + 28] = bytes(4)   # time stamp
        d[off + 64:off + 84] = bytes(20)  # checksum, UUID
    if d[:8] == b"conectix":
        d[512 + 36:512 + 40] = bytes(4)   # dynamic header checksum
    return bytes(d[:4096]) + bytes(d[foot:])
assert masked(a, len(a) - 512) == masked(b, len(b) - 512), "layouts differ"
EOF
}

# vsize FORMAT IMAGE: the virtual size qemu-img info reports.
vsize() {
  qemu-img info -f "$1" --output=json "$2" | python3 -c 'import json, sys; print(json.load(sys.stdin)["virtual-size"])'
}

@test "imgfuse create -f vpc writes qemu-img's footer and header; sizes rounded to CHS as qemu-img rounds them" {
  local opts size
  while IFS='|' read -r opts size; do
    rm -f ours.vhd theirs.vhd
    "$IMGFUSE" create -f vpc $opts ours.vhd "$size"
    qemu-img create -q -f vpc $opts theirs.vhd "$size"
    same_layout ours.vhd theirs.vhd || { echo "differs for: $opts $size"; return 1; }
    [ "$(vsize vpc ours.vhd)" -eq "$(vsize vpc theirs.vhd)" ]
    # imgfuse reads the size qemu-img reads, and the new disk reads as zeros
    mount_img -f vpc ours.vhd "$MNT"
    [ "$(stat -c %s "$MNT/disk.raw")" -eq "$(vsize vpc theirs.vhd)" ]
    [ "$(stat -c %s "$MNT/disk.raw")" -le 2147483648 ] || { unmount_img; continue; }
    cmp -n "$(stat -c %s "$MNT/disk.raw")" "$MNT/disk.raw" /dev/zero
    unmount_img
  done <<'EOF'
|10M
|1000
|0
|5000000
|200G
|2040G
-o force_size=on|10M
-o force_size=on|1000
-o force_size=off|5000000
-o subformat=dynamic,force_size=on|3G
-o subformat=fixed|10M
-o subformat=fixed|5000000
-o subformat=fixed,force_size=on|1000
EOF
  # 10M is 10514432 bytes: 302 cylinders, 4 heads, 17 sectors
  "$IMGFUSE" create -f vpc d.vhd 10M
  [ "$(vsize vpc d.vhd)" -eq 10514432 ]
  "$IMGFUSE" info d.vhd | grep -q "geometry: 302/4/17"
  "$IMGFUSE" info d.vhd | grep -q "virtual_size: 10514432"
  # a fixed disk's data is a hole of the new file
  "$IMGFUSE" create -f vpc -o subformat=fixed f.vhd 1G
  [ "$(stat -c %s f.vhd)" -eq $(( $(vsize vpc f.vhd) + 512 )) ]
  [ "$(du -k f.vhd | cut -f1)" -lt 1024 ]
  "$IMGFUSE" create -f vpc -o help | grep -q force_size
}

@test "imgfuse create -f vpc refuses bad options, sizes and parents with one line and exit 2, creating nothing" {
  qemu-img create -q -f vpc p.vhd 10M
  qemu-img create -q -f qcow2 p.qcow2 10M
  create_refusals vpc x.vhd <<'EOF'
-o subformat=sparse|1M|vpc creation option 'subformat' must be dynamic or fixed, not 'sparse'
-o force_size=yes|1M|vpc creation option 'force_size' must be on or off, not 'yes'
-o cluster_size=64k|1M|unknown vpc creation option 'cluster_size'
-o subformat|1M|no value for the vpc creation option 'subformat'
|2041G|invalid virtual size for vpc (at most 2040 GiB)
-o subformat=fixed -b p.vhd -F vpc||a fixed VHD has no parent (-b needs subformat=dynamic)
-o force_size=on -b p.vhd -F vpc||a differencing VHD takes its size fields from its parent (no force_size with -b)
-b p.qcow2 -F qcow2|10M|a differencing VHD's parent is a VHD (-F vpc)
-b p.vhd -F vpc|1M|a differencing VHD has its parent's size (10514432 bytes, not 1048576)
EOF
}

@test "--rw fio with 4 jobs and crc32c verification on created dynamic and fixed disks; structure clean, convert equal" {
  "$IMGFUSE" create -f vpc d.vhd 128M
  "$IMGFUSE" create -f vpc -o subformat=fixed,force_size=on f.vhd 64M
  local img fmt
  for img in d.vhd f.vhd; do
    mount_img --rw -f vpc "$img" "$MNT"
    fio --name=v --filename="$MNT/disk.raw" --rw=randwrite --bsrange=512-64k --size=16M --numjobs=4 --offset_increment=16M \
      --verify=crc32c --direct=1 --ioengine=psync --verify_fatal=1 --randseed=7 --group_reporting > fio.log 2>&1 || { cat fio.log; return 1; }
    cp "$MNT/disk.raw" shown.raw
    unmount_img
    vhd_clean "$img"
    qemu-img convert -f vpc -O raw "$img" after.raw
    same_bytes after.raw shown.raw
  done
}

@test "a differencing VHD made with -b: the parent's size, UUID and name; imgfuse and vhdimount read the expected bytes" {
  qemu-img create -q -f vpc p.vhd 10M
  qemu-io -f vpc -c 'write -P 0x41 0 10M' p.vhd >/dev/null
  local psum; psum=$(sha256sum p.vhd)
  qemu-img convert -f vpc -O raw p.vhd expect.raw
  "$IMGFUSE" create -f vpc -b p.vhd -F vpc c.vhd
  vhd_clean c.vhd
  vhdiinfo c.vhd | grep -q "Disk type.*Differential"
  vhdiinfo c.vhd | grep -q "Parent filename.*: p.vhd"
  [ "$(vhdiinfo c.vhd | sed -n 's/.*Parent identifier[^:]*: //p')" = "$("$IMGFUSE" info p.vhd | sed -n 's/^  uuid: //p')" ]
  "$IMGFUSE" info c.vhd | grep -q "parent_uuid_matches: yes"
  [ "$("$IMGFUSE" info c.vhd | sed -n 's/^  virtual_size: \([0-9]*\).*/\1/p' | head -1)" -eq "$(vsize vpc p.vhd)" ]
  # writes through the mount: whole 4 KiB pieces (libvhdi 20210425 reads the sectors after a set bitmap bit
  # of the same byte from the child), in two blocks, one across a block boundary
  mount_img --rw c.vhd "$MNT"
  write_both expect.raw "0 4096 0x11" "69632 8192 0x22" "2093056 8192 0x33" "9437184 1048576 0x44"
  unmount_img
  vhd_clean c.vhd
  mount_img c.vhd "$MNT"
  same_bytes "$MNT/disk.raw" expect.raw
  unmount_img
  vhdi_equals c.vhd expect.raw
  [ "$(sha256sum p.vhd)" = "$psum" ]
  # a parent named by an absolute path gets the absolute locator only, and is found by it
  "$IMGFUSE" create -f vpc -b "$TMP/p.vhd" -F vpc a.vhd
  mount_img a.vhd "$MNT"
  grep -q "parent_locator: W2ku" "$MNT/info"
  unmount_img
}

@test "--rw fio with 4 jobs and crc32c verification on a created differencing disk; vhdimount equals what the mount showed" {
  qemu-img create -q -f vpc p.vhd 64M
  qemu-io -f vpc -c 'write -P 0x5c 0 64M' p.vhd >/dev/null
  "$IMGFUSE" create -f vpc -b p.vhd -F vpc c.vhd
  mount_img --rw c.vhd "$MNT"
  fio --name=w --filename="$MNT/disk.raw" --rw=randrw --bs=4k --verify=crc32c --numjobs=4 \
    --size=16M --offset_increment=16M --ioengine=psync --randseed=7 --verify_fatal=1 --group_reporting > fio.log 2>&1 || { cat fio.log; return 1; }
  cp "$MNT/disk.raw" shown.raw
  unmount_img
  vhd_clean c.vhd
  vhdi_equals c.vhd shown.raw
}

@test "write-zeroes: zeros in place where the disk holds data, nothing allocated for a dynamic disk's empty blocks, a differencing disk hides its parent" {
  local M=1048576
  "$IMGFUSE" create -f vpc -o force_size=on d.vhd 8M
  "$IMGFUSE" create -f vpc -o subformat=fixed,force_size=on f.vhd 8M
  qemu-img create -q -f vpc -o force_size=on p.vhd 8M
  qemu-io -f vpc -c 'write -P 0x41 0 8M' p.vhd >/dev/null
  "$IMGFUSE" create -f vpc -b p.vhd -F vpc c.vhd
  local img
  for img in d.vhd f.vhd c.vhd; do
    mount_img --rw -f vpc "$img" "$MNT"
    cp "$MNT/disk.raw" expect.raw
    write_both expect.raw "0 $((3 * M)) 0x11"
    # across written and never written blocks, unaligned starts, and a punch (discard=ignore: zeros all the
    # same); ranges end on 4 KiB for vhdimount (see the differencing test above)
    zero_both expect.raw "-z $((M + 1000)) $((6 * M + 3096))" "-p 100 1000" "-z $((7 * M + 512)) 7680"
    cp "$MNT/disk.raw" shown.raw
    unmount_img
    same_bytes shown.raw expect.raw
    vhd_clean "$img"
    mount_img -f vpc "$img" "$MNT"
    same_bytes "$MNT/disk.raw" expect.raw
    local blocks; blocks=$(sed -n 's/^  allocated_blocks: //p' "$MNT/info" | head -1)  # layer 0
    unmount_img
    case $img in
      d.vhd) [ "$blocks" -eq 2 ] ;;   # blocks 0 and 1 (written); 2 and 3 stayed unallocated
      c.vhd) [ "$blocks" -eq 4 ] ;;   # every block the zeros reached: the parent must not show through
    esac
    [ "$img" = c.vhd ] || { qemu-img convert -f vpc -O raw "$img" after.raw; same_bytes after.raw expect.raw; }
  done
  vhdi_equals c.vhd expect.raw
}
