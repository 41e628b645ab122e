#!/usr/bin/env bats
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
  ! grep -q " $TMP" /proc/mounts
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
  ! grep -q " $TMP" /proc/mounts
}
