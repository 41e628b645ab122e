#!/usr/bin/env bats
# SPDX-License-Identifier: MIT
# qed-create.bats - `imgfuse create -f qed` (cluster_size, table_size, backing_file, backing_fmt, -b/-F)
# makes the same bytes as `qemu-img create -f qed`, images qemu-img reads as QED of that size and checks
# clean; fio with 4 jobs and verification on created images, then qemu-img check clean and qemu-img
# convert equal to what the mount showed; write-zeroes and discard as zero clusters (L2 entry 1).

load helpers

setup() { setup_tmp; cd "$TMP"; }
teardown() { teardown_tmp; }

# info_is IMAGE SIZE CLUSTER [BACKING]: qemu-img info reads IMAGE as qed of SIZE bytes, CLUSTER-byte clusters
# and backing file name BACKING (none when not given).
info_is() {
  qemu-img info --output=json "$1" | python3 -c '
import json, sys
j = json.load(sys.stdin)
want = {"format": "qed", "virtual-size": int(sys.argv[1]), "cluster-size": int(sys.argv[2])}
got = {k: j.get(k) for k in want}
assert got == want, (got, want)
assert j.get("backing-filename") == (sys.argv[3] if len(sys.argv) > 3 else None), j' "${@:2}"
}

@test "imgfuse create -f qed makes the bytes qemu-img create makes: defaults, cluster and table sizes, backing files" {
  qemu-img create -q -f raw base.raw 3M
  qemu-img create -q -f qcow2 base.qcow2 5M
  local opts size
  while IFS='|' read -r opts size; do
    rm -f ours.qed theirs.qed
    "$IMGFUSE" create -f qed $opts ours.qed $size
    qemu-img create -q -f qed $opts theirs.qed $size
    cmp ours.qed theirs.qed || { echo "differs for: $opts $size"; return 1; }
    check_clean ours.qed
  done <<'EOF'
|10M
-o cluster_size=4k,table_size=16|5000000
-o cluster_size=1M,table_size=2|1G
-o table_size=8|0
-b base.raw -F raw|
-b base.qcow2 -F qcow2|7M
-o backing_file=base.raw,backing_fmt=raw,cluster_size=128k|2M
EOF
  "$IMGFUSE" create -f qed -o cluster_size=4k,table_size=16 a.qed 5000000
  info_is a.qed 5000192 4096
  "$IMGFUSE" create -f qed -b base.raw -F raw b.qed
  info_is b.qed 3145728 65536 base.raw
  mount_img b.qed "$MNT"
  grep -q "backing_resolved: $TMP/base.raw" "$MNT/info"
  unmount_img
  # a table of 16 clusters of 64 MiB (1 GiB) is a hole in the new file, not written
  "$IMGFUSE" create -f qed -o cluster_size=64M,table_size=16 big.qed 1T
  [ "$(stat -c %s big.qed)" -eq $((17 << 26)) ]
  [ "$(du -k big.qed | cut -f1)" -lt 1024 ]
  "$IMGFUSE" create -f qed -o help | grep -q table_size
}

@test "imgfuse create -f qed refuses bad options with one line and exit 2, creating nothing" {
  qemu-img create -q -f raw base.raw 1M
  create_refusals qed x.qed <<'EOF'
-o cluster_size=1k|1M|qed creation option 'cluster_size' must be a power of two from 4K to 64M, not '1k'
-o cluster_size=96k|1M|qed creation option 'cluster_size' must be a power of two from 4K to 64M, not '96k'
-o table_size=3|1M|qed creation option 'table_size' must be a power of two from 1 to 16, not '3'
-o table_size=32|1M|qed creation option 'table_size' must be a power of two from 1 to 16, not '32'
-o subformat=fixed|1M|unknown qed creation option 'subformat'
-o cluster_size|1M|no value for the qed creation option 'cluster_size'
-o cluster_size=4k,table_size=1|1T|invalid virtual size for qed with these tables (0 to 1073741824 bytes)
-b base.raw -F nosuch|1M|unknown backing format 'nosuch'
EOF
}

@test "--rw fio with 4 jobs and crc32c verification on created images; qemu-img check clean, convert equal" {
  "$IMGFUSE" create -f qed f.qed 128M
  mount_img --rw f.qed "$MNT"
  fio --name=v --filename="$MNT/disk.raw" --rw=randwrite --bs=4k --size=32M --numjobs=4 --offset_increment=32M \
    --verify=crc32c --direct=1 --ioengine=psync --verify_fatal=1 --randseed=7 --group_reporting > fio.log 2>&1 || { cat fio.log; return 1; }
  cp "$MNT/disk.raw" shown.raw
  unmount_img
  check_clean f.qed
  qemu-img convert -f qed -O raw f.qed after.raw
  same_bytes after.raw shown.raw
  # small clusters and tables, over a qcow2 base, unaligned block sizes (not 4 KiB clusters: QEMU 7.2's
  # check reports leaks on 4 KiB-cluster images its own qemu-io wrote)
  qemu-img create -q -f qcow2 b.qcow2 32M
  qemu-io -f qcow2 -c 'write -P 0x5c 0 32M' b.qcow2 >/dev/null
  local bsum; bsum=$(sha256sum b.qcow2)
  "$IMGFUSE" create -f qed -o cluster_size=16k,table_size=2 -b b.qcow2 -F qcow2 t.qed
  mount_img --rw t.qed "$MNT"
  fio --name=w --filename="$MNT/disk.raw" --rw=randrw --bsrange=512-64k --verify=crc32c --numjobs=4 \
    --size=8M --offset_increment=8M --ioengine=psync --randseed=7 --verify_fatal=1 --group_reporting > fio.log 2>&1 || { cat fio.log; return 1; }
  cp "$MNT/disk.raw" shown2.raw
  unmount_img
  check_clean t.qed
  qemu-img convert -f qed -O raw t.qed after2.raw
  same_bytes after2.raw shown2.raw
  [ "$(sha256sum b.qcow2)" = "$bsum" ]
}

# l2_entries IMAGE FIRST COUNT: the L2 entries of guest clusters FIRST..FIRST+COUNT-1, one a line (0: no table).
l2_entries() {
  python3 - "$@" <<'EOF'
import struct, sys
d = open(sys.argv[1], "rb").read()
cs, ts = struct.unpack_from("<II", d, 4)
l1 = struct.unpack_from("<Q", d, 40)[0]
n = ts * cs // 8
for c in range(int(sys.argv[2]), int(sys.argv[2]) + int(sys.argv[3])):
    l2 = struct.unpack_from("<Q", d, l1 + 8 * (c // n))[0]
    print(struct.unpack_from("<Q", d, l2 + 8 * (c % n))[0] if l2 else 0)
EOF
}

@test "write-zeroes and discard: zero clusters over a backing file, zeros in place in data clusters, check clean" {
  local C=65536
  truncate -s 4M base.raw
  qemu-io -f raw -c 'write -P 0x41 0 4M' base.raw >/dev/null
  "$IMGFUSE" create -f qed -b base.raw -F raw t.qed
  cp base.raw expect.raw
  mount_img --rw --discard=unmap t.qed "$MNT"
  write_both expect.raw "$((2 * C)) $((2 * C)) 0x11"
  # whole unallocated clusters 0-1, whole data cluster 2, a piece of unallocated cluster 5 (allocated),
  # a piece of data cluster 3, punched clusters 10-12 and the disk's last cluster
  zero_both expect.raw "-z 0 $((2 * C))" "-z $((2 * C)) $C" "-z $((5 * C + 1000)) 3000" "-z $((3 * C + 100)) 200" \
    "-p $((10 * C)) $((3 * C))" "-p $((63 * C)) $C"
  cp "$MNT/disk.raw" shown.raw
  unmount_img
  same_bytes shown.raw expect.raw
  check_clean t.qed
  qemu-img convert -f qed -O raw t.qed after.raw
  same_bytes after.raw expect.raw
  [ "$(l2_entries t.qed 0 2 | sort -u)" = 1 ]
  [ "$(l2_entries t.qed 10 3 | sort -u)" = 1 ]
  [ "$(l2_entries t.qed 63 1)" = 1 ]
  [ "$(l2_entries t.qed 2 1)" -gt 1 ]
  [ "$(l2_entries t.qed 4 1)" = 0 ]
  [ "$(l2_entries t.qed 5 1)" -gt 1 ]
  # header, L1 (4 clusters), one L2 table (4 clusters), data clusters 2, 3 and 5: nothing else allocated
  [ "$(stat -c %s t.qed)" -eq $(( (1 + 4 + 4 + 3) * C )) ]
  qemu-img map -f qed --output=json t.qed | python3 -c '
import json, sys
m = json.load(sys.stdin)
z = [(e["start"], e["length"]) for e in m if e["zero"] and e["depth"] == 0]
assert (0, 131072) in z and (655360, 196608) in z, z'
  # without a backing file, zeroing what holds no data allocates nothing
  "$IMGFUSE" create -f qed n.qed 4M
  mount_img --rw n.qed "$MNT"
  fallocate -z -o 0 -l 4M "$MNT/disk.raw"
  unmount_img
  [ "$(stat -c %s n.qed)" -eq $(( 5 * C )) ]
  check_clean n.qed
}
