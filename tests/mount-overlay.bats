#!/usr/bin/env bats
# SPDX-License-Identifier: MIT
# mount-overlay.bats - --overlay FILE and --snapshot: writes go to a qcow2 overlay backed by IMAGE, IMAGE's
# bytes and mtime never change; an existing FILE is reused only when it is an overlay of IMAGE.

load helpers

setup() { setup_tmp; cd "$TMP"; }
teardown() { teardown_tmp; }

@test "--overlay reuses an existing overlay of IMAGE made by qemu-img and names it in info" {
  head -c 1048576 /dev/urandom > base.raw
  touch -d '2018-01-01 00:00:00' base.raw
  sum=$(md5sum < base.raw); mtime=$(stat -c %Y base.raw)
  qemu-img create -q -f qcow2 -b "$TMP/base.raw" -F raw ov.qcow2
  mount_img --overlay ov.qcow2 base.raw "$MNT"
  cmp "$MNT/disk.raw" base.raw
  grep -q "^mode: writes go to the overlay ov.qcow2; the image is not modified" "$MNT/info"
  grep -q "^layers: 2" "$MNT/info"
  [ "$(stat -c %a "$MNT/disk.raw")" = 644 ]
  unmount_img
  [ "$(md5sum < base.raw)" = "$sum" ]
  [ "$(stat -c %Y base.raw)" = "$mtime" ]
}

@test "--overlay refuses a file that is not an overlay of IMAGE, with one line and exit 2" {
  head -c 65536 /dev/urandom > base.raw
  truncate -s 65536 other.raw
  qemu-img create -q -f qcow2 -b "$TMP/other.raw" -F raw foreign.qcow2
  qemu-img create -q -f qcow2 plain.qcow2 64k
  for ov in foreign.qcow2 plain.qcow2 other.raw; do
    before=$(md5sum < "$ov")
    run "$IMGFUSE" --overlay "$ov" base.raw "$MNT"
    echo "$ov -> $status: $output"
    [ "$status" -eq 2 ]
    [ "${#lines[@]}" -eq 1 ]
    [[ "$output" == "imgfuse: $ov: "*"refusing to use it" ]]
    [ "$(md5sum < "$ov")" = "$before" ]
  done
  nothing_mounted
}

@test "--overlay and --snapshot refuse options that make no sense with them" {
  truncate -s 65536 base.raw
  for args in "--overlay o.qcow2 --snapshot" "--overlay o.qcow2 --offset=4k" "--snapshot --backing x.raw" \
              "--snapshot --no-backing" "--overlay o.qcow2 -o ro" "--overlay"; do
    run $IMGFUSE $args base.raw "$MNT"
    echo "$args -> $status: $output"
    [ "$status" -eq 2 ]
    [ "${#lines[@]}" -eq 1 ]
    [[ "$output" == "imgfuse: "* ]]
  done
  [ ! -e o.qcow2 ]
  nothing_mounted
}

@test "--overlay creates a qcow2 overlay: writes land there, IMAGE unchanged, reused on the next mount" {
  head -c 4194304 /dev/urandom > base.raw
  touch -d '2018-01-01 00:00:00' base.raw
  sum=$(md5sum < base.raw); mtime=$(stat -c %Y base.raw)
  mount_img --overlay new.qcow2 base.raw "$MNT"
  printf 'written through the overlay' | dd of="$MNT/disk.raw" bs=1 seek=1048576 conv=notrunc status=none
  dd if=/dev/zero of="$MNT/disk.raw" bs=64k seek=10 count=2 conv=notrunc,fsync status=none
  cp "$MNT/disk.raw" "$TMP/seen.raw"
  unmount_img
  [ "$(md5sum < base.raw)" = "$sum" ]
  [ "$(stat -c %Y base.raw)" = "$mtime" ]
  qemu-img info --output=json new.qcow2 > "$TMP/info.json"
  python3 -c '
import json, sys
i = json.load(open(sys.argv[1]))
assert i["format"] == "qcow2", i
assert i["backing-filename"] == sys.argv[2], i
assert i["backing-filename-format"] == "raw", i
assert i["virtual-size"] == 4194304, i' "$TMP/info.json" "$TMP/base.raw"
  qemu-img check -q new.qcow2
  qemu-img compare -q new.qcow2 "$TMP/seen.raw"
  mount_img --overlay new.qcow2 base.raw "$MNT"
  cmp "$MNT/disk.raw" "$TMP/seen.raw"
  [ "$(python3 "$BATS_TEST_DIRNAME/seekmap.py" "$MNT/layers/0-new.qcow2/disk.raw" | wc -l)" -ge 1 ]
  grep -qx "1048576 65536 data" "$MNT/layers/0-new.qcow2/map"
  unmount_img
}

@test "--overlay over a qcow2 chain records the base's format; the chain below is never written" {
  qemu-img create -q -f qcow2 base.qcow2 2M
  qemu-io -c "write -P 0x5a 0 2M" base.qcow2 > /dev/null
  qemu-img create -q -f qcow2 -b base.qcow2 -F qcow2 mid.qcow2
  qemu-io -c "write -P 0x6b 1M 64k" mid.qcow2 > /dev/null
  sums=$(md5sum base.qcow2 mid.qcow2)
  mount_img --overlay top.qcow2 mid.qcow2 "$MNT"
  [ "$(ls "$MNT/layers" | tr '\n' ' ')" = "0-top.qcow2 1-mid.qcow2 2-base.qcow2 " ]
  cmp "$MNT/disk.raw" "$(raw_of mid.qcow2)"
  dd if=/dev/urandom of="$MNT/disk.raw" bs=4k seek=300 count=8 conv=notrunc,fsync status=none
  cp "$MNT/disk.raw" "$TMP/seen.raw"
  unmount_img
  [ "$(md5sum base.qcow2 mid.qcow2)" = "$sums" ]
  [ "$(qemu-img info --output=json top.qcow2 | python3 -c 'import json,sys; print(json.load(sys.stdin)["backing-filename-format"])')" = qcow2 ]
  qemu-img check -q top.qcow2
  qemu-img compare -q top.qcow2 "$TMP/seen.raw"
}

@test "--snapshot: writes are visible while mounted, discarded at unmount, nothing left in TMPDIR" {
  head -c 2097152 /dev/urandom > s.raw
  sum=$(md5sum < s.raw); mtime=$(stat -c %Y s.raw)
  mkdir "$TMP/tmpdir"
  TMPDIR="$TMP/tmpdir" mount_img --snapshot s.raw "$MNT"
  [ "$(stat -c %a "$MNT/disk.raw")" = 644 ]
  grep -q "^mode: writes go to the temporary overlay $TMP/tmpdir/imgfuse-snapshot-.*/overlay.qcow2 (deleted), discarded at unmount$" "$MNT/info"
  dd if=/dev/zero of="$MNT/disk.raw" bs=64k count=4 conv=notrunc,fsync status=none
  cmp <(head -c 262144 "$MNT/disk.raw") <(head -c 262144 /dev/zero)
  [ -z "$(ls "$TMP/tmpdir")" ]   # unlinked while open
  unmount_img
  [ -z "$(ls "$TMP/tmpdir")" ]
  [ "$(md5sum < s.raw)" = "$sum" ]
  [ "$(stat -c %Y s.raw)" = "$mtime" ]
}

@test "--overlay and --snapshot of a raw image whose size is not a multiple of 512 keep its exact size" {
  for size in 1000 $((1048576 + 7)); do
    head -c $size /dev/urandom > odd.raw
    sum=$(md5sum < odd.raw)
    rm -f odd.qcow2
    mount_img --overlay odd.qcow2 odd.raw "$MNT"
    [ "$(stat -c %s "$MNT/disk.raw")" -eq $size ]
    cmp "$MNT/disk.raw" odd.raw
    printf 'END' | dd of="$MNT/disk.raw" bs=1 seek=$((size - 3)) conv=notrunc status=none
    run dd if=/dev/zero of="$MNT/disk.raw" bs=1 count=1 seek=$size conv=notrunc status=none
    [ "$status" -ne 0 ]
    [[ "$output" == *"No space left on device"* ]]
    unmount_img
    [ "$(md5sum < odd.raw)" = "$sum" ]
    check_clean odd.qcow2
    run qemu-img info --output=json odd.qcow2     # QEMU's own rounding, as for an overlay it makes
    [[ "$output" == *"\"virtual-size\": $(( (size + 511) / 512 * 512 ))"* ]]
    mount_img --overlay odd.qcow2 odd.raw "$MNT"  # reused: the same exact size, the write kept
    [ "$(stat -c %s "$MNT/disk.raw")" -eq $size ]
    cmp <(head -c $((size - 3)) "$MNT/disk.raw") <(head -c $((size - 3)) odd.raw)
    [ "$(tail -c 3 "$MNT/disk.raw")" = END ]
    unmount_img

    mount_img --snapshot odd.raw "$MNT"
    [ "$(stat -c %s "$MNT/disk.raw")" -eq $size ]
    cmp "$MNT/disk.raw" odd.raw
    unmount_img
    [ "$(md5sum < odd.raw)" = "$sum" ]
  done
}

@test "--snapshot then kill -9: nothing of the overlay stays in TMPDIR, and no dead mount" {
  head -c 2097152 /dev/urandom > k.raw
  sum=$(md5sum < k.raw)
  mkdir "$TMP/tmpdir"
  TMPDIR="$TMP/tmpdir" mount_img --snapshot k.raw "$MNT"
  dd if=/dev/urandom of="$MNT/disk.raw" bs=64k count=8 conv=notrunc,fsync status=none
  [ "$(ls -A "$TMP/tmpdir")" = "" ]
  # the daemon still holds the (deleted) overlay, with the writes in it
  ls -l /proc/"$DAEMON_PID"/fd | grep -q "$TMP/tmpdir/imgfuse-snapshot-.*/overlay.qcow2 (deleted)"
  kill -9 "$DAEMON_PID"; wait "$DAEMON_PID" 2>/dev/null || true; DAEMON_PID=
  wait_gone "$MNT"
  wait_unmount_helper "$(realpath "$MNT")"
  [ "$(ls -A "$TMP/tmpdir")" = "" ]
  [ "$(md5sum < k.raw)" = "$sum" ]
}
