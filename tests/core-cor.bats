#!/usr/bin/env bats
# SPDX-License-Identifier: MIT
# core-cor.bats - copy-on-read through a mount (issue 6): after reading the whole disk of an overlay
# mounted with --copy-on-read, every range with data in the base is data in the top layer (qemu-img map),
# holes stay holes, the overlay alone reads back the same bytes and qemu-img check is clean; concurrent
# fio writers with --verify during copy-on-read passes lose nothing.

load helpers

setup() { setup_tmp; cd "$TMP"; }
teardown() { teardown_tmp; }

make_chain() {
  qemu-img create -q -f qcow2 base.qcow2 32M
  qemu-io -f qcow2 -c 'write -P 0x11 0 3M' -c 'write -P 0x22 8M 320k' -c 'write -P 0x33 20M 64k' \
    -c 'write -z 24M 1M' base.qcow2 >/dev/null
  qemu-img create -q -f qcow2 -b base.qcow2 -F qcow2 top.qcow2
}

@test "--copy-on-read: a full read copies exactly the base's data into the overlay" {
  make_chain
  oracle=$(raw_of top.qcow2)
  mount_img --rw --copy-on-read top.qcow2 "$MNT"
  dd if="$MNT/disk.raw" bs=100000 of=/dev/null status=none
  unmount_img
  run qemu-img check top.qcow2
  echo "$output"
  [ "$status" -eq 0 ]
  # Every data range of the base is now data at depth 0; nothing else is allocated in the top.
  python3 - <<'PY'
import json, subprocess
def m(*a):
    return json.loads(subprocess.check_output(["qemu-img", "map", "--output=json", *a]))
def data_ranges(entries, depth=None):
    out = []
    for e in entries:
        if e["data"] and (depth is None or e["depth"] == depth):
            out.append((e["start"], e["start"] + e["length"]))
    merged = []
    for s, t in sorted(out):
        if merged and merged[-1][1] == s:
            merged[-1] = (merged[-1][0], t)
        else:
            merged.append((s, t))
    return merged
base = data_ranges(m("base.qcow2"))
top = data_ranges(m("top.qcow2"), depth=0)
assert base == [(0, 3 << 20), (8 << 20, (8 << 20) + 327680), (20 << 20, (20 << 20) + 65536)], base
assert top == base, (top, base)
PY
  mount_img --no-backing top.qcow2 "$MNT"
  same_bytes "$MNT/disk.raw" "$oracle"
  unmount_img
}

@test "--copy-on-read with concurrent fio writers: verify passes, nothing lost, check clean" {
  make_chain
  mount_img --rw --copy-on-read top.qcow2 "$MNT"
  ( for i in 1 2 3; do cat "$MNT/disk.raw" > /dev/null; done ) &
  reader=$!
  fio --name=w --filename="$MNT/disk.raw" --rw=randrw --bsrange=4k-128k --verify=crc32c --numjobs=2 \
      --size=3M --offset_increment=8M --ioengine=psync --randseed=7 --verify_fatal=1 \
      --group_reporting > fio.log 2>&1 || { cat fio.log; kill $reader; false; }
  wait $reader
  cp "$MNT/disk.raw" copy.raw
  unmount_img
  run qemu-img check top.qcow2
  echo "$output"
  [ "$status" -eq 0 ]
  run qemu-img compare -f qcow2 -F raw top.qcow2 copy.raw
  echo "$output"
  [ "$status" -eq 0 ]
}
