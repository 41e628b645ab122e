#!/usr/bin/env bats
# SPDX-License-Identifier: MIT
# dmg.bats - the read-only DMG (UDIF) driver on images written by tests/dmg-make.py from the UDIF
# description: raw, zero-fill, ignore, ADC, zlib and bzip2 chunks in three blkx tables read back byte for
# byte like the source, like dmg2img, and (zlib only: this qemu lacks the bzip2 module and ADC) like
# `qemu-img convert -f dmg`; zero and ignore chunks are holes; LZFSE and LZMA are refused by name; a
# chunk that inflates to the wrong size reads as EIO; hostile tables and plists are refused with one line.

load helpers

setup() { setup_tmp; cd "$TMP"; }
teardown() { teardown_tmp; }

DMGMAKE="$BATS_TEST_DIRNAME/dmg-make.py"

seek() {
  python3 -c 'import os, sys
fd = os.open(sys.argv[1], os.O_RDONLY)
print(os.lseek(fd, int(sys.argv[2]), os.SEEK_DATA if sys.argv[3] == "data" else os.SEEK_HOLE))' "$@"
}

@test "every chunk type in three tables reads like the source and like dmg2img; zero and ignore are holes" {
  python3 "$DMGMAKE" a.dmg all
  dmg2img a.dmg d2.raw >/dev/null
  mount_img a.dmg "$MNT"
  [ "$(stat -c %s "$MNT/disk.raw")" -eq 524288 ]
  same_bytes "$MNT/disk.raw" a.dmg.src
  same_bytes "$MNT/disk.raw" d2.raw
  [ "$(seek "$MNT/disk.raw" 0 hole)" -eq $((384 * 512)) ]
  [ "$(seek "$MNT/disk.raw" $((384 * 512)) data)" -eq $((512 * 512)) ]
  [ "$(seek "$MNT/disk.raw" $((768 * 512)) hole)" -eq $((768 * 512)) ]
  [ "$(seek "$MNT/disk.raw" $((768 * 512)) data)" -eq $((896 * 512)) ]
  unmount_img
  run "$IMGFUSE" info a.dmg
  [[ "$output" == *"format: dmg"* && "$output" == *"dmg_tables: 3"* && "$output" == *"dmg_chunks: 8"* ]]
}

@test "a zlib DMG (UDZO-like, 1 MiB chunks) reads like the source, dmg2img and qemu-img, from many readers" {
  python3 "$DMGMAKE" z.dmg zlib-big
  dmg2img z.dmg d2.raw >/dev/null
  qemu-img convert -f dmg -O raw z.dmg q.raw
  mount_img z.dmg "$MNT"
  same_bytes "$MNT/disk.raw" z.dmg.src
  same_bytes "$MNT/disk.raw" d2.raw
  same_bytes "$MNT/disk.raw" q.raw
  local pids=() i
  for i in 0 1 2 3 4 5; do
    dd if="$MNT/disk.raw" of=part$i bs=4096 skip=$((i * 100)) 2>/dev/null &
    pids+=($!)
  done
  wait "${pids[@]}"
  for i in 0 1 2 3 4 5; do cmp part$i <(dd if=q.raw bs=4096 skip=$((i * 100)) 2>/dev/null); done
  unmount_img
}

@test "dmg: a chunk that inflates short, long or to a bomb reads as EIO; its neighbours still read" {
  for c in short long bomb; do
    python3 "$DMGMAKE" $c.dmg $c
    mount_img $c.dmg "$MNT"
    run dd if="$MNT/disk.raw" of=/dev/null bs=65536 skip=4 count=1
    [ "$status" -ne 0 ]
    [[ "$output" == *"Input/output error"* ]]
    cmp <(dd if="$MNT/disk.raw" bs=65536 count=4 2>/dev/null) <(head -c 262144 $c.dmg.src)
    cmp <(dd if="$MNT/disk.raw" bs=65536 skip=5 2>/dev/null) <(tail -c +327681 $c.dmg.src)
    unmount_img
  done
}

@test "dmg: LZFSE, LZMA, hostile tables and plists are refused with one line; --rw and --backing exit 2" {
  python3 "$DMGMAKE" a.dmg all
  refused_open a.dmg "DMG images are read-only (mount without --rw, or use --overlay)" --rw
  refused_open a.dmg "format 'dmg' does not support backing files" --backing a.dmg.src
  declare -A want=(
    [lzfse]="DMG chunk type LZFSE (0x80000007) not supported (no library for it)"
    [lzma]="DMG chunk type LZMA (0x80000008) not supported (no library for it)"
    [count]="DMG table 0 claims 4294967295 chunks in 364 bytes"
    [past]="DMG table 2 has a chunk stored past the end of the file"
    [nest]="DMG XML plist does not parse: Excessive depth in document: 256 use XML_PARSE_HUGE option"
    [xmlhuge]="DMG XML plist of 1099511627776 bytes at ")
  for c in "${!want[@]}"; do
    python3 "$DMGMAKE" $c.dmg $c
    refused_open $c.dmg "${want[$c]}"
  done
}
