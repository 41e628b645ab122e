#!/usr/bin/env bats
# SPDX-License-Identifier: MIT
# mount-snapshot-bombs.bats - snapshot tables that are small on disk and huge in memory (issue 16, items 5
# and 6): a 200 KiB image with 1000 snapshots of 32 MiB L1 tables mounts, lists and reads its views within
# a memory budget (views open on first open and read their L1 tables in slices); 65,536 snapshots mount
# with all their directories. Memory is asserted (the daemon's own peak from stats.json), never time. The
# daemon runs under an address-space limit (not under ASan), so that an unfixed one fails without taking
# the machine to the OOM killer.

load helpers

setup() { setup_tmp; cd "$TMP"; }
teardown() { teardown_tmp; }

# bomb FILE KIND N: writes a bomb of tests/make-hostile (l1: N snapshots of 32 MiB L1 tables; count: N
# snapshots with one-entry L1 tables, names s0..).
bomb() {
  python3 - "$BATS_TEST_DIRNAME/make-hostile" "$@" <<'PY'
import importlib.machinery, importlib.util, sys
loader = importlib.machinery.SourceFileLoader("make_hostile", sys.argv[1])
m = importlib.util.module_from_spec(importlib.util.spec_from_loader("make_hostile", loader))
loader.exec_module(m)
out, kind, n = sys.argv[2], sys.argv[3], int(sys.argv[4])
if kind == "l1":
    data = m.snapshot_bomb_l1(n)
else:
    q = m.q2()
    data = m.snapshot_table_image([q.snapshot_entry(q.off(10), 1, str(i + 1).encode(), b"s%d" % i)
                                   for i in range(n)], 1 << 20)
m.write_sparse(out, data)
PY
}

# mount_limited IMAGE: mount_img with the daemon's address space capped at 2 GiB (not under ASan).
mount_limited() {
  if [ -z "${IMGFUSE_ASAN:-}" ]; then
    printf '#!/bin/sh\nexec prlimit --as=%d -- "%s" "$@"\n' $((2 << 30)) "$IMGFUSE" > "$TMP/limited"
    chmod +x "$TMP/limited"
    IMGFUSE="$TMP/limited" mount_img -f qcow2 "$1" "$MNT"
  else
    # a small quarantine keeps the resident size meaningful under ASan (as read-all-hostile does)
    ASAN_OPTIONS="${ASAN_OPTIONS:-}:quarantine_size_mb=16" mount_img -f qcow2 "$1" "$MNT"
  fi
}

# json_get FILE EXPR: a value from a JSON file (python expression on j).
json_get() { python3 -c 'import json, sys; j = json.load(open(sys.argv[1])); print(eval(sys.argv[2]))' "$1" "$2"; }

peak_mib() { json_get "$MNT/stats.json" 'j["process"]["peak_rss_bytes"] >> 20'; }

@test "1000 snapshots of 32 MiB L1 tables in a 200 KiB image: mount, list and read two views under 128 MiB" {
  bomb b.qcow2 l1 1000
  [ "$(du -k b.qcow2 | cut -f1)" -lt 400 ]
  mount_limited b.qcow2
  [ "$(ls "$MNT/snapshots" | wc -l)" -eq 1000 ]
  # the mount opened no view
  [ "$(json_get "$MNT/stats.json" 'len([n for n in j["nodes"] if n["role"] == "snapshot"])')" -eq 0 ]
  for id in 1 501; do
    qemu-img convert -l snapshot.id=$id -O raw b.qcow2 "$TMP/s$id.raw"
  done
  cmp "$MNT/snapshots/big0/disk.raw" "$TMP/s1.raw"
  cmp "$MNT/snapshots/big500/disk.raw" "$TMP/s501.raw"
  cmp "$MNT/disk.raw" "$(raw_of b.qcow2)"
  # the VM state lies past the disk in the same 32 MiB table: read through slices too (unallocated: zeros)
  [ "$(stat -c %s "$MNT/snapshots/big1/vmstate")" -eq 1048576 ]
  cmp "$MNT/snapshots/big1/vmstate" <(head -c 1048576 /dev/zero)
  [ "$(peak_mib)" -lt 128 ]
  unmount_img
}

@test "reading every one of 1000 snapshot views in turn stays within the same budget" {
  bomb b.qcow2 l1 1000
  mount_limited b.qcow2
  local want
  want=$(qemu-img convert -l snapshot.id=1 -O raw b.qcow2 s.raw; head -c 65536 s.raw | md5sum)
  local d n=0
  for d in "$MNT"/snapshots/*/; do
    [ "$(head -c 65536 "$d/disk.raw" | md5sum)" = "$want" ]
    n=$((n + 1))
  done
  [ "$n" -eq 1000 ]
  [ "$(peak_mib)" -lt 128 ]
  unmount_img
}

@test "stats.json lists each open snapshot view with its memory, and the image's snapshot table in its node" {
  bomb b.qcow2 l1 16
  mount_limited b.qcow2
  exec 5< "$MNT/snapshots/big3/disk.raw"
  head -c 4096 <&5 > /dev/null
  cp "$MNT/stats.json" open.json
  exec 5<&-
  [ "$(json_get open.json '[n["snapshot"] for n in j["nodes"] if n["role"] == "snapshot"]')" = "['big3']" ]
  # a view holds its state, not its 32 MiB table
  local mem
  mem=$(json_get open.json '[n["mem_bytes"] for n in j["nodes"] if n["role"] == "snapshot"][0]')
  [ "$mem" -gt 0 ] && [ "$mem" -lt $((1 << 20)) ]
  # the image node counts its snapshot table and the shared L1 slices (256 KiB)
  mem=$(json_get open.json '[n["mem_bytes"] for n in j["nodes"] if n["role"] == "format"][0]')
  [ "$mem" -gt $((256 << 10)) ] && [ "$mem" -lt $((8 << 20)) ]
  # released: the view is closed
  sleep 0.2
  [ "$(json_get "$MNT/stats.json" 'len([n for n in j["nodes"] if n["role"] == "snapshot"])')" -eq 0 ]
  unmount_img
}

@test "65,536 snapshots (the most the format allows) mount with every directory, peak memory under 256 MiB" {
  bomb c.qcow2 count 65536
  mount_limited c.qcow2
  [ "$(ls -l "$MNT/snapshots" | grep -c "^d")" -eq 65536 ]
  grep -qx "name: s65535" "$MNT/snapshots/s65535/info"
  qemu-img convert -l snapshot.id=65536 -O raw c.qcow2 last.raw
  cmp "$MNT/snapshots/s65535/disk.raw" last.raw
  [ "$(peak_mib)" -lt 256 ]
  unmount_img
}
