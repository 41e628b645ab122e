#!/usr/bin/env bats
# SPDX-License-Identifier: MIT
# tests/read-errors.bats - --on-read-error=zero on images with many damaged clusters (issue 16 items 8
# and 17): reading is linear in the damage, MNT/errors lists every range read as zeros (and says so on a
# last line if its budget is exceeded), SEEK_DATA/SEEK_HOLE never fail where a read returns zeros, so cp
# copies what reading gives; the qcow2 "past the end" message names the cluster that is past the end.
load helpers

setup() { setup_tmp; cd "$TMP"; }
teardown() { teardown_tmp; }

# past_end OUT SIZE: a qcow2 (4 KiB clusters) of SIZE bytes whose even clusters hold tests/make-hostile's
# pattern(1) and whose odd clusters point past the end of the file.
past_end() {
  python3 - "$BATS_TEST_DIRNAME/make-hostile" "$@" <<'EOF'
import importlib.machinery, sys
mh = importlib.machinery.SourceFileLoader("make_hostile", sys.argv[1]).load_module()
q = mh.q2_shared_l2(12, int(sys.argv[3]), lambda q, i: (q.off(5) if i % 2 == 0 else (1 << 40) + i * q.C) | mh.OFLAG_COPIED)
open(sys.argv[2], "wb").write(q.image())
EOF
}

# expected_sha256 SIZE: sha256 of what the past_end image reads as with --on-read-error=zero.
expected_sha256() {
  python3 - "$BATS_TEST_DIRNAME/make-hostile" "$1" <<'EOF'
import hashlib, importlib.machinery, sys
mh = importlib.machinery.SourceFileLoader("make_hostile", sys.argv[1]).load_module()
block = (mh.pattern(1, 4096) + bytes(4096)) * 128   # 1 MiB: data, zeros, data, ...
h = hashlib.sha256()
for _ in range(int(sys.argv[2]) >> 20):
    h.update(block)
print(h.hexdigest())
EOF
}

@test "--on-read-error=zero, 1 GiB with every other cluster past the end: zeros there, all 131072 ranges listed" {
  past_end bad.qcow2 $((1 << 30))
  mount_img -f qcow2 --on-read-error=zero bad.qcow2 "$MNT"
  start=$(date +%s.%N)
  got=$(sha256sum < "$MNT/disk.raw" | cut -d' ' -f1)
  echo "read 1 GiB in $(echo "$(date +%s.%N) - $start" | bc) s"
  [ "$got" = "$(expected_sha256 $((1 << 30)))" ]
  cat "$MNT/errors" > errors.txt
  python3 - errors.txt <<'EOF'
import sys
lines = open(sys.argv[1]).read().splitlines()
assert len(lines) == 131072, len(lines)
for k, l in enumerate(lines):
    off, length, depth, rest = l.split(" ", 3)
    assert (int(off), int(length), depth) == ((2 * k + 1) * 4096, 4096, "0"), l
    assert rest.endswith("bad.qcow2: Input/output error"), l
EOF
  # the daemon logs the first ranges only; the list has them all; stats.json tells its size and memory
  [ "$(grep -c 'returning zeros' "$TMP/daemon.log")" -le 16 ]
  python3 -c '
import json, sys
e = json.load(open(sys.argv[1]))["read_errors"]
assert e["ranges"] == 131072 and 0 < e["mem_bytes"] <= 24 << 20 and e["unlisted_ranges"] == 0, e' "$MNT/stats.json"
  unmount_img
}

@test "--on-read-error=zero, 5 GiB with every other cluster past the end: the list stops at 524288 ranges and its last line says what is not listed" {
  past_end bad.qcow2 $((5 << 30))
  mount_img -f qcow2 --on-read-error=zero bad.qcow2 "$MNT"
  cat "$MNT/disk.raw" > /dev/null
  cat "$MNT/errors" > errors.txt
  [ "$(grep -c 'Input/output error$' errors.txt)" -eq 524288 ]
  [ "$(tail -n 1 errors.txt)" = "not listed: 131072 more ranges, 536870912 bytes, read as zeros (the list is full)" ]
  [ "$(wc -l < errors.txt)" -eq 524289 ]
  grep -q "more than 524288 ranges read as zeros: further ones are counted, not listed" "$TMP/daemon.log"
  python3 -c '
import json, sys
e = json.load(open(sys.argv[1]))["read_errors"]
assert e == {"ranges": 524288, "mem_bytes": 24 << 20, "unlisted_ranges": 131072, "unlisted_bytes": 131072 * 4096}, e' "$MNT/stats.json"
  unmount_img
}

@test "--on-read-error=zero: SEEK_DATA/SEEK_HOLE report unreadable clusters as data; cp and cp --sparse=always copy what reading gives" {
  past_end bad.qcow2 $((64 << 20))
  mount_img -f qcow2 --on-read-error=zero bad.qcow2 "$MNT"
  python3 - "$MNT/disk.raw" <<'EOF'
import os, sys
fd = os.open(sys.argv[1], os.O_RDONLY)
assert os.lseek(fd, 0, os.SEEK_DATA) == 0
assert os.lseek(fd, 4096, os.SEEK_DATA) == 4096      # past the end: data (reads as zeros)
assert os.lseek(fd, 0, os.SEEK_HOLE) == 64 << 20     # no hole before the end
EOF
  cp "$MNT/disk.raw" plain.raw
  cp --sparse=always "$MNT/disk.raw" sparse.raw
  [ "$(sha256sum < plain.raw | cut -d' ' -f1)" = "$(expected_sha256 $((64 << 20)))" ]
  cmp plain.raw sparse.raw
  cmp plain.raw "$MNT/disk.raw"
  unmount_img
  # without the option the same seek fails with EIO, as a read there does
  mount_img -f qcow2 bad.qcow2 "$MNT"
  run python3 -c 'import os, sys; os.lseek(os.open(sys.argv[1], os.O_RDONLY), 4096, os.SEEK_DATA)' "$MNT/disk.raw"
  [ "$status" -ne 0 ]
  [[ "$output" == *"Input/output error"* ]]
  unmount_img
}

@test "qcow2: a run of clusters whose third one is past the end: the message names that cluster's guest and host offsets" {
  python3 - "$BATS_TEST_DIRNAME/make-hostile" <<'EOF'
import importlib.machinery, sys
mh = importlib.machinery.SourceFileLoader("make_hostile", sys.argv[1]).load_module()
q = mh.q2(snapshot=False)                 # 4 KiB clusters, the file is clusters 0-12
for i in range(4):                         # guest clusters 20-23 -> host clusters 11-14, contiguous
    q.set64(q.off(4) + 8 * (20 + i), q.off(11 + i) | mh.OFLAG_COPIED)
open("run.qcow2", "wb").write(q.image())
EOF
  [ "$(stat -c %s run.qcow2)" -eq $((13 * 4096)) ]
  mount_img -f qcow2 run.qcow2 "$MNT"
  run dd if="$MNT/disk.raw" of=/dev/null bs=16k skip=5 count=1 iflag=direct
  [ "$status" -ne 0 ]
  unmount_img
  cat "$TMP/daemon.log"
  grep -q "corrupt qcow2 metadata: data cluster 0xd000 for guest offset 0x16000 lies past the end of the image" "$TMP/daemon.log"
  # with --on-read-error=zero only the two clusters past the end read as zeros
  mount_img -f qcow2 --on-read-error=zero run.qcow2 "$MNT"
  dd if="$MNT/disk.raw" of=/dev/null bs=16k skip=5 count=1 status=none
  [ "$(awk '{ print $1, $2, $3 }' "$MNT/errors")" = "90112 8192 0" ]
  unmount_img
}
