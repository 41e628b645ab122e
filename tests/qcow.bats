#!/usr/bin/env bats
# SPDX-License-Identifier: MIT
# qcow.bats - the qcow (version 1) driver on real mounts. Images made by qemu-img create -f qcow and
# qemu-io writes at unaligned offsets, compressed images (qemu-img convert -c -O qcow), qcow, qcow2 and
# raw backing files read byte for byte like `qemu-img convert -O raw` with the same data map; AES
# images and damaged headers are refused with one line; writes through --rw mounts (in place, into new
# clusters over a backing file, into compressed clusters, fio with 4 jobs and verification) read back
# through qemu-img as the mount showed them; `imgfuse create -f qcow` makes images qemu-img reads.

load helpers

setup() { setup_tmp; cd "$TMP"; }
teardown() { teardown_tmp; }

# check_mount IMAGE [options]: size, bytes and SEEK_DATA map of disk.raw equal QEMU's view.
check_mount() { mount_equals_qemu qcow "$@"; }

# patch_be FILE OFFSET WIDTH VALUE: overwrites a big-endian field of WIDTH bytes (1, 4 or 8) in place.
patch_be() {
  python3 - "$@" <<'EOF'
import struct, sys
path, off, width, val = sys.argv[1], int(sys.argv[2], 0), int(sys.argv[3]), int(sys.argv[4], 0)
with open(path, "r+b") as f:
    f.seek(off)
    f.write(struct.pack({1: ">B", 4: ">I", 8: ">Q"}[width], val))
EOF
}

# compressed_entries IMAGE: how many L2 entries of IMAGE have bit 63 (compressed) set.
compressed_entries() {
  python3 - "$1" <<'EOF'
import struct, sys
d = open(sys.argv[1], "rb").read()
size, cb, l2b, l1 = struct.unpack(">Q", d[24:32])[0], d[32], d[33], struct.unpack(">Q", d[40:48])[0]
n = 0
for i in range((size + (1 << (cb + l2b)) - 1) >> (cb + l2b)):
    l2 = struct.unpack(">Q", d[l1 + 8 * i:l1 + 8 * i + 8])[0]
    if l2:
        n += sum(1 for e in struct.unpack(">%dQ" % (1 << l2b), d[l2:l2 + (8 << l2b)]) if e >> 63)
print(n)
EOF
}

# ---------------------------------------------------------------- reads

@test "qemu-img made qcow images with unaligned qemu-io writes read like qemu-img convert, same map" {
  qemu-img create -q -f qcow a.qcow 5000000
  fmt_io qcow a.qcow 'write -P 0x11 1234 70000' 'write -P 0x22 3000001 5000' 'write -P 0x33 4999000 1000'
  check_mount a.qcow
  check_mount a.qcow -f qcow
  qemu-img create -q -f qcow empty.qcow 1G
  check_mount empty.qcow
}

@test "a compressed qcow image (qemu-img convert -c) reads like qemu-img convert" {
  truncate -s 4M src.raw
  qemu-io -f raw -c 'write -P 0x11 1234 70000' -c 'write -P 0x22 3000001 5000' src.raw >/dev/null
  # qemu-img 7.2 exits 1 after writing a compressed qcow (its final empty compressed write); the
  # image is complete, which the checks below show
  qemu-img convert -c -O qcow src.raw c.qcow || true
  [ "$(compressed_entries c.qcow)" -ge 18 ]
  qemu-img convert -f qcow -O raw c.qcow via-qemu.raw
  same_bytes via-qemu.raw src.raw
  check_mount c.qcow
}

@test "qcow over a qcow, a qcow2 and a raw backing file reads like qemu-img convert" {
  truncate -s 3M base.raw
  qemu-io -f raw -c 'write -P 0x41 0 3M' base.raw >/dev/null
  qemu-img convert -O qcow2 base.raw base.qcow2
  qemu-img convert -O qcow base.raw base.qcow
  local b f
  for b in base.raw:raw base.qcow2:qcow2 base.qcow:qcow; do
    f=${b#*:}; b=${b%:*}
    qemu-img create -q -f qcow -b "$b" -F "$f" "top-$f.qcow"
    fmt_io qcow "top-$f.qcow" 'write -P 0x55 1000 3000' 'write -P 0x66 1048577 70000'
    check_mount "top-$f.qcow"
  done
  "$IMGFUSE" info top-qcow2.qcow > info.txt
  grep -q '^  backing_file: base.qcow2$' info.txt
  grep -q '^  cluster_size: 512$' info.txt
}

@test "imgfuse map agrees with qemu-img map's data extents" {
  qemu-img create -q -f qcow m.qcow 8M
  fmt_io qcow m.qcow 'write -P 1 4k 4k' 'write -P 2 1M 100k' 'write -P 3 7M 1'
  "$IMGFUSE" map --output=json m.qcow > ours.json
  qemu-img map --output=json m.qcow > theirs.json
  "$BATS_TEST_DIRNAME/tools/json-agree" --exact theirs.json ours.json
}

# ---------------------------------------------------------------- refusals

@test "AES-encrypted qcow images without a key are refused with one line saying a key is needed" {
  qemu-img create -q -f qcow --object secret,id=s0,data=pw -o encrypt.format=aes,encrypt.key-secret=s0 e.qcow 1M
  refused_open e.qcow "encrypted qcow image (AES): a key is needed (--key-file FILE or --passphrase-fd N)" </dev/null
  refused_open e.qcow "encrypted qcow image (AES): a key is needed (--key-file FILE or --passphrase-fd N)" -f qcow </dev/null
}

@test "damaged qcow headers are refused with one line naming the file and the reason" {
  qemu-img create -q -f qcow good.qcow 4M
  fmt_io qcow good.qcow 'write -P 1 0 64k'
  cp good.qcow cb.qcow && patch_be cb.qcow 32 1 17
  refused_open cb.qcow "cluster_bits 17 is out of range (9 to 16)"
  cp good.qcow l2.qcow && patch_be l2.qcow 33 1 14
  refused_open l2.qcow "l2_bits 14 is out of range (6 to 13)"
  cp good.qcow l1.qcow && patch_be l1.qcow 40 8 0x10000000
  refused_open l1.qcow "L1 table (offset 0x10000000, 2 entries) is unaligned, in the header or past the end of the file"
  cp good.qcow big.qcow && patch_be big.qcow 24 8 0x10000000000000
  refused_open big.qcow "L1 table is too large: 2147483648 entries, more than the 32 MiB limit"
  cp good.qcow bf.qcow && patch_be bf.qcow 8 8 0x100000 && patch_be bf.qcow 16 4 10
  refused_open bf.qcow "backing file name (offset 0x100000, 10 bytes) lies outside the file"
  cp good.qcow cm.qcow && patch_be cm.qcow 36 4 2
  refused_open cm.qcow "unknown encryption method 2"
}

@test "an L2 entry past the end of the file fails only its own cluster" {
  qemu-img create -q -f qcow d.qcow 1M
  fmt_io qcow d.qcow 'write -P 7 0 8k'
  local l2
  l2=$(python3 -c "import struct; d=open('d.qcow','rb').read(); print(struct.unpack('>Q', d[48:56])[0])")
  patch_be d.qcow $((l2 + 8)) 8 0x7000000
  mount_img d.qcow "$MNT"
  cmp -n 4096 "$MNT/disk.raw" <(python3 -c "import sys; sys.stdout.buffer.write(b'\x07' * 4096)")
  run dd if="$MNT/disk.raw" bs=4096 skip=1 count=1 of=/dev/null status=none
  [ "$status" -ne 0 ]
  [[ "$output" == *"Input/output error"* ]]
}

# ---------------------------------------------------------------- writes and create

@test "imgfuse create -f qcow makes images qemu-img reads as qcow of that size, with and without a backing file" {
  "$IMGFUSE" create -f qcow n.qcow 100M
  qemu-img info --output=json n.qcow > n.json
  python3 -c 'import json; j = json.load(open("n.json")); assert j["format"] == "qcow" and j["virtual-size"] == 100 << 20 and j["cluster-size"] == 4096, j'
  qemu-img create -q -f qcow2 b.qcow2 3M
  "$IMGFUSE" create -f qcow -b b.qcow2 -F qcow2 t.qcow
  qemu-img info --output=json t.qcow > t.json
  python3 -c 'import json; j = json.load(open("t.json")); assert j["format"] == "qcow" and j["virtual-size"] == 3 << 20 and j["backing-filename"] == "b.qcow2" and j["cluster-size"] == 512, j'
  "$IMGFUSE" create -f qcow -o backing_file=b.qcow2,backing_fmt=qcow2 o.qcow 1M
  [ "$(qemu-img info --output=json o.qcow | python3 -c 'import json, sys; print(json.load(sys.stdin)["backing-filename"])')" = b.qcow2 ]
  run "$IMGFUSE" create -f qcow -o cluster_size=64k x.qcow 1M
  [ "$status" -eq 2 ]
  [ "$output" = "imgfuse: x.qcow: unknown qcow creation option 'cluster_size'" ]
  "$IMGFUSE" create -f qcow -o help | grep -q backing_fmt
}

@test "--rw writes: in place, into new clusters over a backing file and into compressed clusters, read back by qemu-img" {
  truncate -s 2M base.raw
  qemu-io -f raw -c 'write -P 0x41 0 2M' base.raw >/dev/null
  local bsum; bsum=$(sha256sum base.raw)
  qemu-img create -q -f qcow -b base.raw -F raw t.qcow
  fmt_io qcow t.qcow 'write -P 0x55 4096 8192'
  truncate -s 1M src.raw
  qemu-io -f raw -c 'write -P 0x66 0 1M' src.raw >/dev/null
  qemu-img convert -c -O qcow src.raw c.qcow || true
  [ "$(compressed_entries c.qcow)" -eq 256 ]
  local img
  for img in t.qcow c.qcow; do
    qemu-img convert -f qcow -O raw "$img" expect.raw
    mount_img --rw "$img" "$MNT"
    write_both expect.raw "100 10 0x01" "4000 200 0x02" "8191 2 0x03" "70000 5000 0x04" "1048000 500 0x05"
    cp "$MNT/disk.raw" shown.raw
    unmount_img
    same_bytes shown.raw expect.raw
    qemu-img convert -f qcow -O raw "$img" after.raw
    same_bytes after.raw expect.raw
  done
  [ "$(sha256sum base.raw)" = "$bsum" ]
  # the 6 compressed clusters written into (0, 1, 2, 17, 18, 255) were rewritten as plain clusters
  [ "$(compressed_entries c.qcow)" -eq 250 ]
}

@test "--rw fio with 4 jobs and crc32c verification on a created image; qemu-img convert equals what the mount showed" {
  "$IMGFUSE" create -f qcow f.qcow 128M
  mount_img --rw f.qcow "$MNT"
  fio --name=v --filename="$MNT/disk.raw" --rw=randwrite --bs=4k --size=32M --numjobs=4 --offset_increment=32M \
    --verify=crc32c --direct=1 --ioengine=psync --verify_fatal=1 --randseed=7 --group_reporting > fio.log 2>&1 || { cat fio.log; return 1; }
  cp "$MNT/disk.raw" shown.raw
  unmount_img
  qemu-img convert -f qcow -O raw f.qcow after.raw
  same_bytes after.raw shown.raw
  # and over a backing file, with unaligned block sizes
  qemu-img create -q -f qcow2 b.qcow2 32M
  qemu-io -f qcow2 -c 'write -P 0x5c 0 32M' b.qcow2 >/dev/null
  "$IMGFUSE" create -f qcow -b b.qcow2 -F qcow2 t.qcow
  mount_img --rw t.qcow "$MNT"
  fio --name=w --filename="$MNT/disk.raw" --rw=randrw --bsrange=512-64k --verify=crc32c --numjobs=4 \
    --size=8M --offset_increment=8M --ioengine=psync --randseed=7 --verify_fatal=1 --group_reporting > fio.log 2>&1 || { cat fio.log; return 1; }
  cp "$MNT/disk.raw" shown2.raw
  unmount_img
  qemu-img convert -f qcow -O raw t.qcow after2.raw
  same_bytes after2.raw shown2.raw
}
