#!/usr/bin/env bats
# SPDX-License-Identifier: MIT
# read-path.bats - the read path of read-only mounts (issue 9): reads answered by splice from the host
# files, in one piece (raw, allocated qcow2 clusters in any layer) or several (layers alternating, zero
# clusters, holes), next to reads the daemon assembles itself (compressed) return qemu-img's bytes for
# every request size; statistics and the audit log count them exactly; --direct-io sends every read to
# the daemon; the mount's readahead window is raised to 1 MiB when the daemon may (root); stats.json
# reports the memory each qcow2 node holds, within its cache limit, and the daemon's resident size.

load helpers

setup() { setup_tmp; }
teardown() { teardown_tmp; }

# A 4 MiB qcow2 chain mixing every kind of range: backing data, top data, zero, compressed, holes.
make_chain() {
  qemu-img create -q -f qcow2 -o cluster_size=65536 "$TMP/b.qcow2" 4M
  qemu-io -f qcow2 -c 'write -P 0x11 0 2M' -c 'write -c -P 0x12 2M 64k' "$TMP/b.qcow2" >/dev/null
  qemu-img create -q -f qcow2 -o cluster_size=65536 -b "$TMP/b.qcow2" -F qcow2 "$TMP/t.qcow2"
  qemu-io -f qcow2 -c 'write -P 0x22 64k 64k' -c 'write -P 0x23 1M 512k' -c 'write -z 1600k 64k' \
    -c 'write -c -P 0x24 3M 64k' -c 'write -P 0x25 3136k 4k' "$TMP/t.qcow2" >/dev/null
}

# stat_sum ROLE FIELD: FIELD summed over the nodes of stats.json with that role.
stat_sum() {
  python3 -c 'import json,sys; print(sum(n[sys.argv[2]] for n in json.load(open(sys.argv[3]))["nodes"] if n["role"] == sys.argv[1]))' \
    "$1" "$2" "$MNT/stats.json"
}

@test "read-only qcow2 chain: every request size returns qemu-img's bytes" {
  make_chain
  want=$(raw_of "$TMP/t.qcow2")
  mount_img "$TMP/t.qcow2"
  for bs in 1M 128k 12k 4k; do
    dd if="$MNT/disk.raw" of="$TMP/got" bs=$bs status=none
    same_bytes "$TMP/got" "$want"
  done
  # unaligned offsets and lengths across layer and cluster boundaries, page cache bypassed by fresh opens
  python3 - "$MNT/disk.raw" "$want" <<'PY'
import os, random, sys
r = random.Random(9)
got = os.open(sys.argv[1], os.O_RDONLY); want = open(sys.argv[2], "rb").read()
for _ in range(300):
    off = r.randrange(0, len(want)); n = r.choice([1, 511, 4096, 65536, 70000, 300000, 1 << 20])
    assert os.pread(got, n, off) == want[off:off + n], (off, n)
PY
  unmount_img
}

@test "read-only raw: a whole sequential read is counted once in stats.json and the audit log" {
  head -c 8388608 /dev/urandom > "$TMP/r.raw"
  mount_img --audit-log="$TMP/audit.log" "$TMP/r.raw" "$MNT"
  fmt0=$(stat_sum format rd_bytes); file0=$(stat_sum file rd_bytes)
  dd if="$MNT/disk.raw" of="$TMP/got" bs=1M status=none
  same_bytes "$TMP/got" "$TMP/r.raw"
  [ "$(( $(stat_sum format rd_bytes) - fmt0 ))" -eq 8388608 ]
  [ "$(( $(stat_sum file rd_bytes) - file0 ))" -eq 8388608 ]
  unmount_img
  python3 -c 'import json,sys; l = json.loads(open(sys.argv[1]).readlines()[-1]); assert l["bytes_read"] == 8388608, l' \
    "$TMP/audit.log"
}

@test "read-only qcow2: reads from the backing layer are counted in the top, the layer and its file" {
  make_chain
  mount_img "$TMP/t.qcow2"
  # first one cluster of each layer, so that both L2 tables are loaded before counting
  dd if="$MNT/disk.raw" of=/dev/null bs=64k count=2 iflag=direct status=none
  before=$(python3 -c 'import json,sys; print(" ".join(str(n["rd_bytes"]) for n in json.load(open(sys.argv[1]))["nodes"]))' "$MNT/stats.json")
  # 1536k..1600k: one backing cluster, read alone with O_DIRECT (no readahead around it)
  dd if="$MNT/disk.raw" of=/dev/null bs=64k skip=24 count=1 iflag=direct status=none
  after=$(python3 -c 'import json,sys; print(" ".join(str(n["rd_bytes"]) for n in json.load(open(sys.argv[1]))["nodes"]))' "$MNT/stats.json")
  read -r f0 t0 b0 bf0 <<<"$before"
  read -r f1 t1 b1 bf1 <<<"$after"
  # the top format node, the backing format node and the backing's file each saw the bytes read
  [ $((f1 - f0)) -ge 65536 ]
  [ $((b1 - b0)) -eq $((f1 - f0)) ]
  [ $((bf1 - bf0)) -eq $((f1 - f0)) ]
  unmount_img
}

@test "read-only overlay alternating layers every cluster, with zero clusters and holes: bytes and counts" {
  # 4 MiB, 64 KiB clusters: even clusters in the base, odd ones in the overlay, then zeros and holes
  qemu-img create -q -f qcow2 -o cluster_size=65536 "$TMP/b.qcow2" 4M
  qemu-img create -q -f qcow2 -o cluster_size=65536 -b "$TMP/b.qcow2" -F qcow2 "$TMP/t.qcow2"
  bcmds=(); tcmds=()
  for i in $(seq 0 2 31); do bcmds+=(-c "write -P $((i + 1)) $((i * 64))k 64k"); done
  for i in $(seq 1 2 31); do tcmds+=(-c "write -P $((i + 101)) $((i * 64))k 64k"); done
  qemu-io -f qcow2 "${bcmds[@]}" "$TMP/b.qcow2" >/dev/null
  qemu-io -f qcow2 "${tcmds[@]}" -c 'write -z 2176k 64k' -c 'write -P 0x77 2304k 4k' "$TMP/t.qcow2" >/dev/null
  want=$(raw_of "$TMP/t.qcow2")
  mount_img "$TMP/t.qcow2"
  for bs in 1M 512k 192k 12k; do
    dd if="$MNT/disk.raw" of="$TMP/got" bs=$bs iflag=direct status=none
    same_bytes "$TMP/got" "$want"
  done
  fmt0=$(stat_sum format rd_bytes); file0=$(stat_sum file rd_bytes)
  top0=$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["nodes"][0]["rd_ops"])' "$MNT/stats.json")
  dd if="$MNT/disk.raw" of=/dev/null bs=512k count=4 iflag=direct status=none
  top1=$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["nodes"][0]["rd_ops"])' "$MNT/stats.json")
  # the top counts each request once; the format nodes together saw it once in the top and half of it
  # in the base; the host files saw exactly the data bytes (the metadata is cached by now)
  [ $((top1 - top0)) -eq 4 ]
  [ $(( $(stat_sum format rd_bytes) - fmt0 )) -eq $((2097152 + 1048576)) ]
  [ $(( $(stat_sum file rd_bytes) - file0 )) -eq 2097152 ]
  unmount_img
}

@test "--direct-io: every read reaches the daemon, with qemu-img's bytes; private mmap works, shared is refused" {
  make_chain
  want=$(raw_of "$TMP/t.qcow2")
  mount_img --direct-io "$TMP/t.qcow2" "$MNT"
  grep -qx 'options: --direct-io' "$MNT/info"
  for bs in 1M 128k 12k; do
    dd if="$MNT/disk.raw" of="$TMP/got" bs=$bs status=none
    same_bytes "$TMP/got" "$want"
  done
  # the same MiB read twice through the page-cache path of dd (no O_DIRECT): both reach the daemon
  top0=$(stat_sum format rd_bytes)
  dd if="$MNT/disk.raw" of=/dev/null bs=1M count=1 status=none
  dd if="$MNT/disk.raw" of=/dev/null bs=1M count=1 status=none
  top1=$(stat_sum format rd_bytes)
  # the top and the backing layer (0..512k of this chain is in the backing) both count their part
  [ $((top1 - top0)) -ge 2097152 ]
  python3 - "$MNT/disk.raw" "$want" <<'PY'
import errno, mmap, os, sys
fd = os.open(sys.argv[1], os.O_RDONLY)
want = open(sys.argv[2], "rb").read()
m = mmap.mmap(fd, 1 << 20, flags=mmap.MAP_PRIVATE, prot=mmap.PROT_READ, offset=1 << 20)
assert m[:] == want[1 << 20:2 << 20]
try:
    mmap.mmap(fd, 4096, flags=mmap.MAP_SHARED, prot=mmap.PROT_READ)
    raise SystemExit("shared mmap of a --direct-io view should fail")
except OSError as e:
    assert e.errno == errno.ENODEV, e
PY
  unmount_img
  # -o direct_io is the same option; without it a second read of the same MiB is a page-cache hit
  mount_img -o direct_io "$TMP/t.qcow2" "$MNT"
  grep -qx 'options: --direct-io' "$MNT/info"
  unmount_img
  # writes too go straight to the daemon, and land in the image
  cp "$TMP/t.qcow2" "$TMP/w.qcow2"
  head -c 300000 /dev/urandom > "$TMP/patch"
  mount_img --rw --direct-io "$TMP/w.qcow2" "$MNT"
  dd if="$TMP/patch" of="$MNT/disk.raw" bs=100000 seek=1 conv=notrunc status=none
  unmount_img
  cp "$want" "$TMP/want-w"
  dd if="$TMP/patch" of="$TMP/want-w" bs=100000 seek=1 conv=notrunc status=none
  same_bytes "$(raw_of "$TMP/w.qcow2")" "$TMP/want-w"
  mount_img "$TMP/t.qcow2"
  dd if="$MNT/disk.raw" of=/dev/null bs=1M count=1 status=none
  top0=$(stat_sum format rd_bytes)
  dd if="$MNT/disk.raw" of=/dev/null bs=1M count=1 status=none
  [ "$(stat_sum format rd_bytes)" -eq "$top0" ]
  unmount_img
}

@test "the mount's readahead window is 1 MiB when the daemon runs as root, the kernel's default otherwise" {
  head -c 1048576 /dev/urandom > "$TMP/r.raw"
  mount_img "$TMP/r.raw"
  ra=$(cat "/sys/class/bdi/$(mountpoint -d "$MNT")/read_ahead_kb")
  if [ "$(id -u)" -eq 0 ]; then [ "$ra" -eq 1024 ]; else [ "$ra" -gt 0 ] && [ "$ra" -ne 1024 ]; fi
  cmp "$MNT/disk.raw" "$TMP/r.raw"
  unmount_img
}

# mem_check NODE_MIN NODE_SLACK: every qcow2 node of stats.json holds more than NODE_MIN bytes and no
# more than its configured L2 cache (info.json) + the decompressed-cluster cache (1 MiB) + NODE_SLACK;
# the process's resident size is reported, its peak no lower.
mem_check() {
  python3 - "$MNT/stats.json" "$MNT/info.json" "$1" "$2" <<'PY'
import json, sys
stats = json.load(open(sys.argv[1])); info = json.load(open(sys.argv[2]))
lo, slack = int(sys.argv[3]), int(sys.argv[4])
limits = {l["filename"]: l["l2_cache_size"] for l in info["imgfuse"]["layers"]}
nodes = [n for n in stats["nodes"] if n["driver"] == "qcow2"]
assert len(nodes) == len(limits) == 2, nodes
for n in nodes:
    assert lo < n["mem_bytes"] <= limits[n["filename"]] + (1 << 20) + slack, (n["filename"], n["mem_bytes"], limits)
    print(n["filename"], n["mem_bytes"], file=sys.stderr)
assert all("mem_bytes" not in n for n in stats["nodes"] if n["driver"] == "file")
p = stats["process"]
assert 1 << 20 < p["rss_bytes"] <= p["peak_rss_bytes"] < 256 << 20, p
PY
}

@test "stats.json reports what each qcow2 node holds in memory, within --l2-cache-size, and the resident size" {
  # 4 KiB clusters: an L2 table maps 2 MiB, so each 64 MiB layer has 32 tables (128 KiB)
  qemu-img create -q -f qcow2 -o cluster_size=4096 "$TMP/b.qcow2" 64M
  qemu-io -f qcow2 -c 'write -c -P 0x32 8M 64k' -c 'write -P 0x31 0 8M' -c 'write -P 0x31 8256k 57280k' \
    "$TMP/b.qcow2" >/dev/null
  qemu-img create -q -f qcow2 -o cluster_size=4096 -b "$TMP/b.qcow2" -F qcow2 "$TMP/t.qcow2"
  qemu-io -f qcow2 -c 'write -P 0x33 1M 40M' "$TMP/t.qcow2" >/dev/null
  want=$(raw_of "$TMP/t.qcow2")

  # default cache: every table fits as a plain table and stays after a whole read; the top has the 21
  # tables of 1M-41M, the base is read for the other 13 of its 32
  mount_img "$TMP/t.qcow2" "$MNT"
  same_bytes "$MNT/disk.raw" "$want"
  mem_check $((13 * 4096)) 65536
  unmount_img

  # a 64 KiB cache cannot hold them: what is held stays within it, and the bytes are still right
  mount_img --l2-cache-size 64K "$TMP/t.qcow2" "$MNT"
  same_bytes "$MNT/disk.raw" "$want"
  mem_check 4096 65536
  unmount_img
}
