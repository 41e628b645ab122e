#!/usr/bin/env bats
# SPDX-License-Identifier: MIT
# qed.bats - the QED driver on real mounts. Images made by qemu-img (several cluster and table sizes,
# sizes not a multiple of the cluster size, zero clusters, qemu-img convert -O qed) and backing chains
# (qcow2 and raw bases) read byte for byte like `qemu-img convert -O raw` with the same data map;
# writes through --rw mounts (unaligned, into new clusters over a backing file, into allocated ones, fio
# with 4 jobs and verification) leave an image `qemu-img check` calls clean and `qemu-img compare` calls
# equal, and the backing file untouched; damaged images are refused with one line naming the file, and
# a bad L2 entry fails only its own cluster.

load helpers

setup() { setup_tmp; cd "$TMP"; }
teardown() { teardown_tmp; }

# check_mount IMAGE [options]: size, bytes and SEEK_DATA map of disk.raw equal QEMU's view.
check_mount() { mount_equals_qemu qed "$@"; }

# l2_entry_offset IMAGE CLUSTER: file offset of the L2 entry of guest cluster CLUSTER (its L2 table must exist).
l2_entry_offset() {
  python3 - "$1" "$2" <<'EOF'
import struct, sys
d = open(sys.argv[1], "rb").read()
cs, ts = struct.unpack_from("<II", d, 4)
l1 = struct.unpack_from("<Q", d, 40)[0]
n = ts * cs // 8
c = int(sys.argv[2])
l2 = struct.unpack_from("<Q", d, l1 + 8 * (c // n))[0]
assert l2, "no L2 table"
print(l2 + 8 * (c % n))
EOF
}

# qed_clean IMAGE: qemu-img check finds no corruption, the needs-check flag is clear, and every cluster
# of the file is referenced exactly once (header, L1, L2 tables, data). Leaks are counted here, not by
# qemu-img: QEMU 7.2 reports leaks on images it wrote itself (2 for a 32 MiB image with 4 KiB clusters
# filled by qemu-io).
qed_clean() {
  run qemu-img check -f qed --output=json "$1"
  echo "$output"
  [ "$status" -eq 0 ] || [ "$status" -eq 3 ]  # 3: leaks only (see above)
  python3 - "$1" "$output" <<'EOF'
import collections, json, struct, sys
r = json.loads(sys.argv[2])
assert r.get("corruptions", 0) == 0 and r.get("check-errors", 0) == 0, r
d = open(sys.argv[1], "rb").read()
cs, ts, hs = struct.unpack_from("<III", d, 4)
l1 = struct.unpack_from("<Q", d, 40)[0]
assert not struct.unpack_from("<Q", d, 16)[0] & 2, "needs-check flag left set"
n = ts * cs // 8
refs = collections.Counter(range(hs))
refs.update(l1 // cs + k for k in range(ts))
for i in range(n):
    l2 = struct.unpack_from("<Q", d, l1 + 8 * i)[0]
    if l2:
        refs.update(l2 // cs + k for k in range(ts))
        refs.update(e // cs for e in struct.unpack_from("<%dQ" % n, d, l2) if e > 1)
assert len(d) % cs == 0, "file size not a multiple of the cluster size"
bad = [c for c in range(len(d) // cs) if refs[c] != 1] + [c for c in refs if c >= len(d) // cs]
assert not bad, "clusters leaked or referenced twice: %s" % bad[:10]
EOF
}

# ---------------------------------------------------------------- images made by QEMU

@test "cluster sizes 4K..1M, table sizes 2..16, odd sizes, data and zero clusters read like qemu-img convert" {
  local g
  for g in "4096 2 10000384" "4096 16 3M" "65536 4 33554944" "1048576 2 70M" "16384 8 512"; do
    set -- $g
    rm -f i.qed
    qemu-img create -q -f qed -o cluster_size=$1,table_size=$2 i.qed $3
    local size; size=$(qemu-img info --output=json i.qed | python3 -c 'import json,sys; print(json.load(sys.stdin)["virtual-size"])')
    if [ "$size" -gt 65536 ]; then
      fmt_io qed i.qed 'write -P 0x11 0 512' "write -P 0x22 $((size / 3)) 70001" "write -z $((size / 2)) $(( $1 * 2 ))" \
        "write -P 0x33 $((size - 1000)) 1000"
    fi
    check_mount i.qed
  done
}

@test "an image written whole with zero clusters inside, and qemu-img convert -O qed of a raw file with holes" {
  head -c 3000000 /dev/urandom > pat.raw
  truncate -s 9M pat.raw
  dd if=/dev/urandom of=pat.raw bs=4096 seek=2000 count=3 conv=notrunc status=none
  qemu-img convert -f raw -O qed -o cluster_size=4096,table_size=2 pat.raw c.qed
  mount_img c.qed "$MNT"
  same_bytes "$MNT/disk.raw" pat.raw
  unmount_img
  check_mount c.qed
  qemu-img create -q -f qed -o cluster_size=8192 z.qed 5M
  fmt_io qed z.qed 'write -z 8192 16384' 'write -P 0x5e 32768 1M' 'write -z 2M 1M' 'write -P 0x5f 4M 8192'
  check_mount z.qed
  # zero clusters are allocated-zero in the map of the top layer, not data
  run "$IMGFUSE" map --json z.qed
  echo "$output"
  python3 - "$output" <<'EOF'
import json, sys
m = json.loads(sys.argv[1])
assert any(e["start"] <= 8192 < e["start"] + e["length"] and e["zero"] and not e["data"] for e in m), m
EOF
}

@test "backing chains: a qcow2 base (-F qcow2) and a raw base (-F raw, no probing) show through unallocated clusters" {
  qemu-img create -q -f qcow2 base.qcow2 12M
  qemu-io -f qcow2 -c 'write -P 0x41 0 12M' base.qcow2 >/dev/null
  qemu-img create -q -f qed -o cluster_size=4096,table_size=2 -b base.qcow2 -F qcow2 top.qed 16M
  fmt_io qed top.qed 'write -P 0x42 4096 5000' 'write -z 1M 8192' 'write -P 0x43 14M 4096'
  qemu-img convert -f qed -O raw top.qed expect.raw
  mount_img top.qed "$MNT"
  same_bytes "$MNT/disk.raw" expect.raw
  grep -q "layers: 2" "$MNT/info"
  unmount_img
  # the zero cluster hides the base, the base's end reads zeros
  cmp -n 8192 -i $((1024 * 1024)) expect.raw /dev/zero
  cmp -n 4096 -i $((13 * 1024 * 1024)) expect.raw /dev/zero

  # a raw base that looks like a qcow2 image: -F raw sets QED_F_BACKING_FORMAT_NO_PROBE, it is read raw
  cp base.qcow2 rawbase.img
  qemu-img create -q -f qed -b rawbase.img -F raw top2.qed 2M
  [ $(( $(od -An -tu8 -j16 -N8 top2.qed) & 5 )) -eq 5 ]
  fmt_io qed top2.qed 'write -P 0x44 100000 3'
  qemu-img convert -f qed -O raw top2.qed expect2.raw
  mount_img top2.qed "$MNT"
  same_bytes "$MNT/disk.raw" expect2.raw
  grep -q "backing_format_no_probe: yes" "$MNT/info"
  unmount_img
  cmp -n 4 rawbase.img expect2.raw
}

@test "info names the geometry; memory_used stays bounded for a 4 TiB image" {
  qemu-img create -q -f qed -o cluster_size=65536,table_size=16 big.qed 4T
  fmt_io qed big.qed 'write -P 1 0 64k' 'write -P 2 3T 64k'
  mount_img big.qed "$MNT"
  grep -q "cluster_size: 65536" "$MNT/info"
  grep -q "table_size: 16" "$MNT/info"
  grep -q "need_check: no" "$MNT/info"
  cmp -n 65536 "$MNT/disk.raw" <(head -c 65536 /dev/zero | tr '\0' '\001')
  cmp -n 65536 -i $((3 << 40)):0 "$MNT/disk.raw" <(head -c 65536 /dev/zero | tr '\0' '\002')
  dd if="$MNT/disk.raw" of=/dev/null bs=1M count=64 skip=$((3 << 20)) status=none
  python3 - "$MNT/info.json" "$MNT/stats.json" <<'EOF'
import json, re, sys
l = json.load(open(sys.argv[1]))["imgfuse"]["layers"][0]
assert l["l1_entries_used"] == 512, l
mem = [int(m) for m in re.findall(r'"mem_bytes": (\d+)', open(sys.argv[2]).read())]
assert mem and max(mem) < 8 << 20, mem
EOF
}

# ---------------------------------------------------------------- writes

@test "--rw: unaligned writes into new clusters over a backing file keep its bytes; check clean; base unchanged" {
  qemu-img create -q -f qcow2 base.qcow2 10M
  qemu-io -f qcow2 -c 'write -P 0x61 0 10M' base.qcow2 >/dev/null
  qemu-img create -q -f qed -o cluster_size=4096,table_size=2 -b base.qcow2 -F qcow2 top.qed 12M
  fmt_io qed top.qed 'write -P 0x62 2M 64k' 'write -z 3M 8192'
  local bsum; bsum=$(sha256sum base.qcow2)
  qemu-img convert -f qed -O raw top.qed expect.raw
  mount_img --rw top.qed "$MNT"
  write_both expect.raw "100 3000 0x71" "2097000 5000 0x72" "3146000 77 0x73" "5000001 300000 0x74" "12581000 100 0x75" \
    "2100000 10 0x76"
  same_bytes "$MNT/disk.raw" expect.raw
  unmount_img
  [ "$(sha256sum base.qcow2)" = "$bsum" ]
  qed_clean top.qed
  qemu-img compare -f qed -F raw top.qed expect.raw
  # the header's needs-check flag is clear after a clean unmount
  [ $(( $(od -An -tu8 -j16 -N8 top.qed) & 2 )) -eq 0 ]
  mount_img top.qed "$MNT"
  same_bytes "$MNT/disk.raw" expect.raw
}

@test "--rw without a backing file: new clusters, the last partial cluster, new L2 tables; file grows by whole clusters" {
  qemu-img create -q -f qed -o cluster_size=65536,table_size=2 n.qed 2100000000
  truncate -s 2100000000 expect.raw
  mount_img --rw n.qed "$MNT"
  write_both expect.raw "1 1 0x01" "65535 2 0x02" "1073741824 70000 0x03" "2099999000 1000 0x04" "536870911 131074 0x05"
  unmount_img
  [ $(( $(stat -c %s n.qed) % 65536 )) -eq 0 ]
  qed_clean n.qed
  qemu-img compare -f qed -F raw n.qed expect.raw
}

@test "--rw fio with 4 jobs and crc32c verification, without and with a backing file" {
  qemu-img create -q -f qcow2 base.qcow2 32M
  qemu-io -f qcow2 -c 'write -P 0x5c 0 32M' base.qcow2 >/dev/null
  local bsum; bsum=$(sha256sum base.qcow2)
  qemu-img create -q -f qed -o cluster_size=4096,table_size=2 plain.qed 32M
  qemu-img create -q -f qed -o cluster_size=65536 -b base.qcow2 -F qcow2 top.qed 32M
  local img
  for img in plain.qed top.qed; do
    mount_img --rw "$img" "$MNT"
    fio --name=w --filename="$MNT/disk.raw" --rw=randrw --bsrange=512-256k --verify=crc32c --numjobs=4 \
      --size=8M --offset_increment=8M --ioengine=psync --randseed=7 --verify_fatal=1 --group_reporting \
      > fio.log 2>&1 || { cat fio.log; return 1; }
    cp "$MNT/disk.raw" copy.raw
    unmount_img
    qed_clean "$img"
    qemu-img compare -f qed -F raw "$img" copy.raw
  done
  [ "$(sha256sum base.qcow2)" = "$bsum" ]
}

# ---------------------------------------------------------------- damaged images

@test "damaged headers are refused with one line naming the file and the reason" {
  qemu-img create -q -f qed -o cluster_size=4096,table_size=2 good.qed 3M
  fmt_io qed good.qed 'write -P 1 0 1M'
  cp good.qed magic.qed && patch_le magic.qed 0 4 0x12345678
  refused_open magic.qed "not a QED image (bad magic)" -f qed
  cp good.qed feat.qed && patch_le feat.qed 16 8 0x30
  refused_open feat.qed "unknown incompatible QED feature bits 0x30"
  cp good.qed cs.qed && patch_le cs.qed 4 4 2048
  refused_open cs.qed "cluster size 2048 is not a power of two from 4 KiB to 64 MiB"
  cp good.qed cs2.qed && patch_le cs2.qed 4 4 $((128 << 20))
  refused_open cs2.qed "cluster size 134217728"
  cp good.qed ts.qed && patch_le ts.qed 8 4 3
  refused_open ts.qed "table size 3 is not a power of two"
  cp good.qed l1.qed && patch_le l1.qed 40 8 $((1 << 40))
  refused_open l1.qed "L1 table extends past the end of the file"
  cp good.qed l1u.qed && patch_le l1u.qed 40 8 4097
  refused_open l1u.qed "L1 table offset 0x1001 is not cluster aligned"
  head -c 6000 good.qed > trunc.qed
  refused_open trunc.qed "L1 table extends past the end of the file"
  head -c 40 good.qed > tiny.qed
  refused_open tiny.qed "file too short for a QED header" -f qed
  cp good.qed size.qed && patch_le size.qed 48 8 $((1 << 60))
  refused_open size.qed "larger than the tables can address"
  cp good.qed bk.qed && patch_le bk.qed 16 8 1 && patch_le bk.qed 56 4 4000 && patch_le bk.qed 60 4 200
  refused_open bk.qed "backing file name (offset 4000, 200 bytes) lies outside the header"
}

@test "an L2 entry past the end of the file or into the L1 table: EIO for that cluster only, logged once; --rw refused" {
  qemu-img create -q -f qed -o cluster_size=4096,table_size=2 d.qed 4M
  fmt_io qed d.qed 'write -P 0x11 0 1M'
  local good; good=$(raw_of d.qed)
  cp d.qed past.qed; patch_le past.qed "$(l2_entry_offset past.qed 5)" 8 $((1 << 40))
  cp d.qed hdr.qed; patch_le hdr.qed "$(l2_entry_offset hdr.qed 5)" 8 4096  # the L1 table
  local img
  for img in past.qed hdr.qed; do
    mount_img "$img" "$MNT"
    run dd if="$MNT/disk.raw" bs=4096 skip=5 count=1 of=/dev/null status=none
    [ "$status" -ne 0 ]
    [[ "$output" == *"Input/output error"* ]]
    cmp -n 20480 "$MNT/disk.raw" "$good"
    cmp -i 24576 "$MNT/disk.raw" "$good"
    unmount_img
    [ "$(grep -c "L2 entry for guest cluster 5" "$TMP/daemon.log")" -eq 1 ]
  done
  refused_open past.qed "L2 entry for cluster 5 (0x10000000000) is unaligned, in the header or L1 table or past the end of the file" --rw
}

@test "QED_F_NEED_CHECK: read-only mounts warn once and serve; --rw checks, clears the flag, or refuses a bad image" {
  qemu-img create -q -f qed -o cluster_size=4096,table_size=2 d.qed 4M
  fmt_io qed d.qed 'write -P 0x11 0 1M'
  local good; good=$(raw_of d.qed)
  patch_le d.qed 16 8 2
  mount_img d.qed "$MNT"
  same_bytes "$MNT/disk.raw" "$good"
  grep -q "need_check: yes" "$MNT/info"
  unmount_img
  [ "$(grep -c "needing a consistency check" "$TMP/daemon.log")" -eq 1 ]
  [ $(( $(od -An -tu8 -j16 -N8 d.qed) & 2 )) -eq 2 ]   # read-only: the file is untouched
  cp d.qed bad.qed; patch_le bad.qed "$(l2_entry_offset bad.qed 3)" 8 12345
  refused_open bad.qed "L2 entry for cluster 3 (0x3039) is unaligned" --rw
  mount_img --rw d.qed "$MNT"
  same_bytes "$MNT/disk.raw" "$good"
  unmount_img
  grep -q "it passed and the mark is cleared" "$TMP/daemon.log"
  [ $(( $(od -An -tu8 -j16 -N8 d.qed) & 2 )) -eq 0 ]
  qed_clean d.qed
}

@test "a daemon killed during allocating writes: fsynced data survives; the flagged image is served, then checked and cleared by --rw" {
  qemu-img create -q -f qed -o cluster_size=4096,table_size=2 k.qed 40M
  truncate -s 40M want.raw
  mount_img --rw k.qed "$MNT"
  local i
  for i in 0 1 2 3; do
    head -c 8192 /dev/urandom > chunk
    dd if=chunk of=want.raw bs=8192 seek=$((i * 3145728 + 4096)) oflag=seek_bytes conv=notrunc status=none
    dd if=chunk of="$MNT/disk.raw" bs=8192 seek=$((i * 3145728 + 4096)) oflag=seek_bytes conv=notrunc,fsync status=none
  done
  # allocating writes that reach the daemon (O_DIRECT) from a writer that keeps the file open, so no
  # close flushes them; the daemon dies meanwhile
  python3 - "$MNT/disk.raw" 3>&- <<'PY' &
import mmap, os, sys, time
fd = os.open(sys.argv[1], os.O_WRONLY | os.O_DIRECT)
buf = mmap.mmap(-1, 65536)
for i in range(20, 40):
    buf.seek(0)
    buf.write(os.urandom(65536))
    os.pwrite(fd, buf, i * 1048576)
    if i == 20:
        open("started", "w").close()
time.sleep(60)
PY
  local writer=$!
  for i in $(seq 1 100); do [ -e started ] && break; sleep 0.05; done
  [ -e started ]
  sleep 0.1
  kill_daemon 9
  kill "$writer" 2>/dev/null || true
  wait "$writer" || true
  [ $(( $(od -An -tu8 -j16 -N8 k.qed) & 2 )) -eq 2 ]
  run qemu-img check -f qed --output=json k.qed
  echo "$output"
  [[ "$output" != *'"corruptions"'* ]]
  mount_img k.qed "$MNT"
  cmp -n $((20 * 1048576)) "$MNT/disk.raw" want.raw
  unmount_img
  grep -q "needing a consistency check" "$TMP/daemon.log"
  mount_img --rw k.qed "$MNT"
  unmount_img
  grep -q "it passed and the mark is cleared" "$TMP/daemon.log"
  qed_clean k.qed
}
