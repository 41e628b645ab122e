#!/usr/bin/env bats
# SPDX-License-Identifier: MIT
# probe-known-formats.bats - every format of the known-magic table (lib/probe.c) now has a driver: a
# file of one is never served as raw but goes to its driver, which reads it or says why it declines
# (LUKS: a key is needed; EWF2/L01: refused by name; as the top image, a backing file or an --overlay
# base); -f raw shows the file's bytes and info names the driver; a probed raw image refuses a write
# that would put any known magic in sector 0; plain disks (MBR, GPT, ISO9660) stay raw; a fixed VHD
# stays raw (as in QEMU) and info says -f vpc reads it; VHDX probes as vhdx.

load helpers

setup() { setup_tmp; cd "$TMP"; }
teardown() { teardown_tmp; }

# magic_file FILE SIZE OFFSET HEXBYTES [end]: a file of SIZE bytes (pattern 0x5a) with HEXBYTES at OFFSET
# from the start, or OFFSET bytes before the end with "end".
magic_file() {
  python3 - "$@" <<'EOF'
import sys
path, size, off, magic = sys.argv[1], int(sys.argv[2]), int(sys.argv[3], 0), bytes.fromhex(sys.argv[4])
d = bytearray(b"\x5a" * size)
if len(sys.argv) > 5 and sys.argv[5] == "end":
    off = size - off
d[off:off + len(magic)] = magic
open(path, "wb").write(d)
EOF
}

hex() { printf '%s' "$1" | od -An -tx1 | tr -d ' \n'; }

@test "-f raw mounts a LUKS container read-only with the file's exact bytes, and info names its driver" {
  # -f raw shows its bytes, info names the driver that reads it; --rw with -f raw: the container's bytes
  # are writable when asked for
  make_luks l.luks
  mount_img -f raw l.luks "$MNT"
  same_bytes "$MNT/disk.raw" l.luks
  grep -qF "  looks_like: LUKS encrypted container (read it with -f luks)" "$MNT/info"
  unmount_img
  cp l.luks w.luks
  mount_img --rw -f raw w.luks "$MNT"
  printf 'changed!' | dd of="$MNT/disk.raw" bs=1 seek=0 conv=notrunc status=none
  unmount_img
  [ "$(head -c 8 w.luks)" = "changed!" ]
}

@test "a LUKS container probes as luks: without a key, mount, hash, map, a backing file and an --overlay base say a key is needed; info shows the header" {
  make_luks l.luks
  magic_file l2.luks 65536 0 "4c554b53babe0002"
  local need="LUKS encrypted container: a key is needed (--key-file FILE or --passphrase-fd N)"
  for cmd in "--foreground" "hash" "map"; do
    if [ "$cmd" = --foreground ]; then run timeout 30 "$IMGFUSE" --foreground l.luks "$MNT"; else run "$IMGFUSE" $cmd l.luks; fi
    echo "$cmd -> $status: $output"
    [ "$status" -eq 2 ] && [ "${#lines[@]}" -eq 1 ]
    [ "${lines[0]}" = "imgfuse: l.luks: $need" ]
    # the magic alone: the driver says what is wrong with the header
    if [ "$cmd" = --foreground ]; then run timeout 30 "$IMGFUSE" --foreground l2.luks "$MNT"; else run "$IMGFUSE" $cmd l2.luks; fi
    [ "$status" -eq 2 ] && [ "${#lines[@]}" -eq 1 ]
    [ "${lines[0]}" = "imgfuse: l2.luks: LUKS2 header: no valid copy (primary: bad header size, secondary: not found)" ]
  done
  # info reads no data, so it needs no key (as qemu-img info); a broken header is still refused
  run "$IMGFUSE" info l.luks </dev/null
  [ "$status" -eq 0 ]
  [[ "$output" == *"format: luks"* && "$output" == *"encrypted: yes (no key given; data not readable)"* ]]
  run "$IMGFUSE" info l2.luks </dev/null
  [ "$status" -eq 2 ] && [ "${lines[0]}" = "imgfuse: l2.luks: LUKS2 header: no valid copy (primary: bad header size, secondary: not found)" ]
  not_mounted "$MNT"
  qemu-img create -q -f qed -u -b l.luks -F luks top.qed 4M
  run timeout 30 "$IMGFUSE" --foreground top.qed "$MNT"
  [ "$status" -eq 2 ] && [ "${lines[0]}" = "imgfuse: $TMP/l.luks: $need" ]
  run timeout 30 "$IMGFUSE" --foreground --overlay ov.qcow2 l.luks "$MNT"
  [ "$status" -eq 2 ] && [ "${lines[0]}" = "imgfuse: l.luks: $need" ]
  [ ! -e ov.qcow2 ]
  not_mounted "$MNT"
}

# the ewf driver's refusal of an Ex01 file (libewf 20140813 reads EWF1 only)
ex01() { echo "imgfuse: $1: EWF2 (Ex01) evidence file: not readable (libewf 20140813 reads EWF version 1 only: E01, S01)"; }

@test "a known format its driver declines is refused as a backing file (probed) and as an --overlay base" {
  magic_file base.luks 65536 0 "455646320d0a8100"   # an Ex01 magic (the name does not matter)
  # qed stores no backing format: the backing file is probed (-u: qemu-img needs no key to record it)
  qemu-img create -q -f qed -u -b base.luks -F luks top.qed 4M
  run timeout 30 "$IMGFUSE" --foreground top.qed "$MNT"
  echo "$output"
  [ "$status" -eq 2 ]
  [ "${#lines[@]}" -eq 1 ]
  [ "${lines[0]}" = "$(ex01 "$TMP/base.luks")" ]
  not_mounted "$MNT"
  # a qcow2 whose backing-format extension is gone (renamed to an unknown extension): probed too
  qemu-img create -q -f qcow2 -u -b base.luks -F raw top.qcow2 4M
  python3 - <<'EOF'
d = bytearray(open("top.qcow2", "rb").read())
i = d.index(bytes.fromhex("e2792aca"), 72, 4096)
d[i:i + 4] = bytes.fromhex("12345678")
open("top.qcow2", "wb").write(d)
EOF
  run "$IMGFUSE" info top.qcow2
  echo "$output"
  [ "$status" -eq 2 ]
  [ "${lines[0]}" = "$(ex01 "$TMP/base.luks")" ]
  # the backing file declared raw is read raw, as declared (never probed)
  qemu-img create -q -f qcow2 -u -b base.luks -F raw declared.qcow2 4M
  run "$IMGFUSE" info declared.qcow2
  [ "$status" -eq 0 ]
  # --overlay over an Ex01: refused, no overlay made
  magic_file c.luks 65536 0 "455646320d0a8100"
  run timeout 30 "$IMGFUSE" --foreground --overlay ov.qcow2 c.luks "$MNT"
  echo "$output"
  [ "$status" -eq 2 ]
  [ "${lines[0]}" = "$(ex01 c.luks)" ]
  [ ! -e ov.qcow2 ]
  not_mounted "$MNT"
}

@test "a probed raw image mounted --rw refuses a write putting any known magic in sector 0" {
  truncate -s 1M d.raw
  cp d.raw d.orig
  mount_img --rw d.raw "$MNT"
  for magic in vhdxfile 'LUKS\xba\xbe' 'EVF\x09\x0d\x0a\xff\x00' WithouFreSpacExt 'QFI\xfb\x00\x00\x00\x01'; do
    run dd of="$MNT/disk.raw" bs=512 count=1 conv=notrunc status=none < <(printf "$magic"; head -c 500 /dev/zero)
    echo "$magic -> $status: $output"
    [ "$status" -ne 0 ]
  done
  # the VDI magic sits at 0x40: a write there is refused too; other writes to sector 0 are fine
  run dd of="$MNT/disk.raw" bs=1 seek=64 conv=notrunc status=none < <(printf '\x7f\x10\xda\xbe')
  [ "$status" -ne 0 ]
  printf 'plain data' | dd of="$MNT/disk.raw" bs=1 seek=0 conv=notrunc status=none
  unmount_img
  grep -q "write to sector 0 refused: the image would then look like a VHDX image" "$TMP/daemon.log"
  [ "$(head -c 10 d.raw)" = "plain data" ]
  cmp -i 512 d.raw d.orig
}

@test "plain disks stay raw: MBR, GPT and ISO9660 signatures are never refused" {
  magic_file mbr.img 1048576 510 55aa
  magic_file gpt.img 1048576 512 "$(hex 'EFI PART')"
  magic_file iso.img 1048576 32769 "$(hex CD001)"
  for f in mbr.img gpt.img iso.img; do
    mount_img "$f" "$MNT"
    same_bytes "$MNT/disk.raw" "$f"
    grep -q "^  format: raw$" "$MNT/info"
    ! grep -q looks_like "$MNT/info" || false
    unmount_img
  done
}

@test "a fixed VHD stays raw when probed (as in QEMU); info says -f vpc reads it" {
  qemu-img create -q -f vpc -o subformat=fixed f.vhd 4M
  run "$IMGFUSE" info f.vhd
  [ "$status" -eq 0 ]
  [[ "$output" == *"  format: raw"* ]]
  [[ "$output" == *"  looks_like: fixed VHD image (read it with -f vpc)"* ]]
  run "$IMGFUSE" info -f vpc f.vhd
  [ "$status" -eq 0 ]
  [[ "$output" != *"looks_like"* ]]
}

@test "a qcow magic with a version no driver knows goes to the qcow2 driver, which says why" {
  magic_file q4.img 65536 0 "514649fb00000004"
  run "$IMGFUSE" info q4.img
  echo "$output"
  [ "$status" -eq 2 ]
  [ "${#lines[@]}" -eq 1 ]
  [[ "${lines[0]}" == "imgfuse: q4.img: "*"version 4"* ]]
}

@test "VHDX has a driver now: probed as vhdx (top image and backing file), and -f raw names it" {
  qemu-img create -q -f vhdx x.vhdx 4M
  qemu-io -f vhdx -c 'write -P 0x42 1000 3000' x.vhdx >/dev/null
  qemu-img convert -f vhdx -O raw x.vhdx x.raw
  for cmd in info map; do
    run "$IMGFUSE" $cmd x.vhdx
    [ "$status" -eq 0 ]
  done
  mount_img x.vhdx "$MNT"
  grep -q "^  format: vhdx$" "$MNT/info"
  same_bytes "$MNT/disk.raw" x.raw
  unmount_img
  # qed stores no backing format: the VHDX backing file is probed
  qemu-img create -q -f qed -b x.vhdx -F vhdx top.qed 4M
  mount_img top.qed "$MNT"
  same_bytes "$MNT/disk.raw" x.raw
  unmount_img
  mount_img -f raw x.vhdx "$MNT"
  same_bytes "$MNT/disk.raw" x.vhdx
  grep -qF "  looks_like: VHDX image (read it with -f vhdx)" "$MNT/info"
  unmount_img
}

@test "a cloop magic over a broken header goes to the cloop driver, which says why" {
  magic_file c.cloop 65536 0 "$(printf '#!/bin/sh\n#V2.0 Format\nmodprobe cloop file=$0 && mount -r -t iso9660 /dev/cloop $1\n' | od -An -tx1 | tr -d ' \n')"
  run "$IMGFUSE" info c.cloop
  echo "$output"
  [ "$status" -eq 2 ]
  [ "${#lines[@]}" -eq 1 ]
  [ "${lines[0]}" = "imgfuse: c.cloop: cloop block size 1515870810 invalid (a multiple of 512 up to 16 MiB)" ]
}

@test "a Bochs magic over another type goes to the bochs driver, which says why" {
  magic_file b.bochs 65536 0 "$(hex 'Bochs Virtual HD Image')00"
  run "$IMGFUSE" info b.bochs
  echo "$output"
  [ "$status" -eq 2 ]
  [ "${#lines[@]}" -eq 1 ]
  [ "${lines[0]}" = "imgfuse: b.bochs: Bochs image of type 'ZZZZZZZZZZZZZZZZ' subtype 'ZZZZZZZZZZZZZZZZ' not supported (only growing redologs)" ]
}

@test "a DMG trailer over a broken header goes to the dmg driver, which says why" {
  magic_file d.dmg 65536 512 "$(hex koly)0000000400000200" end
  run "$IMGFUSE" info d.dmg
  echo "$output"
  [ "$status" -eq 2 ]
  [ "${#lines[@]}" -eq 1 ]
  [ "${lines[0]}" = "imgfuse: d.dmg: DMG data fork passes the trailer" ]
}
