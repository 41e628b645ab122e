#!/usr/bin/env bats
# SPDX-License-Identifier: MIT
# live-jobs.bats - `imgfuse stream` and `imgfuse commit` on an image mounted --rw: the daemon runs the job
# while the mount serves writes (fio --verify, 4 jobs) and reads; afterwards no verify error, the disk
# as the writers left it (bytes compared with qemu-img convert), qemu-img check clean, the chain shape as
# expected; kill -9 of the daemon in the middle leaves the chain reading as before the job; Ctrl-C
# cancels with one line; stats.json shows the job.

load helpers

setup() { setup_tmp; cd "$TMP"; }
teardown() {
  if [ -n "${READERS:-}" ]; then touch "$TMP/stop"; kill "${READERS[@]}" 2>/dev/null; wait "${READERS[@]}" 2>/dev/null; fi
  teardown_tmp
}

# make_chain SIZE_MB: t.qcow2 -> m.qcow2 -> b.qcow2, data in each layer, before.raw the chain's disk.
make_chain() {
  local mb=${1:-64}
  qemu-img create -q -f qcow2 b.qcow2 "${mb}M"
  fmt_io qcow2 b.qcow2 "write -P 1 0 $((mb / 2))M" "write -P 5 $((mb - 2))M 2M"
  qemu-img create -q -f qcow2 -b b.qcow2 -F qcow2 m.qcow2
  fmt_io qcow2 m.qcow2 "write -P 2 4M $((mb / 4))M" 'write -z 1M 64k' 'write -P 6 20000 3000'
  qemu-img create -q -f qcow2 -b m.qcow2 -F qcow2 t.qcow2
  fmt_io qcow2 t.qcow2 "write -P 3 $((mb / 2))M 1M" 'write -P 4 5M 4k' 'write -P 7 31M 777'
  qemu-img convert -O raw t.qcow2 before.raw
}

backing_of() {
  qemu-img info --output=json -U "$1" | python3 -c 'import json, sys; print(json.load(sys.stdin).get("backing-filename", ""))'
}

# fio_verify: 4 jobs, each writing and verifying its own quarter of disk.raw (md5 in every block).
fio_verify() {
  local size=$1
  fio --name=live --filename="$MNT/disk.raw" --rw=randwrite --bs=64k --numjobs=4 --size=$((size / 4)) \
    --offset_increment=$((size / 4)) --verify=md5 --verify_fatal=1 --do_verify=1 --ioengine=psync \
    --loops=2 --group_reporting --output="$TMP/fio.out" > /dev/null 2>&1
}

# readers N: N background readers reading disk.raw in full, again and again, until stop_readers.
start_readers() {
  : > "$TMP/readers.err"
  READERS=()
  local i
  for i in 1 2; do
    (while [ -d "$TMP" ] && [ ! -e "$TMP/stop" ]; do
       cat "$MNT/disk.raw" > /dev/null || echo "read failed" >> "$TMP/readers.err"
     done) &
    READERS+=($!)
  done
}
stop_readers() {
  touch "$TMP/stop"
  wait "${READERS[@]}"
  READERS=
  [ ! -s "$TMP/readers.err" ]
}

@test "live stream: while fio --verify (4 jobs) writes and readers read; then flat, equal, clean" {
  make_chain 64
  mount_img --rw t.qcow2 "$MNT"
  start_readers
  fio_verify $((64 << 20)) &
  FIO=$!
  sleep 0.5
  kill -0 "$FIO" # the writers are still at work when the job starts
  run "$IMGFUSE" stream t.qcow2
  echo "$output"
  [ "$status" -eq 0 ]
  wait "$FIO"
  stop_readers
  cp "$MNT/disk.raw" during.raw
  grep -q '"type": "stream", "offset": 67108864, "total": 67108864, "state": "completed"' "$MNT/stats.json"
  unmount_img
  [ "$(backing_of t.qcow2)" = "" ]
  check_clean t.qcow2
  qemu-img convert -O raw t.qcow2 after.raw
  same_bytes after.raw during.raw
  ! grep -q "verify: bad" "$TMP/fio.out"
}

@test "live stream -b: keeps BASE; the guest's writes during the job win over older backing data" {
  make_chain 64
  mount_img --rw t.qcow2 "$MNT"
  fio_verify $((64 << 20)) &
  FIO=$!
  sleep 0.3
  run "$IMGFUSE" stream -b b.qcow2 t.qcow2
  [ "$status" -eq 0 ]
  wait "$FIO"
  cp "$MNT/disk.raw" during.raw
  unmount_img
  [ "$(backing_of t.qcow2)" = "b.qcow2" ]
  check_clean t.qcow2
  qemu-img convert -O raw t.qcow2 after.raw
  same_bytes after.raw during.raw
}

@test "live commit: while fio --verify (4 jobs) writes and readers read; base holds the disk, the image empty" {
  make_chain 64
  mount_img --rw t.qcow2 "$MNT"
  start_readers
  fio_verify $((64 << 20)) &
  FIO=$!
  sleep 0.5
  kill -0 "$FIO"
  run "$IMGFUSE" commit t.qcow2
  echo "$output"
  [ "$status" -eq 0 ]
  [ "$output" = "Image committed." ]
  wait "$FIO"
  stop_readers
  grep -q '"type": "commit", .*"state": "completed"' "$MNT/stats.json"
  # what fio wrote after the job is in the image: a second commit, with no writer, takes it down too
  run "$IMGFUSE" commit t.qcow2
  [ "$status" -eq 0 ]
  cp "$MNT/disk.raw" during.raw
  unmount_img
  [ "$(backing_of t.qcow2)" = "m.qcow2" ]
  check_clean t.qcow2
  check_clean m.qcow2
  qemu-img convert -O raw t.qcow2 after.raw
  same_bytes after.raw during.raw
  qemu-img convert -O raw m.qcow2 m.raw
  same_bytes m.raw during.raw
  ! qemu-img map --output=json t.qcow2 | grep -q '"depth": 0, "present": true' || false
  ! grep -q "verify: bad" "$TMP/fio.out"
}

@test "live commit -d: the base gets the disk, the image is left as it is" {
  make_chain 32
  mount_img --rw t.qcow2 "$MNT"
  dd if=/dev/urandom of="$MNT/disk.raw" bs=64k seek=100 count=20 conv=notrunc status=none
  run "$IMGFUSE" commit -d t.qcow2
  [ "$status" -eq 0 ]
  cp "$MNT/disk.raw" during.raw
  unmount_img
  qemu-img convert -O raw m.qcow2 m.raw
  same_bytes m.raw during.raw
  qemu-img convert -O raw t.qcow2 t.raw
  same_bytes t.raw during.raw
  check_clean m.qcow2
}

# kill_mid_job CMD: a job on a large chain, the daemon killed -9 while it copies.
kill_mid_job() {
  make_chain 512
  fmt_io qcow2 t.qcow2 'write -P 9 64M 256M'
  qemu-img convert -O raw t.qcow2 before.raw
  mount_img --rw --cache=none t.qcow2 "$MNT"
  "$IMGFUSE" "$@" t.qcow2 > job.out 2>&1 &
  local job=$!
  local i
  for i in $(seq 1 200); do
    grep -q '"state": "running"' "$MNT/stats.json" && break
    sleep 0.02
  done
  grep -q '"state": "running"' "$MNT/stats.json"
  kill_daemon 9
  wait "$job" || true
  cat job.out
  grep -q "the mount's daemon went away" job.out
  qemu-img convert -O raw t.qcow2 after.raw
  same_bytes after.raw before.raw
}

@test "live commit: kill -9 of the daemon mid-job; the chain reads as before and checks clean" {
  kill_mid_job commit
  run qemu-img check m.qcow2
  echo "$output"
  [ "$status" -eq 0 ] || [ "$status" -eq 3 ] # leaked clusters of a killed allocation are no corruption
  ! echo "$output" | grep -q ERROR || false
  check_clean t.qcow2
}

@test "live stream: kill -9 of the daemon mid-job; the chain reads as before and checks clean" {
  kill_mid_job stream
  run qemu-img check t.qcow2
  echo "$output"
  [ "$status" -eq 0 ] || [ "$status" -eq 3 ]
  ! echo "$output" | grep -q ERROR || false
  [ "$(backing_of t.qcow2)" = "m.qcow2" ]
}

@test "live commit: SIGINT cancels with one line, exit 1; the chain reads the same, the mount goes on" {
  make_chain 512
  fmt_io qcow2 t.qcow2 'write -P 9 64M 256M'
  qemu-img convert -O raw t.qcow2 before.raw
  mount_img --rw --cache=none t.qcow2 "$MNT"
  "$IMGFUSE" commit t.qcow2 > job.out 2>&1 &
  local job=$!
  local i
  for i in $(seq 1 200); do
    grep -q '"state": "running"' "$MNT/stats.json" && break
    sleep 0.02
  done
  kill -INT "$job"
  local st=0
  wait "$job" || st=$?
  cat job.out
  [ "$st" -eq 1 ]
  [ "$(cat job.out)" = "imgfuse: t.qcow2: live commit cancelled: the chain is as it was except for data already copied, which reads the same" ]
  grep -q '"state": "cancelled"' "$MNT/stats.json"
  cmp "$MNT/disk.raw" before.raw
  unmount_img
  qemu-img convert -O raw t.qcow2 after.raw
  same_bytes after.raw before.raw
  check_clean t.qcow2
  check_clean m.qcow2
  [ "$(backing_of t.qcow2)" = "m.qcow2" ]
}
