#!/usr/bin/env bats
# SPDX-License-Identifier: MIT
# forensic.bats - what forensic examiners rely on: layer views (MNT/layers/N-NAME/{disk.raw,map}), proof
# that a read-only mount opens no image file for writing and changes nothing, the audit log, and the
# acquisition hash.

load helpers

setup() { setup_tmp; cd "$TMP"; }
teardown() { teardown_tmp; }

@test "layers/0-NAME of a raw image: disk.raw equals the image, map lists what it holds" {
  truncate -s 8M ev.raw
  head -c 65536 /dev/urandom | dd of=ev.raw bs=64k seek=2 conv=notrunc status=none
  mount_img ev.raw "$MNT"
  [ "$(ls "$MNT/layers")" = "0-ev.raw" ]
  cmp "$MNT/layers/0-ev.raw/disk.raw" ev.raw
  [ "$(stat -c %a "$MNT/layers/0-ev.raw/disk.raw")" = 444 ]
  grep -qx "131072 65536 data" "$MNT/layers/0-ev.raw/map"
  grep -qx "0 131072 zero" "$MNT/layers/0-ev.raw/map"
  [ "$(awk '{ s += $2 } END { print s }' "$MNT/layers/0-ev.raw/map")" -eq 8388608 ]
  unmount_img
}

@test "a read-only mount of a chain opens no image file for writing; checksums and mtimes unchanged" {
  head -c 2097152 /dev/urandom > evidence.raw
  qemu-img create -q -f qcow2 -b evidence.raw -F raw mid.qcow2
  qemu-io -c "write -P 0x21 64k 128k" mid.qcow2 > /dev/null
  qemu-img create -q -f qcow2 -b mid.qcow2 -F qcow2 top.qcow2
  qemu-io -c "write -P 0x22 1M 64k" top.qcow2 > /dev/null
  touch -d '2019-05-06 07:08:09' evidence.raw mid.qcow2 top.qcow2
  local f sums
  sums=$(sha256sum evidence.raw mid.qcow2 top.qcow2; stat -c '%n %Y' evidence.raw mid.qcow2 top.qcow2)
  qemu-img convert -O raw top.qcow2 "$TMP/oracle.raw"
  touch -d '2019-05-06 07:08:09' evidence.raw mid.qcow2 top.qcow2
  # LeakSanitizer cannot run under ptrace; the other sanitizers still do
  ASAN_OPTIONS="${ASAN_OPTIONS:+$ASAN_OPTIONS:}detect_leaks=0" \
    strace -f -e trace=openat,open -o "$TMP/strace.log" "$IMGFUSE" --foreground top.qcow2 "$MNT" 2>"$TMP/daemon.log" &
  DAEMON_PID=$!
  MOUNTED=$MNT
  wait_mounted "$MNT" 400
  cmp "$MNT/disk.raw" "$TMP/oracle.raw"
  cat "$MNT/info" "$MNT"/layers/*/disk.raw "$MNT"/layers/*/map > /dev/null
  grep -q "^read-only: yes (evidence files opened O_RDONLY)" "$MNT/info"
  unmount_img
  for f in evidence.raw mid.qcow2 top.qcow2; do
    grep "$f" "$TMP/strace.log" | grep -q O_RDONLY
    ! grep "$f" "$TMP/strace.log" | grep -E 'O_RDWR|O_WRONLY|O_CREAT|O_TRUNC' || false
  done
  [ "$(sha256sum evidence.raw mid.qcow2 top.qcow2; stat -c '%n %Y' evidence.raw mid.qcow2 top.qcow2)" = "$sums" ]
}

@test "imgfuse hash equals sha256sum of the raw image" {
  truncate -s 5M h.raw
  head -c 300000 /dev/urandom | dd of=h.raw bs=1 seek=1234567 conv=notrunc status=none
  run "$IMGFUSE" hash h.raw
  [ "$status" -eq 0 ]
  [ "${output%% *}" = "$(sha256sum < h.raw | cut -d' ' -f1)" ]
}

@test "--audit-log appends one JSON line per mount with files, mode, options and bytes read" {
  head -c 1048576 /dev/urandom > a.raw
  mount_img --audit-log "$TMP/audit.log" --on-read-error=report a.raw "$MNT"
  cat "$MNT/disk.raw" > /dev/null
  unmount_img
  mount_img --rw --audit-log "$TMP/audit.log" a.raw "$MNT"
  printf 'hello' | dd of="$MNT/disk.raw" conv=notrunc status=none
  unmount_img
  [ "$(wc -l < "$TMP/audit.log")" -eq 2 ]
  python3 - "$TMP/audit.log" "$TMP/a.raw" "$MNT" <<'EOF'
import json, os, sys
lines = [json.loads(l) for l in open(sys.argv[1])]
ro, rw = lines
for l in lines:
    assert l["user"] and l["uid"] == os.getuid(), l
    assert l["mountpoint"] == sys.argv[3], l
    assert l["images"][0]["file"] == sys.argv[2], l
    assert l["images"][0]["size"] == 1048576, l
    assert l["mount_time"] <= l["unmount_time"], l
    assert l["exit_status"] == 0, l
assert ro["mode"] == "read-only" and rw["mode"] == "read-write", lines
assert "--on-read-error=report" in ro["options"], ro
assert ro["bytes_read"] >= 1048576 and ro["bytes_written"] == 0, ro
assert ro["images"][0]["unchanged"] is True, ro
assert rw["bytes_written"] == 5, rw
EOF
}

@test "--audit-log on an unwritable path fails before mounting with exit 2" {
  truncate -s 1M a.raw
  run "$IMGFUSE" --audit-log "$TMP/no/such/dir/audit.log" a.raw "$MNT"
  [ "$status" -eq 2 ]
  [ "${#lines[@]}" -eq 1 ]
  [[ "$output" == "imgfuse: $TMP/no/such/dir/audit.log: "* ]]
  nothing_mounted
}

# make_chain: base.qcow2 <- mid.qcow2 <- top.qcow2 with distinct data in each layer and a zero cluster.
make_chain() {
  qemu-img create -q -f qcow2 base.qcow2 8M
  qemu-io -c "write -P 0x11 0 1M" -c "write -P 0x12 6M 64k" base.qcow2 > /dev/null
  qemu-img create -q -f qcow2 -b base.qcow2 -F qcow2 mid.qcow2
  qemu-io -c "write -P 0x22 1M 1M" -c "write -z 6M 64k" mid.qcow2 > /dev/null
  qemu-img create -q -f qcow2 -b mid.qcow2 -F qcow2 top.qcow2
  qemu-io -c "write -P 0x33 512k 1M" -c "write -P 0x34 7M 4k" top.qcow2 > /dev/null
}

@test "layers of a 3-layer qcow2 chain: disk.raw equals qemu-img convert, map equals qemu-img map" {
  make_chain
  mount_img top.qcow2 "$MNT"
  [ "$(ls "$MNT/layers" | tr '\n' ' ')" = "0-top.qcow2 1-mid.qcow2 2-base.qcow2 " ]
  n=0
  for img in top mid base; do
    dir="$MNT/layers/$n-$img.qcow2"
    qemu-img convert -O raw "$img.qcow2" "$TMP/$img.conv"
    cmp "$dir/disk.raw" "$TMP/$img.conv"
    qemu-img map --output=json "$img.qcow2" > "$TMP/$img.map.json"
    layer_map_equals_qemu "$TMP/$img.map.json" "$dir/map"
    [ -n "$(head -c 1 "$dir/map")" ]   # the layer holds something
    n=$((n + 1))
  done
  cmp "$MNT/disk.raw" "$TMP/top.conv"
  unmount_img
}

@test "--on-read-error=zero: unreadable ranges read as zeros and are listed in MNT/errors" {
  head -c 1048576 /dev/urandom > bad.raw
  printf 'event=read errno=5 offset=%d length=4096 always\nevent=read errno=5 offset=%d length=8192 always\n' \
    $((256 * 1024)) $((768 * 1024)) > "$TMP/rules"
  mount_img --blkdebug "$TMP/rules" bad.raw "$MNT"
  run dd if="$MNT/disk.raw" of=/dev/null bs=4k skip=64 count=1 iflag=direct status=none
  [ "$status" -ne 0 ]
  [[ "$output" == *"Input/output error"* ]]
  dd if="$MNT/disk.raw" of=/dev/null bs=4k skip=65 count=1 iflag=direct status=none
  [ -z "$(cat "$MNT/errors")" ]   # streamed (size 0): read it to see it is empty
  unmount_img
  mount_img --blkdebug "$TMP/rules" --on-read-error=zero bad.raw "$MNT"
  cat "$MNT/disk.raw" > "$TMP/read"
  cmp <(head -c 262144 "$TMP/read") <(head -c 262144 bad.raw)
  cmp <(dd if="$TMP/read" bs=4k skip=64 count=1 status=none) <(head -c 4096 /dev/zero)
  cmp <(dd if="$TMP/read" bs=4k skip=65 count=127 status=none) <(dd if=bad.raw bs=4k skip=65 count=127 status=none)
  cmp <(dd if="$TMP/read" bs=4k skip=192 count=2 status=none) <(head -c 8192 /dev/zero)
  cmp <(dd if="$TMP/read" bs=4k skip=194 status=none) <(dd if=bad.raw bs=4k skip=194 status=none)
  cat "$MNT/errors"
  [ "$(awk '{ print $1, $2, $3 }' "$MNT/errors" | sort -n | tr '\n' ';')" = "262144 4096 0;786432 8192 0;" ]
  grep -q "Input/output error" "$MNT/errors"
  unmount_img
}

@test "a qcow2 with broken compressed clusters and an L2 entry past EOF: EIO there by default, zeros + MNT/errors with --on-read-error=zero" {
  python3 -c '
import sys
with open(sys.argv[1], "wb") as f:
    for c in range(16):
        line = ("cluster %02d says hello, compress me well. " % c).encode()
        f.write((line * (65536 // len(line) + 1))[:65536])' orig.raw
  qemu-img convert -c -f raw -O qcow2 orig.raw c.qcow2
  python3 "$BATS_TEST_DIRNAME/qcow2-corrupt.py" c.qcow2 bad-deflate 3
  python3 "$BATS_TEST_DIRNAME/qcow2-corrupt.py" c.qcow2 bad-deflate 9
  python3 "$BATS_TEST_DIRNAME/qcow2-corrupt.py" c.qcow2 past-eof 12
  mount_img c.qcow2 "$MNT"
  for c in 3 9 12; do
    run dd if="$MNT/disk.raw" of=/dev/null bs=64k skip=$c count=1 iflag=direct status=none
    [ "$status" -ne 0 ]
    [[ "$output" == *"Input/output error"* ]]
  done
  for c in 0 2 4 8 10 11 13 15; do
    cmp <(dd if="$MNT/disk.raw" bs=64k skip=$c count=1 iflag=direct status=none) \
        <(dd if=orig.raw bs=64k skip=$c count=1 status=none)
  done
  unmount_img
  mount_img --on-read-error=zero c.qcow2 "$MNT"
  cat "$MNT/disk.raw" > "$TMP/read"
  for c in $(seq 0 15); do
    if [ "$c" = 3 ] || [ "$c" = 9 ] || [ "$c" = 12 ]; then
      cmp <(dd if="$TMP/read" bs=64k skip=$c count=1 status=none) <(head -c 65536 /dev/zero)
    else
      cmp <(dd if="$TMP/read" bs=64k skip=$c count=1 status=none) <(dd if=orig.raw bs=64k skip=$c count=1 status=none)
    fi
  done
  cat "$MNT/errors"
  [ "$(awk '{ print $1, $2, $3 }' "$MNT/errors" | sort -n | tr '\n' ';')" = "196608 65536 0;589824 65536 0;786432 65536 0;" ]
  grep -q "c.qcow2" "$MNT/errors"
  unmount_img
}

@test "imgfuse hash of a qcow2 chain equals sha256sum of qemu-img convert -O raw" {
  make_chain
  run "$IMGFUSE" hash top.qcow2
  [ "$status" -eq 0 ]
  [ "$output" = "$(sha256sum < "$(raw_of top.qcow2)" | cut -d' ' -f1)  top.qcow2" ]
  run "$IMGFUSE" hash --algo md5 mid.qcow2
  [ "$output" = "$(md5sum < "$(raw_of mid.qcow2)" | cut -d' ' -f1)  mid.qcow2" ]
}
