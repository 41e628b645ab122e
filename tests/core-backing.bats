#!/usr/bin/env bats
# SPDX-License-Identifier: MIT
# core-backing.bats - the block layer's backing-name policy and chain rules seen from the command line:
# hostile backing names in an image header are refused before mounting (exit 2, one line naming the name,
# the rule and the hint), explicit options make the sensible ones work, missing backing files and loops
# are one clear line, and the seed's rule holds for --backing on raw.

load helpers

setup() { setup_tmp; cd "$TMP"; }
teardown() { teardown_tmp; }

# refused NAME: an overlay naming NAME fails to mount with exit 2 and the rule in one line.
refused() {
  rm -f h.qcow2
  qemu-img create -q -f qcow2 -u -b "$1" -F raw h.qcow2 1M
  run "$IMGFUSE" --foreground h.qcow2 "$MNT"
  [ "$status" -eq 2 ]
  [ "${#lines[@]}" -eq 1 ]
  [[ "$output" == "imgfuse: h.qcow2: backing file '$1' refused: "* ]]
  [[ "$output" == *"--backing-dir"* ]]
  ! mountpoint -q "$MNT"
}

@test "hostile backing names are refused by default: /etc/passwd, ../../etc/passwd, /dev/zero, json:, nbd://" {
  refused /etc/passwd
  refused ../../../../../../../etc/passwd
  refused /dev/zero
  refused 'json:{"file":{"driver":"file","filename":"/etc/passwd"}}'
  refused nbd://127.0.0.1/x
  refused nbd:127.0.0.1:10809
}

@test "a symlink escaping the image's directory is refused; --backing-dir of its target allows it" {
  mkdir -p img other
  qemu-img create -q -f raw other/base.raw 1M
  qemu-io -f raw -c 'write -P 0x5a 0 64k' other/base.raw >/dev/null
  ln -s ../other/base.raw img/link.raw
  qemu-img create -q -f qcow2 -u -b link.raw -F raw img/top.qcow2 1M
  run "$IMGFUSE" --foreground img/top.qcow2 "$MNT"
  [ "$status" -eq 2 ]
  [[ "$output" == *"backing file 'link.raw' refused: it resolves outside"* ]]
  mount_img --backing-dir other img/top.qcow2 "$MNT"
  cmp -n 1048576 "$MNT/disk.raw" other/base.raw
  unmount_img
}

@test "an absolute backing name from another machine is found by base name next to the image, and info says so" {
  qemu-img create -q -f raw base.raw 1M
  qemu-io -f raw -c 'write -P 0x33 0 1M' base.raw >/dev/null
  qemu-img create -q -f qcow2 -u -b /home/suspect/vm/base.raw -F raw top.qcow2 1M
  mount_img top.qcow2 "$MNT"
  cmp "$MNT/disk.raw" base.raw
  grep -q "found by base name" "$MNT/info"
  unmount_img
}

@test "--unsafe-backing restores plain path resolution" {
  qemu-img create -q -f qcow2 -u -b /etc/hostname -F raw h.qcow2 1M
  mount_img --unsafe-backing h.qcow2 "$MNT"
  n=$(stat -c %s /etc/hostname)
  cmp -n "$n" "$MNT/disk.raw" /etc/hostname
  unmount_img
}

@test "a missing backing file: one line with the name as written, where it was looked for, and the hint" {
  qemu-img create -q -f qcow2 -u -b gone.qcow2 -F qcow2 top.qcow2 1M
  run "$IMGFUSE" --foreground top.qcow2 "$MNT"
  [ "$status" -eq 2 ]
  [ "${#lines[@]}" -eq 1 ]
  [[ "$output" == "imgfuse: top.qcow2: backing file 'gone.qcow2' not found (looked for "*"/gone.qcow2); use --backing FILE to name it" ]]
  qemu-img create -q -f raw elsewhere.raw 1M
  mount_img --backing elsewhere.raw --backing-format raw top.qcow2 "$MNT"
  [ "$(stat -c %s "$MNT/disk.raw")" -eq 1048576 ]
  unmount_img
}

@test "a backing loop is one clear line, exit 2" {
  qemu-img create -q -f qcow2 a.qcow2 1M
  qemu-img create -q -f qcow2 -b a.qcow2 -F qcow2 b.qcow2
  qemu-img rebase -u -b b.qcow2 -F qcow2 a.qcow2
  run "$IMGFUSE" --foreground b.qcow2 "$MNT"
  [ "$status" -eq 2 ]
  [ "${#lines[@]}" -eq 1 ]
  [[ "$output" == *"is already in the chain: loop"* ]]
  ! mountpoint -q "$MNT"
}

@test "the seed's rule: --backing on a raw image fails before mounting" {
  truncate -s 1M disk.raw
  qemu-img create -q -f qcow2 base.qcow2 1M
  run "$IMGFUSE" --foreground --backing base.qcow2 disk.raw "$MNT"
  [ "$status" -eq 2 ]
  [ "$output" = "imgfuse: disk.raw: format 'raw' does not support backing files" ]
  ! mountpoint -q "$MNT"
}
