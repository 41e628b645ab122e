#!/usr/bin/env bats
# SPDX-License-Identifier: MIT
# request-path.bats - the block layer's request-path features as seen through the mount: statistics in
# MNT/stats.json (exact byte counts of what a test did).

load helpers

setup() { setup_tmp; cd "$TMP"; }
teardown() { teardown_tmp; }

# stat_of NODE_DEPTH ROLE KEY: one counter from MNT/stats.json.
stat_of() {
  python3 -c '
import json, sys
d = json.load(open(sys.argv[1]))
n = [n for n in d["nodes"] if n["depth"] == int(sys.argv[2]) and n["role"] == sys.argv[3]][0]
print(n[sys.argv[4]])' "$MNT/stats.json" "$@"
}

@test "stats.json counts exactly the bytes read and written through disk.raw (O_DIRECT)" {
  truncate -s 8M s.raw
  mount_img --rw s.raw "$MNT"
  [ "$(stat_of 0 format rd_bytes)" -eq 0 ]
  python3 - "$MNT/disk.raw" <<'EOF'
import mmap, os, sys
fd = os.open(sys.argv[1], os.O_RDWR | os.O_DIRECT)
buf = mmap.mmap(-1, 1048576)
buf.write(b"\x42" * 1048576)
assert os.pwritev(fd, [memoryview(buf)[:65536]], 1048576) == 65536
assert os.pwritev(fd, [memoryview(buf)[:4096]], 4096) == 4096
assert os.preadv(fd, [buf], 0) == 1048576
assert os.preadv(fd, [memoryview(buf)[:8192]], 2097152) == 8192
os.fsync(fd)
os.close(fd)
EOF
  [ "$(stat_of 0 format rd_bytes)" -eq $((1048576 + 8192)) ]
  [ "$(stat_of 0 format rd_ops)" -eq 2 ]
  [ "$(stat_of 0 format wr_bytes)" -eq $((65536 + 4096)) ]
  [ "$(stat_of 0 format wr_ops)" -eq 2 ]
  [ "$(stat_of 0 format flush_ops)" -ge 1 ]
  [ "$(stat_of 0 file wr_bytes)" -eq $((65536 + 4096)) ]
  unmount_img
}

@test "--detect-zeroes=unmap --discard=unmap: writing zeros frees the space, and is counted" {
  head -c 16777216 /dev/urandom > z.raw
  mount_img --rw --detect-zeroes=unmap --discard=unmap z.raw "$MNT"
  dd if=/dev/zero of="$MNT/disk.raw" bs=1M count=16 conv=notrunc,fsync status=none
  [ "$(stat_of 0 format detected_zero_ops)" -gt 0 ]
  unmount_img
  cmp z.raw <(head -c 16777216 /dev/zero)
  [ "$(stat -c %b z.raw)" -lt 2048 ]
  [ "$(stat -c %s z.raw)" -eq 16777216 ]
}

@test "--detect-zeroes=on turns zero writes into zero requests; off writes them as data" {
  head -c 4194304 /dev/urandom > on.raw
  cp on.raw off.raw
  mount_img --rw --detect-zeroes=on on.raw "$MNT"
  dd if=/dev/zero of="$MNT/disk.raw" bs=1M count=2 conv=notrunc,fsync status=none
  [ "$(stat_of 0 format detected_zero_ops)" -gt 0 ]
  [ "$(stat_of 0 file zero_bytes)" -eq 2097152 ]
  [ "$(stat_of 0 file wr_bytes)" -eq 0 ]
  unmount_img
  cmp <(head -c 2097152 on.raw) <(head -c 2097152 /dev/zero)
  mount_img --rw --detect-zeroes=off off.raw "$MNT"
  dd if=/dev/zero of="$MNT/disk.raw" bs=1M count=2 conv=notrunc,fsync status=none
  [ "$(stat_of 0 format detected_zero_ops)" -eq 0 ]
  [ "$(stat_of 0 file wr_bytes)" -eq 2097152 ]
  [ "$(stat_of 0 file zero_bytes)" -eq 0 ]
  unmount_img
  cmp <(head -c 2097152 off.raw) <(head -c 2097152 /dev/zero)
}

@test "--copy-on-read on a read-only mount is refused at open with one line, exit 2" {
  truncate -s 1M c.raw
  run "$IMGFUSE" --copy-on-read c.raw "$MNT"
  [ "$status" -eq 2 ]
  [ "${#lines[@]}" -eq 1 ]
  [[ "$output" == "imgfuse: "*"copy-on-read"* ]]
  nothing_mounted
}

@test "--bps-limit-read holds reads back: 6 MiB at 2 MiB/s cannot take less than 1.5 s" {
  head -c 6291456 /dev/urandom > t.raw
  mount_img --bps-limit-read=2M --iops-limit=1000 t.raw "$MNT"
  start=$(date +%s%N)
  dd if="$MNT/disk.raw" of="$TMP/copy" bs=1M iflag=direct status=none
  end=$(date +%s%N)
  cmp "$TMP/copy" t.raw
  [ $(( (end - start) / 1000000 )) -ge 1500 ]
  [ "$(stat_of 0 format rd_bytes)" -eq 6291456 ]
  unmount_img
}

@test "request-path options reject bad values with one line and exit 2" {
  truncate -s 1M b.raw
  for args in "--detect-zeroes=maybe" "--bps-limit=fast" "--iops-limit-write=-3" "--iops-limit"; do
    run $IMGFUSE $args b.raw "$MNT"
    echo "$args -> $status: $output"
    [ "$status" -eq 2 ]
    [ "${#lines[@]}" -eq 1 ]
    [[ "$output" == "imgfuse: "* ]]
  done
  nothing_mounted
}

# map_kinds IMAGE: the distinct (data, zero) pairs qemu-img map reports over the whole image
map_kinds() {
  qemu-img map --output=json "$1" | python3 -c '
import json, sys
print(" ".join(sorted({"data=%s,zero=%s" % (e["data"], e["zero"]) for e in json.load(sys.stdin)})))'
}

@test "qcow2: 64 MiB of zeros become zero clusters with on and unmap (file no larger), data with off" {
  qemu-img create -q -f qcow2 full.qcow2 64M
  qemu-io -c "write -P 0x5a 0 64M" full.qcow2 > /dev/null
  local before
  before=$(stat -c %s full.qcow2)
  mount_img --rw --detect-zeroes=unmap --discard=unmap full.qcow2 "$MNT"
  dd if=/dev/zero of="$MNT/disk.raw" bs=1M count=64 conv=notrunc,fsync status=none
  unmount_img
  [ "$(stat -c %s full.qcow2)" -le "$before" ]
  [ "$(map_kinds full.qcow2)" = "data=False,zero=True" ]
  truncate -s 64M zero.raw
  qemu-img compare -f qcow2 -F raw full.qcow2 zero.raw
  qemu-img check -q full.qcow2

  for mode in on off; do
    qemu-img create -q -f qcow2 "$mode.qcow2" 64M
    mount_img --rw --detect-zeroes=$mode "$mode.qcow2" "$MNT"
    dd if=/dev/zero of="$MNT/disk.raw" bs=1M count=64 conv=notrunc,fsync status=none
    unmount_img
    qemu-img check -q "$mode.qcow2"
  done
  [ "$(map_kinds on.qcow2)" = "data=False,zero=True" ]
  [ "$(stat -c %s on.qcow2)" -lt 1048576 ]
  [ "$(map_kinds off.qcow2)" = "data=True,zero=False" ]
  [ "$(stat -c %s off.qcow2)" -gt 67108864 ]
}
