#!/usr/bin/env bats
# SPDX-License-Identifier: MIT
# vmdk-sesparse.bats - seSparse extents (ESXi snapshots; qemu-img reads them but cannot create them), made
# by tests/sesparselib.py from the layout: a descriptor naming a SESPARSE extent reads byte for byte as the
# generator's expected bytes and as qemu-img convert, with qemu-img map's data map (data grains in three
# grain tables, zero and unmapped entries, grain indexes past 4096); as a delta link it reads the parent
# under unallocated grains; --rw is refused, a bare extent file is refused with a line saying to open its
# descriptor (--no-backing reads it alone), and damaged headers (a journal to replay, a bad version or grain size, a directory that does
# not cover the disk) are refused with one line; a damaged directory or table entry reads EIO for its
# grains only.

load helpers

setup() { setup_tmp; cd "$TMP"; }
teardown() { teardown_tmp; }

LIB="$BATS_TEST_DIRNAME/sesparselib.py"

# sesparse_py CODE: runs python with the generator imported as L, in $TMP.
sesparse_py() {
  PYTHONPATH="$BATS_TEST_DIRNAME" python3 -c "import sesparselib as L
$1"
}

@test "a seSparse disk reads as the generator's expected bytes and as qemu-img convert, with qemu's data map" {
  python3 "$LIB" . se $(( 40 << 20 ))
  mount_img se.vmdk "$MNT"
  [ "$(stat -c %s "$MNT/disk.raw")" -eq $(( 40 << 20 )) ]
  same_bytes "$MNT/disk.raw" se.expect.raw
  grep -q "subformat: seSparse" "$MNT/info"
  grep -q "se-sesparse.vmdk seSparse 41943040 bytes, grain 4096" "$MNT/info"
  unmount_img
  mount_equals_qemu vmdk se.vmdk
  # a size that is not a whole grain table, and a descriptor shorter than the extent's capacity
  python3 "$LIB" . odd $(( (17 << 20) + 12288 ))
  mount_equals_qemu vmdk odd.vmdk
  same_bytes "$(raw_of odd.vmdk)" odd.expect.raw
}

@test "a seSparse delta link reads the parent under unallocated grains, zeros under zero and unmapped ones" {
  qemu-img create -q -f vmdk base.vmdk 40M
  fmt_io vmdk base.vmdk "write -P 0x5a 0 40M"
  qemu-img convert -f vmdk -O raw base.vmdk base.raw
  local cid
  cid=$(dd if=base.vmdk bs=512 skip=1 count=20 status=none | tr -d '\0' | sed -n 's/^CID=//p')
  python3 "$LIB" . snap $(( 40 << 20 )) --parent base.vmdk --parent-cid "$cid" --parent-raw base.raw
  mount_img snap.vmdk "$MNT"
  same_bytes "$MNT/disk.raw" snap.expect.raw
  grep -q "parent_cid_matches: yes" "$MNT/info"
  unmount_img
  qemu-img convert -f vmdk -O raw snap.vmdk chain.raw
  same_bytes chain.raw snap.expect.raw
  mount_equals_qemu vmdk snap.vmdk
}

@test "--rw is refused for seSparse; a bare seSparse extent is refused with a line naming its descriptor" {
  python3 "$LIB" . se $(( 20 << 20 ))
  run "$IMGFUSE" --rw se.vmdk "$MNT"
  [ "$status" -eq 2 ] && [ "${#lines[@]}" -eq 1 ]
  [[ "$output" == *"writing seSparse extents is not supported"*"--overlay"* ]]
  ! mountpoint -q "$MNT" || false
  refused_open se-sesparse.vmdk "a seSparse extent holds only the changes of an ESXi snapshot; open the descriptor"
  # --no-backing asks for this layer alone: the bare extent then reads as its own grains over zeros
  mount_img --no-backing se-sesparse.vmdk "$MNT"
  same_bytes "$MNT/disk.raw" se.expect.raw
  unmount_img
  # with an overlay, writes go to the overlay and the extent is not touched
  cp se-sesparse.vmdk orig.bin
  mount_img --overlay ov.qcow2 se.vmdk "$MNT"
  printf 'hello' | dd of="$MNT/disk.raw" bs=1 seek=8192 conv=notrunc status=none
  unmount_img
  cmp se-sesparse.vmdk orig.bin
}

@test "damaged seSparse headers are refused with one line naming the extent and the cause" {
  local what code
  while IFS='|' read -r what code; do
    sesparse_py "s = L.SeSparse(8 << 20, L.SeSparse.default_grains(8 << 20))
$code
open('x-sesparse.vmdk', 'wb').write(s.image())
open('x.vmdk', 'wb').write(L.descriptor('x-sesparse.vmdk', s.capacity))"
    refused_open x.vmdk "$what"
  done <<'CASES'
the seSparse journal must be replayed first|s.volatile['replay'] = 1
unsupported seSparse version|s.fields['version'] = 0x300000001
a grain size of 16 sectors (only 8)|s.fields['grain'] = 16
grain tables of 128 sectors (only 64)|s.fields['gt_size'] = 128
unsupported seSparse flags|s.fields['flags'] = 1
reserved fields or padding are not zero|s.fields['r3'] = 7
bad volatile header magic|s.volatile['magic'] = 0xcafecafd
the grain directory lies outside the file|s.fields['gd'] = 1 << 40
does not cover the capacity|s.fields['gd_size'] = 0
a capacity of 0 sectors|s.fields['capacity'] = 0
CASES
  # a descriptor larger than the extent's capacity
  sesparse_py "s = L.SeSparse(8 << 20, {})
open('y-sesparse.vmdk', 'wb').write(s.image())
open('y.vmdk', 'wb').write(L.descriptor('y-sesparse.vmdk', s.capacity + 8))"
  refused_open y.vmdk "holds 16384 sectors, fewer than the descriptor's 16392"
}

@test "a damaged directory or table entry reads EIO for its grains only, logged once" {
  # grain 1's entry has an unknown type; table 1's directory entry has the wrong top half
  sesparse_py "s = L.SeSparse(40 << 20, L.SeSparse.default_grains(40 << 20))
s.gte_override = {1: 5 << 60, 9: (3 << 60) | 0xfffffff}
s.gd_override = {1: 0x20000000 << 32}
open('d-sesparse.vmdk', 'wb').write(s.image())
open('d.vmdk', 'wb').write(L.descriptor('d-sesparse.vmdk', s.capacity))
open('d.expect.raw', 'wb').write(s.expect())"
  mount_img d.vmdk "$MNT"
  run dd if="$MNT/disk.raw" of=/dev/null bs=4096 skip=1 count=1 status=none
  [ "$status" -ne 0 ] && [[ "$output" == *"Input/output error"* ]]
  run dd if="$MNT/disk.raw" of=/dev/null bs=4096 skip=9 count=1 status=none
  [ "$status" -ne 0 ]
  run dd if="$MNT/disk.raw" of=/dev/null bs=1M skip=16 count=1 status=none
  [ "$status" -ne 0 ]
  # the rest reads as expected
  cmp <(dd if="$MNT/disk.raw" bs=4096 count=1 status=none) <(dd if=d.expect.raw bs=4096 count=1 status=none)
  cmp <(dd if="$MNT/disk.raw" bs=4096 skip=2 count=7 status=none) <(dd if=d.expect.raw bs=4096 skip=2 count=7 status=none)
  cmp <(dd if="$MNT/disk.raw" bs=1M skip=32 status=none) <(dd if=d.expect.raw bs=1M skip=32 status=none)
  unmount_img
  [ "$(grep -c "reads as an I/O error (logged once per extent)" "$TMP/daemon.log")" -eq 1 ]
}
