#!/usr/bin/env bats
# SPDX-License-Identifier: MIT
# foundation.bats - what issue 2 says must hold for raw images on a real FUSE mount: exact sizes,
# byte-identical reads, SEEK_DATA/SEEK_HOLE equal to the host file's map, read-only by default,
# fio-verified writes with --rw (also O_DIRECT + Linux AIO), --offset/--size windows, the seed's rule,
# one-line errors with exit 2 for bad usage, and a clean exit on SIGTERM during writes.

load helpers

setup() { setup_tmp; cd "$TMP"; }
teardown() { teardown_tmp; }

SEEKMAP="$BATS_TEST_DIRNAME/seekmap.py"

md5() { md5sum < "$1" | cut -d' ' -f1; }

# mount_check_identical IMAGE: mount read-only, compare size, bytes and (if sparse) the map, unmount.
mount_check_identical() {
  mount_img "$1" "$MNT"
  [ "$(stat -c %s "$MNT/disk.raw")" -eq "$(stat -c %s "$1")" ]
  [ "$(md5 "$MNT/disk.raw")" = "$(md5 "$1")" ]
  [ "$(python3 "$SEEKMAP" "$MNT/disk.raw")" = "$(python3 "$SEEKMAP" "$1")" ]
  unmount_img
}

@test "a 0-byte raw image mounts with size 0" {
  : > empty.raw
  mount_check_identical empty.raw
}

@test "a 1-byte raw image reads back its byte with the exact size" {
  printf 'Z' > one.raw
  mount_check_identical one.raw
  mount_img one.raw "$MNT"
  [ "$(cat "$MNT/disk.raw")" = "Z" ]
  unmount_img
}

@test "a 1000001-byte raw image is not rounded up and reads back identical" {
  head -c 1000001 /dev/urandom > odd.raw
  mount_check_identical odd.raw
}

@test "a 64 MiB sparse raw image: identical bytes, SEEK_DATA/SEEK_HOLE match the host file" {
  truncate -s 64M sparse.raw
  head -c 65536 /dev/urandom | dd of=sparse.raw bs=64k seek=3 conv=notrunc status=none
  head -c 8192 /dev/urandom | dd of=sparse.raw bs=4k seek=5000 conv=notrunc status=none
  head -c 4096 /dev/urandom | dd of=sparse.raw bs=4k seek=16383 conv=notrunc status=none
  [ -n "$(python3 "$SEEKMAP" sparse.raw)" ]
  mount_check_identical sparse.raw
  mount_img sparse.raw "$MNT"
  # st_blocks counts what the image allocates, not the virtual size
  [ "$(stat -c %b "$MNT/disk.raw")" -lt $((64 * 1024 * 2)) ]
  unmount_img
}

@test "a 4 TiB sparse raw image: exact size, data extents, holes and map all match" {
  truncate -s 4T big.raw
  head -c 4096 /dev/urandom | dd of=big.raw conv=notrunc status=none
  head -c 65536 /dev/urandom | dd of=big.raw bs=1 seek=$((1024 * 1024 * 1024 + 8192)) conv=notrunc status=none
  head -c 1048576 /dev/urandom | dd of=big.raw bs=1M seek=$((2 * 1024 * 1024)) conv=notrunc status=none
  head -c 4096 /dev/urandom | dd of=big.raw bs=4k seek=$((4 * 1024 * 1024 * 256 - 1)) conv=notrunc status=none
  mount_img big.raw "$MNT"
  [ "$(stat -c %s "$MNT/disk.raw")" -eq 4398046511104 ]
  host_map=$(python3 "$SEEKMAP" big.raw)
  [ "$(python3 "$SEEKMAP" "$MNT/disk.raw")" = "$host_map" ]
  [ "$(echo "$host_map" | wc -l)" -ge 4 ]
  while read -r start end; do
    a=$(python3 -c 'import sys; f=open(sys.argv[1],"rb"); f.seek(int(sys.argv[2])); import hashlib; print(hashlib.md5(f.read(int(sys.argv[3])-int(sys.argv[2]))).hexdigest())' "$MNT/disk.raw" "$start" "$end")
    b=$(python3 -c 'import sys; f=open(sys.argv[1],"rb"); f.seek(int(sys.argv[2])); import hashlib; print(hashlib.md5(f.read(int(sys.argv[3])-int(sys.argv[2]))).hexdigest())' big.raw "$start" "$end")
    [ "$a" = "$b" ]
  done <<< "$host_map"
  for off in 1048576 $((512 * 1024 * 1024 * 1024)) $((3 * 1024 * 1024 * 1024 * 1024))  $((4 * 1024 * 1024 * 1024 * 1024 - 2 * 1048576)); do
    python3 -c 'import sys; f=open(sys.argv[1],"rb"); f.seek(int(sys.argv[2])); d=f.read(1048576); sys.exit(0 if len(d)==1048576 and d.count(0)==len(d) else 1)' "$MNT/disk.raw" "$off"
  done
  unmount_img
}

@test "the default mount is read-only: EROFS, and the image's bytes and mtime are unchanged" {
  head -c 1048576 /dev/urandom > ro.raw
  touch -d '2020-01-02 03:04:05' ro.raw
  before_md5=$(md5 ro.raw); before_mtime=$(stat -c %Y ro.raw)
  mount_img ro.raw "$MNT"
  [ "$(stat -c %a "$MNT/disk.raw")" = 444 ]
  run python3 -c '
import errno, os, sys
try:
    os.open(sys.argv[1], os.O_WRONLY)
except OSError as e:
    print(errno.errorcode[e.errno]); sys.exit(0)
print("opened for writing"); sys.exit(1)' "$MNT/disk.raw"
  [ "$status" -eq 0 ]
  [ "$output" = EROFS ]
  run truncate -s 0 "$MNT/disk.raw"
  [ "$status" -ne 0 ]
  cat "$MNT/disk.raw" > /dev/null
  unmount_img
  [ "$(md5 ro.raw)" = "$before_md5" ]
  [ "$(stat -c %Y ro.raw)" = "$before_mtime" ]
}

# fio_verify FILE [extra fio options]: four jobs, each verifying random reads and writes in its own 8 MiB.
fio_verify() {
  local f=$1; shift
  fio --name=verify --filename="$f" --rw=randrw --bs=4k --size=8M --offset_increment=8M --numjobs=4 \
      --verify=crc32c --verify_fatal=1 --do_verify=1 --fallocate=none --ioengine=psync --runtime=120 \
      --group_reporting --output="$TMP/fio.out" "$@" || { cat "$TMP/fio.out" >&2; return 1; }
  ! grep -q 'verify: bad' "$TMP/fio.out"
}

@test "--rw: fio randrw with crc32c verify passes and the data is in the image after unmount" {
  truncate -s 32M rw.raw
  mount_img --rw rw.raw "$MNT"
  [ "$(stat -c %a "$MNT/disk.raw")" = 644 ]
  fio_verify "$MNT/disk.raw"
  seen=$(md5 "$MNT/disk.raw")
  unmount_img
  [ "$(md5 rw.raw)" = "$seen" ]
  ! cmp -s rw.raw <(head -c 33554432 /dev/zero)
}

@test "--rw --cache=none --aio=native: fio randrw (O_DIRECT) with verify passes, data in the image" {
  truncate -s 32M native.raw
  mount_img --rw --cache=none --aio=native native.raw "$MNT"
  fio_verify "$MNT/disk.raw" --direct=1
  seen=$(md5 "$MNT/disk.raw")
  unmount_img
  [ "$(md5 native.raw)" = "$seen" ]
  ! cmp -s native.raw <(head -c 33554432 /dev/zero)
}

@test "--offset/--size show exactly the window, and writes never leave it" {
  head -c 4194304 /dev/urandom > win.raw
  cp win.raw orig.raw
  mount_img --offset 1M --size 2M win.raw "$MNT"
  [ "$(stat -c %s "$MNT/disk.raw")" -eq 2097152 ]
  cmp "$MNT/disk.raw" <(dd if=orig.raw bs=1M skip=1 count=2 status=none)
  unmount_img

  mount_img --rw --offset=1M --size=2M win.raw "$MNT"
  run dd if=/dev/zero of="$MNT/disk.raw" bs=1M count=3 conv=notrunc,fsync status=none
  [ "$status" -ne 0 ]
  [[ "$output" == *"No space left on device"* ]]
  [ "$(stat -c %s "$MNT/disk.raw")" -eq 2097152 ]
  unmount_img
  [ "$(stat -c %s win.raw)" -eq 4194304 ]
  cmp <(head -c 1048576 win.raw) <(head -c 1048576 orig.raw)
  cmp <(dd if=win.raw bs=1M skip=1 count=2 status=none) <(head -c 2097152 /dev/zero)
  cmp <(dd if=win.raw bs=1M skip=3 status=none) <(dd if=orig.raw bs=1M skip=3 status=none)
}

@test "the seed's rule: --backing on a raw image fails with exit 2 and one line, nothing mounted" {
  qemu-img create -q -f qcow2 base.qcow2 1M
  truncate -s 1M disk.raw
  run "$IMGFUSE" --backing base.qcow2 disk.raw "$MNT"
  [ "$status" -eq 2 ]
  [ "$output" = "imgfuse: disk.raw: format 'raw' does not support backing files" ]
  nothing_mounted
}

@test "--format qcow2 on a raw file fails with one clear line and exit 2" {
  head -c 1048576 /dev/urandom > plain.raw
  run "$IMGFUSE" --format qcow2 plain.raw "$MNT"
  [ "$status" -eq 2 ]
  [ "${#lines[@]}" -eq 1 ]
  [[ "$output" == "imgfuse: "*plain.raw*qcow2* || "$output" == "imgfuse: "*qcow2*plain.raw* ]]
  nothing_mounted
}

# bad_usage ARGS...: exit 2, exactly one line "imgfuse: ...", nothing mounted.
bad_usage() {
  run "$IMGFUSE" "$@"
  echo "args: $* -> status $status: $output"
  [ "$status" -eq 2 ]
  [ "${#lines[@]}" -eq 1 ]
  [[ "${lines[0]}" == "imgfuse: "* ]]
  nothing_mounted
}

@test "every bad-usage case gives one line, exit 2, and leaves nothing mounted" {
  truncate -s 1M ok.raw
  mkdir adir
  bad_usage
  bad_usage ok.raw
  bad_usage ok.raw "$MNT" extra
  bad_usage --no-such-option ok.raw "$MNT"
  bad_usage ok.raw "$MNT" --format
  bad_usage --cache=bogus ok.raw "$MNT"
  bad_usage --aio=bogus ok.raw "$MNT"
  bad_usage --aio=native ok.raw "$MNT"
  bad_usage --discard=maybe ok.raw "$MNT"
  bad_usage --on-read-error=retry ok.raw "$MNT"
  bad_usage --offset=lots ok.raw "$MNT"
  bad_usage --format nosuchformat ok.raw "$MNT"
  bad_usage missing.raw "$MNT"
  bad_usage adir "$MNT"
  bad_usage ok.raw "$TMP/no-such-dir"
  bad_usage ok.raw /dev/null
  bad_usage -o no_such_fuse_option ok.raw "$MNT"
  [[ "$output" == *no_such_fuse_option* ]]
}

@test "an unreadable image gives one line and exit 2" {
  truncate -s 1M secret.raw
  chmod 600 secret.raw
  chmod 777 "$TMP" "$MNT"
  run setpriv --reuid=65534 --regid=65534 --clear-groups "$IMGFUSE" secret.raw "$MNT"
  [ "$status" -eq 2 ]
  [ "${#lines[@]}" -eq 1 ]
  [[ "$output" == "imgfuse: "*secret.raw* ]]
  nothing_mounted
}

@test "a busy mountpoint (already a mount) gives one line, exit 2, the first mount intact" {
  head -c 65536 /dev/urandom > a.raw
  truncate -s 1M b.raw
  mount_img a.raw "$MNT"
  run "$IMGFUSE" b.raw "$MNT"
  [ "$status" -eq 2 ]
  [ "${#lines[@]}" -eq 1 ]
  [[ "$output" == "imgfuse: "* ]]
  cmp "$MNT/disk.raw" a.raw
  [ "$(grep -c " $TMP" /proc/mounts)" -eq 1 ]
  unmount_img
}

@test "the daemon detaches by default and exits after fusermount3 -u" {
  head -c 65536 /dev/urandom > d.raw
  run "$IMGFUSE" d.raw "$MNT"
  [ "$status" -eq 0 ]
  [ -z "$output" ]
  mountpoint -q "$MNT"
  cmp "$MNT/disk.raw" d.raw
  fusermount3 -u "$MNT"
  nothing_mounted
  for i in $(seq 1 200); do pgrep -f "imgfuse d.raw $MNT" > /dev/null || break; sleep 0.05; done
  ! pgrep -f "imgfuse d.raw $MNT"
}

@test "kill -TERM during writes: flushed data is in the image, nothing stays mounted" {
  truncate -s 64M term.raw
  mount_img --rw term.raw "$MNT"
  python3 - "$MNT/disk.raw" "$TMP/count" <<'EOF' &
import os, sys
fd = os.open(sys.argv[1], os.O_WRONLY)
n = 0
try:
    while True:
        os.pwrite(fd, bytes([n % 251 + 1]) * 1048576, (n % 64) * 1048576)
        os.fsync(fd)
        n += 1
        with open(sys.argv[2] + ".tmp", "w") as f:
            f.write(str(n))
        os.replace(sys.argv[2] + ".tmp", sys.argv[2])
except OSError:
    pass
EOF
  writer=$!
  for i in $(seq 1 600); do [ "$(cat "$TMP/count" 2>/dev/null || echo 0)" -ge 80 ] && break; sleep 0.05; done
  [ "$(cat "$TMP/count")" -ge 80 ]
  kill -TERM "$DAEMON_PID"
  rc=0; wait "$DAEMON_PID" || rc=$?
  DAEMON_PID=
  [ "$rc" -eq 0 ]
  wait "$writer" || true
  nothing_mounted
  n=$(cat "$TMP/count")
  python3 - term.raw "$n" <<'EOF'
import sys
img, n = open(sys.argv[1], "rb").read(), int(sys.argv[2])
for k in range(64):
    got = set(img[k * 1048576:(k + 1) * 1048576])
    writes = [w for w in range(n) if w % 64 == k]
    want = {writes[-1] % 251 + 1} if writes else {0}
    if k == n % 64:  # the write in flight at the kill may or may not have landed
        want |= {n % 251 + 1}
        if not got <= want:
            sys.exit("block %d: %s not within %s" % (k, got, want))
    elif got != want:
        sys.exit("block %d: %s, want %s" % (k, got, want))
EOF
}

@test "the detaching daemon does not hold the caller's output open: \$(imgfuse ...) returns" {
  head -c 65536 /dev/urandom > o.raw
  out=$(timeout 60 "$IMGFUSE" o.raw "$MNT")
  [ -z "$out" ]
  mountpoint -q "$MNT"
  cmp "$MNT/disk.raw" o.raw
  fusermount3 -u "$MNT"
  nothing_mounted
}
