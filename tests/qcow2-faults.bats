#!/usr/bin/env bats
# SPDX-License-Identifier: MIT
# tests/qcow2-faults.bats - I/O errors injected (--blkdebug RULES) at each kind of qcow2 metadata write
# (l1_update l2_update refblock_update reftable_update header_update cow_write), once, always and on the
# Nth occurrence, during a workload of fsynced writes on an overlay: the writer sees EIO, the daemon
# survives and unmounts, `qemu-img check` finds no corruption (leaks allowed), and every write that was
# acknowledged and fsynced reads back.
load helpers

# The backing file and the written regions are made once for the suite (each test copies them).
setup_file() {
  export FIXTURES="$BATS_FILE_TMPDIR/fixtures"
  mkdir -p "$FIXTURES"
  (cd "$FIXTURES" && python3 - <<'PY'
import os
open("base.raw", "wb").write(bytes((i * 7 + (i >> 12)) & 0xFF for i in range(4 << 20)))
for i, n in enumerate([1000, 65536, 1 << 20, 3000, 1 << 20, 1 << 20, 1 << 20, 4096, 1 << 20, 1 << 20, 1 << 20, 1 << 20, 500]):
    open("w%d.bin" % i, "wb").write(os.urandom(n))
PY
  )
}

setup() {
  setup_tmp
  cd "$TMP"
  cp "$FIXTURES"/base.raw "$FIXTURES"/w*.bin .
  # 4 KiB clusters: an L2 table maps 2 MiB and a refcount block 8 MiB, so the workload below needs new
  # L2 tables (L1 updates) and a second refcount block (a refcount table update).
  qemu-img create -q -f qcow2 -o cluster_size=4096 -b base.raw -F raw top.qcow2 32M
}
teardown() { teardown_tmp; }

# Offsets of w0..w12: partial clusters over the backing file (copy-on-write), whole clusters in new
# L2 ranges, more than 8 MiB in all. Snapshots are taken before w7 and before w10.
OFFSETS=(12388 2105344 5242880 6291463 8388608 10485760 12582912 1228800 14680064 16777216 18874368 20971520 23068675)

# run_workload: one dd (write + fsync) per region; ACKED lists the regions whose dd succeeded.
run_workload() {
  ACKED=() EIO_SEEN=0
  local i len
  for i in "${!OFFSETS[@]}"; do
    if [ "$i" -eq 7 ] || [ "$i" -eq 10 ]; then
      mkdir "$MNT/snapshots/s$i" 2>>"$TMP/writer.err" || true
    fi
    len=$(stat -c %s "w$i.bin")
    if dd if="w$i.bin" of="$MNT/disk.raw" bs="$len" count=1 seek="${OFFSETS[$i]}" oflag=seek_bytes \
         conv=notrunc,fsync status=none 2>>"$TMP/writer.err"; then
      ACKED+=("$i")
    fi
  done
  grep -q "Input/output error" "$TMP/writer.err" && EIO_SEEN=1
  true
}

# verify_image: no crash, qemu-img check clean apart from leaks, every acknowledged write reads back.
verify_image() {
  local rc=0
  unmount_img || rc=$?
  [ "$rc" -lt 128 ] && [ "$rc" -ne 86 ] || { echo "daemon crashed or sanitizer report (exit $rc)"; cat "$TMP/daemon.log"; return 1; }
  run qemu-img check top.qcow2
  echo "$output"
  [ "$status" -eq 0 ] || [ "$status" -eq 3 ] || { echo "qemu-img check: exit $status"; return 1; }
  qemu-img convert -O raw top.qcow2 final.raw
  local i
  for i in "${ACKED[@]}"; do
    cmp -n "$(stat -c %s "w$i.bin")" -i "${OFFSETS[$i]}:0" final.raw "w$i.bin" ||
      { echo "acknowledged write w$i at ${OFFSETS[$i]} does not read back"; return 1; }
  done
}

# fault_case EVENT MODE: MODE is once, always or nth=N.
fault_case() {
  local event=$1 mode=$2 rule
  case $mode in
    nth=*) rule="event=$event errno=5 $mode once" ;;
    *) rule="event=$event errno=5 $mode" ;;
  esac
  echo "$rule" > rules
  mount_img --rw --blkdebug rules top.qcow2 "$MNT"
  run_workload
  echo "acked: ${ACKED[*]}"; cat "$TMP/writer.err"
  [ "$EIO_SEEN" -eq 1 ] || { echo "no write saw EIO with rule '$rule'"; cat "$TMP/daemon.log"; return 1; }
  verify_image
}

@test "blkdebug without faults: every write of the workload is acknowledged and reads back" {
  echo "event=flush delay_ms=1 always" > rules
  mount_img --rw --blkdebug rules top.qcow2 "$MNT"
  run_workload
  [ "${#ACKED[@]}" -eq "${#OFFSETS[@]}" ]
  [ "$EIO_SEEN" -eq 0 ]
  verify_image
  [ "$(qemu-img snapshot -l top.qcow2 | grep -cE ' s(7|10) ')" -eq 2 ]
}

@test "EIO once at an L1 update"            { fault_case l1_update once; }
@test "EIO always at L1 updates"            { fault_case l1_update always; }
@test "EIO at the 2nd L1 update"            { fault_case l1_update nth=2; }
@test "EIO once at an L2 update"            { fault_case l2_update once; }
@test "EIO always at L2 updates"            { fault_case l2_update always; }
@test "EIO at the 3rd L2 update"            { fault_case l2_update nth=3; }
@test "EIO once at a refcount block update" { fault_case refblock_update once; }
@test "EIO always at refcount block updates" { fault_case refblock_update always; }
@test "EIO at the 4th refcount block update" { fault_case refblock_update nth=4; }
@test "EIO once at a refcount table update" { fault_case reftable_update once; }
@test "EIO always at refcount table updates" { fault_case reftable_update always; }
@test "EIO at the 2nd refcount table update" { fault_case reftable_update nth=2; }
@test "EIO once at a header update"         { fault_case header_update once; }
@test "EIO always at header updates"        { fault_case header_update always; }
@test "EIO at the 2nd header update"        { fault_case header_update nth=2; }
@test "EIO once at a copy-on-write"         { fault_case cow_write once; }
@test "EIO always at copy-on-writes"        { fault_case cow_write always; }
@test "EIO at the 3rd copy-on-write"        { fault_case cow_write nth=3; }
