#!/usr/bin/env bats
# SPDX-License-Identifier: MIT
# qcow2-read.bats - issue 3: every qcow2 image QEMU writes reads back byte for byte like
# `qemu-img convert -O raw` on a real mount, and SEEK_DATA/SEEK_HOLE agree with `qemu-img map`.
# Images come from qemu-img create/convert and qemu-io: v2 and v3, 512 B to 2 MiB clusters, zero
# clusters (plain and preallocated), zlib and zstd compression, extended L2 subclusters over a backing
# file, external data files, refcount widths 1 and 64, odd virtual sizes, chains of depth 1, 3 and 32.

load helpers

setup() { setup_tmp; cd "$TMP"; }
teardown() { teardown_tmp; }

SEEKMAP="$BATS_TEST_DIRNAME/seekmap.py"

# qio IMAGE CMD...: run qemu-io commands on a qcow2 image, quietly.
# rawio IMAGE CMD...: the same for a raw image.
rawio() {
  local img=$1; shift
  local args=() c
  for c in "$@"; do args+=(-c "$c"); done
  qemu-io -f raw "${args[@]}" "$img" >/dev/null
}

# map_extents KEY: reads a qemu-img style JSON map on stdin and prints the merged "start end" extents
# whose KEY (data, zero or present) is true.
map_extents() { json_extents start length "$1"; }

# qemu_extents IMAGE: data extents of the whole chain as qemu-img map sees them.
qemu_extents() {
  qemu-img map --output=json "$1" | map_extents data
}

# same_map IMAGE: `imgfuse map --json` and `qemu-img map --output=json` agree on data, zero and present.
same_map() {
  local key ours theirs
  for key in data zero present; do
    ours=$("$IMGFUSE" map --json "$1" | map_extents $key)
    theirs=$(qemu-img map --output=json "$1" | map_extents $key)
    if [ "$ours" != "$theirs" ]; then
      echo "imgfuse map and qemu-img map differ on '$key' for $1"; echo "imgfuse:"; echo "$ours"
      echo "qemu-img:"; echo "$theirs"
      return 1
    fi
  done
}

# check_mount IMAGE [imgfuse options...]: mount, compare size, bytes and data map with QEMU, unmount.
check_mount() {
  local img=$1; shift
  local oracle
  oracle=$(raw_of "$img")
  mount_img "$@" "$img" "$MNT"
  [ "$(stat -c %s "$MNT/disk.raw")" -eq "$(stat -c %s "$oracle")" ]
  same_bytes "$MNT/disk.raw" "$oracle"
  local ours theirs
  ours=$(python3 "$SEEKMAP" "$MNT/disk.raw")
  theirs=$(qemu_extents "$img")
  if [ "$ours" != "$theirs" ]; then
    echo "map differs for $img"; echo "imgfuse:"; echo "$ours"; echo "qemu-img:"; echo "$theirs"
    unmount_img; return 1
  fi
  unmount_img
  [ $# -gt 0 ] || same_map "$img"
}

# standard_writes IMAGE: a mix of full, partial-cluster, zero and discard writes over 5 MiB.
standard_writes() {
  qio "$1" 'write -P 0x11 0 7000' 'write -P 0x22 1M 1M' 'write -z 1536k 100k' 'discard 1900k 200k' \
    'write -P 0x33 4095k 1k' 'write -P 0x44 300 1' 'write -P 0x55 3M 4k'
}

# patch_be IMAGE OFFSET WIDTH VALUE: overwrite a big-endian field of WIDTH bytes (4 or 8).
patch_be() {
  python3 - "$@" <<'EOF'
import struct, sys
path, off, width, val = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4], 0)
with open(path, "r+b") as f:
    f.seek(off)
    f.write(struct.pack(">I" if width == 4 else ">Q", val))
EOF
}

# refused IMAGE PATTERN [options...]: mounting fails with exit 2, one line naming IMAGE and PATTERN.
refused() {
  local img=$1 pattern=$2; shift 2
  run "$IMGFUSE" --foreground "$@" "$img" "$MNT"
  echo "status $status: $output"
  [ "$status" -eq 2 ]
  [[ "$output" == *"imgfuse: "*"$img"*"$pattern"* ]]
  not_mounted "$MNT"
}

# ---------------------------------------------------------------- versions and cluster sizes

# matrix_case COMPAT CLUSTER_SIZE: the standard write mix on a fresh image, checked against QEMU.
matrix_case() {
  qemu-img create -q -f qcow2 -o compat=$1,cluster_size=$2 img.qcow2 5M
  standard_writes img.qcow2
  check_mount img.qcow2
}

@test "compat=0.10 (v2) with 512-byte clusters reads like qemu-img convert" { matrix_case 0.10 512; }
@test "compat=0.10 (v2) with 4 KiB clusters reads like qemu-img convert" { matrix_case 0.10 4096; }
@test "compat=0.10 (v2) with 64 KiB clusters reads like qemu-img convert" { matrix_case 0.10 65536; }
@test "compat=0.10 (v2) with 2 MiB clusters reads like qemu-img convert" { matrix_case 0.10 2M; }
@test "compat=1.1 (v3) with 512-byte clusters reads like qemu-img convert" { matrix_case 1.1 512; }
@test "compat=1.1 (v3) with 4 KiB clusters reads like qemu-img convert" { matrix_case 1.1 4096; }
@test "compat=1.1 (v3) with 64 KiB clusters reads like qemu-img convert" { matrix_case 1.1 65536; }
@test "compat=1.1 (v3) with 2 MiB clusters reads like qemu-img convert" { matrix_case 1.1 2M; }

@test "a virtual size that is not a multiple of the cluster size reads to the exact last byte" {
  qemu-img create -q -f qcow2 -o cluster_size=65536 odd.qcow2 1000001
  qio odd.qcow2 'write -P 0xee 999000 1001' 'write -P 0x01 0 512'
  check_mount odd.qcow2
}

@test "a 0-byte qcow2 image (v2 and v3) mounts with size 0" {
  qemu-img create -q -f qcow2 empty3.qcow2 0
  qemu-img create -q -f qcow2 -o compat=0.10 empty2.qcow2 0
  for img in empty3.qcow2 empty2.qcow2; do
    mount_img "$img" "$MNT"
    [ "$(stat -c %s "$MNT/disk.raw")" -eq 0 ]
    [ -z "$(python3 "$SEEKMAP" "$MNT/disk.raw")" ]
    unmount_img
  done
}

@test "parallel readers with different request sizes all see the same bytes (compressed and plain)" {
  qemu-img create -q -f raw src.raw 24M
  rawio src.raw 'write -P 0x12 0 8M' 'write -P 0x34 12M 4M'
  head -c 3000000 /dev/urandom | dd of=src.raw bs=1 seek=17000000 conv=notrunc status=none
  qemu-img convert -c -O qcow2 -o cluster_size=16k src.raw c.qcow2
  qemu-img create -q -f qcow2 -o cluster_size=4k -b c.qcow2 -F qcow2 top.qcow2
  qio top.qcow2 'write -P 0x56 1M 3M' 'write -z 13M 1M' 'write -P 0x78 20M 7k'
  oracle=$(raw_of top.qcow2)
  want=$(md5sum < "$oracle")
  mount_img --l2-cache-size 32k top.qcow2 "$MNT"
  pids=()
  for bs in 4k 8k 64k 128k 1M 3M; do
    (dd if="$MNT/disk.raw" bs=$bs iflag=direct 2>/dev/null | md5sum > "$TMP/md5.$bs") 3>&- &
    pids+=($!)
  done
  wait "${pids[@]}" # (a bare wait would also wait for the daemon)
  for bs in 4k 8k 64k 128k 1M 3M; do
    [ "$(cat "$TMP/md5.$bs")" = "$want" ] || { echo "reader with bs=$bs saw different bytes"; return 1; }
  done
  unmount_img
}

@test "refcount_bits=1 and refcount_bits=64 images read back identical" {
  for rb in 1 64; do
    qemu-img create -q -f qcow2 -o refcount_bits=$rb rb$rb.qcow2 3M
    qio rb$rb.qcow2 'write -P 9 0 1M' 'write -P 8 2M 5k'
    check_mount rb$rb.qcow2
  done
}

@test "a tiny --l2-cache-size over many L2 tables still reads byte-exact (eviction, compact tier)" {
  qemu-img create -q -f qcow2 -o cluster_size=4k many.qcow2 80M
  # 4 KiB clusters: one L2 table maps 2 MiB, so this touches 40 tables, some sequential, some scattered
  cmds=()
  for i in $(seq 0 39); do cmds+=("write -P $((i + 1)) $((i * 2))M 64k"); done
  for i in $(seq 39 -3 0); do cmds+=("write -P 0x$((i % 9 + 1))$((i % 7)) $((i * 2 + 1))M 12k"); done
  qio many.qcow2 "${cmds[@]}"
  check_mount many.qcow2 --l2-cache-size 64k
  check_mount many.qcow2 --l2-cache-size 1
}

@test "the default L2 cache maps a whole 1 TiB image (64 KiB clusters): no L2 table is read twice" {
  # preallocation=metadata: 2048 L2 tables (128 MiB) with sequential host offsets, no data written
  qemu-img create -q -f qcow2 -o preallocation=metadata,cluster_size=64k big.qcow2 1T
  mount_img big.qcow2 "$MNT"
  file_rd_bytes() {
    python3 -c 'import json,sys; print([n for n in json.load(open(sys.argv[1]))["nodes"] if n["role"] == "file"][0]["rd_bytes"])' \
      "$MNT/stats.json"
  }
  # touch_regions SKIP: one direct 4 KiB read in each 512 MiB region (one L2 table each)
  touch_regions() {
    python3 - "$MNT/disk.raw" "$1" <<'EOF'
import mmap, os, sys
fd = os.open(sys.argv[1], os.O_RDONLY | os.O_DIRECT)
buf = mmap.mmap(-1, 4096)
for i in range(2048):
    assert os.preadv(fd, [buf], i * 512 * 1024 * 1024 + int(sys.argv[2])) == 4096
    assert buf[:] == bytes(4096)
os.close(fd)
EOF
  }
  before=$(file_rd_bytes)
  touch_regions 4096
  first=$(( $(file_rd_bytes) - before ))
  before=$(file_rd_bytes)
  touch_regions 8192
  second=$(( $(file_rd_bytes) - before ))
  unmount_img
  echo "first pass read $first bytes of the file, second pass $second"
  # the first pass read every L2 table, the second only the 4 KiB data blocks (plus at most 16 tables)
  [ "$first" -ge $((2048 * 65536)) ]
  [ "$second" -ge $((2048 * 4096)) ]
  [ "$second" -le $((2048 * 4096 + 16 * 65536)) ]
}

@test "--cache=none --aio=native (O_DIRECT, batched host extents) reads every kind of cluster exactly" {
  qemu-img create -q -f raw base.raw 6M
  rawio base.raw 'write -P 0xb1 0 6M'
  qemu-img convert -c -O qcow2 -o cluster_size=4k base.raw mid.qcow2
  qemu-img create -q -f qcow2 -o extended_l2=on,cluster_size=32k -b mid.qcow2 -F qcow2 top.qcow2 7M
  qio top.qcow2 'write -P 0xc1 1k 3k' 'write -P 0xc2 33k 1k' 'write -z 70k 2k' 'write -P 0xc3 2M 300k' \
    'write -P 0xc4 6500k 7k' 'discard 3M 64k'
  check_mount top.qcow2 --cache=none --aio=native
}

# ---------------------------------------------------------------- zero clusters

@test "zero clusters without a host cluster read as zeros and are holes" {
  qemu-img create -q -f qcow2 z.qcow2 4M
  qio z.qcow2 'write -P 0x77 0 4M' 'write -z 1M 1M' 'write -z -u 3M 512k'
  check_mount z.qcow2
}

@test "zero clusters with a preallocated host cluster read as zeros, not as the stale data" {
  qemu-img create -q -f qcow2 -o preallocation=metadata zp.qcow2 4M
  qio zp.qcow2 'write -P 0x66 0 4M' 'write -z 64k 192k'
  qemu-img map --output=json zp.qcow2 | grep -q '"zero": true, "data": false, "offset"'
  check_mount zp.qcow2
}

@test "zero clusters over a backing file hide the backing data" {
  qemu-img create -q -f raw base.raw 2M
  rawio base.raw 'write -P 0xbb 0 2M'
  qemu-img create -q -f qcow2 -b base.raw -F raw top.qcow2
  qio top.qcow2 'write -z 64k 128k' 'write -P 1 1M 3k'
  check_mount top.qcow2
}

# ---------------------------------------------------------------- compression

make_source() {
  qemu-img create -q -f raw src.raw 6M
  rawio src.raw 'write -P 0x5a 0 1M' 'write -P 0x07 3M 1234567'
  head -c 500000 /dev/urandom | dd of=src.raw bs=1 seek=4500000 conv=notrunc status=none
}

@test "zlib-compressed clusters decompress to exactly the original bytes" {
  make_source
  qemu-img convert -c -O qcow2 src.raw c.qcow2
  qemu-img info c.qcow2 | grep -q 'compression type: zlib'
  check_mount c.qcow2
  same_bytes src.raw "$(raw_of c.qcow2)"
}

@test "zstd-compressed clusters decompress to exactly the original bytes" {
  make_source
  qemu-img convert -c -O qcow2 -o compression_type=zstd src.raw c.qcow2
  qemu-img info c.qcow2 | grep -q 'compression type: zstd'
  check_mount c.qcow2
}

@test "compressed clusters of 512 B and of 2 MiB both decompress correctly" {
  make_source
  qemu-img convert -c -O qcow2 -o cluster_size=512 src.raw small.qcow2
  qemu-img convert -c -O qcow2 -o cluster_size=2M,compression_type=zstd src.raw big.qcow2
  check_mount small.qcow2
  check_mount big.qcow2
}

@test "compressed clusters mixed with plain writes on top read back identical" {
  make_source
  qemu-img convert -c -O qcow2 src.raw mix.qcow2
  qio mix.qcow2 'write -P 0x99 100k 10k' 'write -z 3M 64k' 'discard 4M 64k'
  check_mount mix.qcow2
}

@test "a corrupt compressed cluster is an EIO for that range only, logged once" {
  qemu-img create -q -f raw src.raw 1M
  rawio src.raw 'write -P 0x41 0 1M'
  qemu-img convert -c -O qcow2 src.raw c.qcow2
  # the second cluster's compressed bytes: find its host offset from qemu-img map and garble them
  off=$(qemu-img map --output=json c.qcow2 | python3 -c '
import json, sys
for e in json.load(sys.stdin):
    if e["start"] <= 65536 < e["start"] + e["length"]:
        print(e.get("offset", -1))' )
  [ -n "$off" ]
  if [ "$off" -lt 0 ]; then
    # qemu-img map gives no offset for compressed clusters: read the L2 entry directly
    off=$(python3 - c.qcow2 <<'EOF'
import struct, sys
f = open(sys.argv[1], "rb"); h = f.read(72)
cb = struct.unpack(">I", h[20:24])[0]; l1off = struct.unpack(">Q", h[40:48])[0]
f.seek(l1off); l2 = struct.unpack(">Q", f.read(8))[0] & 0x00fffffffffffe00
f.seek(l2 + 8); e = struct.unpack(">Q", f.read(8))[0]
print(e & ((1 << (62 - (cb - 8))) - 1))
EOF
)
  fi
  printf '\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff' |
    dd of=c.qcow2 bs=1 seek="$off" conv=notrunc status=none
  mount_img c.qcow2
  # the first cluster still reads
  cmp -n 65536 "$MNT/disk.raw" src.raw
  # the second fails with EIO, twice, and the daemon logs it once
  run dd if="$MNT/disk.raw" of=/dev/null bs=64k skip=1 count=1 iflag=direct
  [ "$status" -ne 0 ]
  [[ "$output" == *"Input/output error"* ]]
  run dd if="$MNT/disk.raw" of=/dev/null bs=64k skip=1 count=1 iflag=direct
  [ "$status" -ne 0 ]
  # later clusters still read
  cmp -i 131072 -n 65536 "$MNT/disk.raw" src.raw
  unmount_img
  [ "$(grep -c 'cannot decompress' "$TMP/daemon.log")" -eq 1 ]
}

# ---------------------------------------------------------------- extended L2 entries

@test "extended L2: partly allocated subclusters fall through to the backing file one by one" {
  qemu-img create -q -f raw base.raw 4M
  rawio base.raw 'write -P 0xbb 0 4M'
  qemu-img create -q -f qcow2 -o extended_l2=on,cluster_size=64k -b base.raw -F raw ext.qcow2 5M
  qio ext.qcow2 'write -P 0xc1 4k 4k' 'write -P 0xc2 70k 2k' 'write -z 130k 8k' 'discard 200k 64k' \
    'write -P 0xc3 3M 10k' 'write -P 0xc4 4100k 6k'
  qemu-img info ext.qcow2 | grep -q 'extended l2: true'
  check_mount ext.qcow2
}

@test "extended L2 without a backing file: unallocated subclusters read as zeros" {
  qemu-img create -q -f qcow2 -o extended_l2=on,cluster_size=128k ext.qcow2 3M
  qio ext.qcow2 'write -P 0xd1 2k 2k' 'write -P 0xd2 300k 100k' 'write -z 310k 4k'
  check_mount ext.qcow2
}

# ---------------------------------------------------------------- external data files

@test "external data file with data_file_raw=on reads from the data file" {
  qemu-img create -q -f qcow2 -o data_file=img.data,data_file_raw=on img.qcow2 4M
  qio img.qcow2 'write -P 1 0 100k' 'write -z 1M 64k' 'write -P 2 3M 5k'
  check_mount img.qcow2
}

@test "external data file with data_file_raw=off reads from the data file" {
  qemu-img create -q -f qcow2 -o data_file=img.data,data_file_raw=off img.qcow2 4M
  qio img.qcow2 'write -P 2 64k 100k' 'write -P 3 2M 1k' 'discard 64k 64k'
  check_mount img.qcow2
}

@test "the external data file is found relative to the image, and --data-file overrides it" {
  mkdir sub
  # (QEMU 7.2 resolves the data file name against its working directory, so prepare it from sub/)
  (cd sub && qemu-img create -q -f qcow2 -o data_file=img.data img.qcow2 2M &&
    qio img.qcow2 'write -P 0x31 0 64k' && qemu-img convert -O raw img.qcow2 ../oracle.raw)
  oracle=$TMP/oracle.raw
  # opened from another directory: the name resolves next to the image
  cd /
  mount_img "$TMP/sub/img.qcow2"
  same_bytes "$MNT/disk.raw" "$oracle"
  unmount_img
  cd "$TMP"
  # a different data file given on the command line wins
  cp sub/img.data other.data
  rawio other.data 'write -P 0x32 0 64k'
  mount_img --data-file "$TMP/other.data" sub/img.qcow2 "$MNT"
  cmp -n 65536 "$MNT/disk.raw" other.data
  unmount_img
}

# ---------------------------------------------------------------- backing chains

@test "chain of depth 1: qcow2 over raw, with writes over backing data" {
  qemu-img create -q -f raw base.raw 3M
  rawio base.raw 'write -P 0x10 0 3M'
  qemu-img create -q -f qcow2 -b base.raw -F raw top.qcow2
  qio top.qcow2 'write -P 0x20 100k 5k' 'write -P 0x21 1M 64k' 'write -P 0x22 2047k 2k'
  check_mount top.qcow2
}

@test "chain of depth 3: qcow2 v3 over qcow2 v2 over raw, top larger than its backing" {
  qemu-img create -q -f raw c0.raw 3M
  rawio c0.raw 'write -P 1 0 3M'
  qemu-img create -q -f qcow2 -o compat=0.10 -b c0.raw -F raw c1.qcow2
  qio c1.qcow2 'write -P 2 64k 64k' 'write -P 3 2M 300'
  qemu-img create -q -f qcow2 -b c1.qcow2 -F qcow2 c2.qcow2 4M
  qio c2.qcow2 'write -P 4 100k 10k' 'write -z 1M 64k' 'write -P 5 3500k 100k'
  check_mount c2.qcow2
}

@test "chain of depth 32 mixing raw, qcow2 v2 and v3 layers" {
  qemu-img create -q -f raw l0.raw 1M
  rawio l0.raw 'write -P 1 0 1M'
  prev=l0.raw pf=raw
  for n in $(seq 1 31); do
    if [ $((n % 2)) -eq 0 ]; then c=1.1; else c=0.10; fi
    qemu-img create -q -f qcow2 -o compat=$c,cluster_size=4k -b $prev -F $pf l$n.qcow2
    qio l$n.qcow2 "write -P $((n + 16)) $((n * 8))k 3k"
    prev=l$n.qcow2 pf=qcow2
  done
  check_mount l31.qcow2
}

@test "backing name without backing_fmt: the backing format is probed, unknown extensions ignored" {
  qemu-img create -q -f qcow2 base.qcow2 2M
  qio base.qcow2 'write -P 0x61 0 1M'
  qemu-img create -q -f qcow2 -b base.qcow2 -F qcow2 top.qcow2
  qio top.qcow2 'write -P 0x62 512k 4k'
  # turn the backing format extension into an extension type nobody knows
  python3 - top.qcow2 <<'EOF'
import struct, sys
p = sys.argv[1]
d = bytearray(open(p, "rb").read(65536))
pos = struct.unpack(">I", d[100:104])[0]
while True:
    t, l = struct.unpack(">II", d[pos:pos + 8])
    if t == 0:
        raise SystemExit("no backing format extension")
    if t == 0xe2792aca:
        d[pos:pos + 4] = struct.pack(">I", 0x12345678)
        break
    pos += 8 + (l + 7) // 8 * 8
open(p, "r+b").write(bytes(d))
EOF
  ! qemu-img info top.qcow2 | grep -q 'backing file format' || false
  check_mount top.qcow2
}

@test "--no-backing shows only what the top layer holds" {
  qemu-img create -q -f raw base.raw 2M
  rawio base.raw 'write -P 0xab 0 2M'
  qemu-img create -q -f qcow2 -b base.raw -F raw top.qcow2
  qio top.qcow2 'write -P 0xcd 64k 64k'
  mount_img --no-backing top.qcow2 "$MNT"
  cmp -n 65536 "$MNT/disk.raw" /dev/zero
  cmp -i 65536:0 -n 65536 "$MNT/disk.raw" <(head -c 65536 /dev/zero | tr '\0' '\315')
  unmount_img
}

# ---------------------------------------------------------------- refusals

@test "refused: unknown incompatible feature bit, named from the feature name table" {
  qemu-img create -q -f qcow2 f.qcow2 1M
  # rename the table's entry for incompatible bit 4 to bit 9 "frobnication", then set bit 9
  python3 - f.qcow2 <<'EOF'
import struct, sys
p = sys.argv[1]
d = bytearray(open(p, "rb").read(65536))
hl = struct.unpack(">I", d[100:104])[0]
pos = hl
while True:
    t, l = struct.unpack(">II", d[pos:pos + 8])
    if t == 0:
        raise SystemExit("no feature table")
    if t == 0x6803f857:
        for e in range(pos + 8, pos + 8 + l, 48):
            if d[e] == 0 and d[e + 1] == 4:
                d[e + 1] = 9
                d[e + 2:e + 48] = b"frobnication".ljust(46, b"\0")
        break
    pos += 8 + (l + 7) // 8 * 8
inc = struct.unpack(">Q", d[72:80])[0] | (1 << 9)
d[72:80] = struct.pack(">Q", inc)
open(p, "r+b").write(bytes(d))
EOF
  refused f.qcow2 "frobnication"
}

@test "refused: unknown incompatible feature bit without a name" {
  qemu-img create -q -f qcow2 f.qcow2 1M
  patch_be f.qcow2 72 8 $((1 << 40))
  refused f.qcow2 "unknown incompatible feature bit 40"
}

@test "refused: AES-encrypted image without a key" {
  qemu-img create -q -f qcow2 e.qcow2 1M
  patch_be e.qcow2 32 4 1
  refused e.qcow2 "encrypted qcow2 image (AES): a key is needed (--key-file FILE or --passphrase-fd N)" </dev/null
}

@test "refused: LUKS-encrypted image (crypt_method 2) without its header extension" {
  # qemu-img's LUKS key-slot timing is unreliable on a loaded machine, so mark a plain image as LUKS
  qemu-img create -q -f qcow2 e.qcow2 1M
  patch_be e.qcow2 32 4 2
  refused e.qcow2 "LUKS encrypted qcow2 image without its encryption header extension"
}

@test "the corrupt bit: read-only mount works with a warning, a writable mount is refused" {
  qemu-img create -q -f qcow2 c.qcow2 1M
  qio c.qcow2 'write -P 0x42 0 64k'
  patch_be c.qcow2 72 8 2
  mount_img c.qcow2
  cmp -n 65536 "$MNT/disk.raw" <(head -c 65536 /dev/zero | tr '\0' 'B')
  unmount_img
  grep -q "marked corrupt" "$TMP/daemon.log"
  refused c.qcow2 "corrupt" --rw
}

@test "refused: cluster_bits out of range (8 and 22)" {
  qemu-img create -q -f qcow2 b.qcow2 1M
  patch_be b.qcow2 20 4 8
  refused b.qcow2 "cluster_bits 8"
  patch_be b.qcow2 20 4 22
  refused b.qcow2 "cluster_bits 22"
}

@test "refused: an L1 table larger than the memory budget" {
  qemu-img create -q -f qcow2 l.qcow2 1M
  patch_be l.qcow2 36 4 $((64 * 1024 * 1024))
  refused l.qcow2 "L1 table is too large"
}

@test "refused: an L1 table too small for the virtual size, or beyond the end of the file" {
  qemu-img create -q -f qcow2 l.qcow2 1M
  patch_be l.qcow2 24 8 $((1 << 40))
  refused l.qcow2 "L1 table too small"
  qemu-img create -q -f qcow2 m.qcow2 1M
  patch_be m.qcow2 40 8 $((1 << 30))
  refused m.qcow2 "beyond the end of the file"
}

@test "refused: refcount_order above 6" {
  qemu-img create -q -f qcow2 r.qcow2 1M
  patch_be r.qcow2 96 4 7
  refused r.qcow2 "refcount_order 7"
}

@test "refused: header fields out of range (header_length, virtual size, compression type)" {
  qemu-img create -q -f qcow2 h.qcow2 1M
  patch_be h.qcow2 100 4 100
  refused h.qcow2 "header_length"
  qemu-img create -q -f qcow2 s.qcow2 1M
  patch_be s.qcow2 24 8 $((0x7fffffffffffffff))
  refused s.qcow2 "virtual size"
  qemu-img create -q -f qcow2 -o compression_type=zstd z.qcow2 1M
  patch_be z.qcow2 72 8 0
  refused z.qcow2 "compression type"
}

@test "refused: external data file missing, or not a regular file" {
  qemu-img create -q -f qcow2 -o data_file=d.data d.qcow2 1M
  rm d.data
  refused d.qcow2 "d.data"
  mkdir d.data
  refused d.qcow2 "not a regular file"
  refused d.qcow2 "not a regular file" --data-file /dev/null
}

@test "refused: external data file bit set but no data file named and none given" {
  qemu-img create -q -f qcow2 n.qcow2 1M
  patch_be n.qcow2 72 8 4
  refused n.qcow2 "--data-file"
}

# ---------------------------------------------------------------- info

@test "info shows cluster size, compat, features, compression, refcount bits and extended L2" {
  qemu-img create -q -f qcow2 -o cluster_size=16k,extended_l2=on,refcount_bits=64,lazy_refcounts=on,compression_type=zstd i.qcow2 1M
  run "$IMGFUSE" info i.qcow2
  [ "$status" -eq 0 ]
  echo "$output"
  [[ "$output" == *"cluster_size: 16384"* ]]
  [[ "$output" == *"compat: 1.1"* ]]
  [[ "$output" == *"extended L2 entries"* ]]
  [[ "$output" == *"lazy refcounts"* ]]
  [[ "$output" == *"compression_type: zstd"* ]]
  [[ "$output" == *"refcount_bits: 64"* ]]
  [[ "$output" == *"extended_l2: yes"* ]]
  qemu-img create -q -f qcow2 -o compat=0.10 old.qcow2 1M
  run "$IMGFUSE" info old.qcow2
  [[ "$output" == *"compat: 0.10"* ]]
}

@test "info shows backing name and format, snapshots, data file and the bitmaps extension" {
  qemu-img create -q -f raw base.raw 1M
  qemu-img create -q -f qcow2 -b base.raw -F raw top.qcow2
  qemu-img snapshot -c s1 top.qcow2
  qemu-img snapshot -c s2 top.qcow2
  qemu-img bitmap --add top.qcow2 b0
  run "$IMGFUSE" info top.qcow2
  [ "$status" -eq 0 ]
  echo "$output"
  [[ "$output" == *"backing_file: base.raw"* ]]
  [[ "$output" == *"backing_format: raw"* ]]
  [[ "$output" == *"snapshots: 2"* ]]
  [[ "$output" == *"bitmaps_extension: yes"* ]]
  qemu-img create -q -f qcow2 -o data_file=x.data d.qcow2 1M
  run "$IMGFUSE" info d.qcow2
  [[ "$output" == *"data_file: "*"x.data"* ]]
}

@test "a dirty image (lazy refcounts, not closed cleanly) reads fine and info says dirty" {
  qemu-img create -q -f qcow2 -o lazy_refcounts=on d.qcow2 2M
  qemu-io -f qcow2 -c 'write -P 0x5d 0 1M' -c 'abort' d.qcow2 >/dev/null 2>&1 || true
  python3 -c 'import struct,sys; d=open(sys.argv[1],"rb").read(80); sys.exit(0 if struct.unpack(">Q",d[72:80])[0] & 1 else 1)' d.qcow2
  run "$IMGFUSE" info d.qcow2
  echo "$output"
  [[ "$output" == *"dirty: yes"* ]]
  check_mount d.qcow2
}
