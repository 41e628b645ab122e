#!/usr/bin/env bats
# SPDX-License-Identifier: MIT
# partitions.bats - partitions as files (issue 21, lib/partitions.c over libblkid): an MBR made by sfdisk
# with an extended partition and two logical ones, and a GPT made by sgdisk, as raw and inside qcow2:
# every MNT/partitions/pN.raw equals dd of the range `sfdisk -J` gives, The Sleuth Kit's mmls agrees with
# `info`, --partition N mounts one partition alone (exit 2 and one line when there is none), an ext4 made
# in a pN.raw of a --rw mount is read by fsstat/fls and clean for e2fsck, writes stop at the partition's
# end, and hostile tables (an EBR loop, partitions past the end, 2^32 GPT entries) stay bounded.

load helpers

setup() { setup_tmp; cd "$TMP"; }
teardown() { teardown_tmp; }

# mbr_disk FILE: 64 MiB raw, MBR: p1, p2 extended holding p5 and p6, p3; data in each.
mbr_disk() {
  truncate -s 64M "$1"
  printf 'label: dos\nstart=2048, size=20480, type=83\nstart=22528, size=40960, type=5\nstart=63488, type=83\nstart=24576, size=8192, type=83\nstart=34816, size=16384, type=82\n' |
    sfdisk -q "$1"
  local s
  for s in 2100 25000 35000 70000 130000; do
    head -c 4096 /dev/urandom | dd of="$1" bs=512 seek=$s conv=notrunc status=none
  done
}

# gpt_disk FILE: 64 MiB raw, GPT with three named partitions; data in each.
gpt_disk() {
  truncate -s 64M "$1"
  sgdisk -n 1:2048:+10M -t 1:8300 -c 1:root -n 2:0:+20M -t 2:8200 -c 2:swap -n 3:0:0 -t 3:0700 -c 3:data "$1" >/dev/null
  local s
  for s in 2100 30000 90000; do
    head -c 4096 /dev/urandom | dd of="$1" bs=512 seek=$s conv=notrunc status=none
  done
}

# parts_equal_sfdisk RAW MNT: every partition sfdisk -J lists in RAW is MNT/partitions/pN.raw, byte for
# byte, and there is no other file.
parts_equal_sfdisk() {
  local raw=$1 mnt=$2 n start size count=0
  while read -r n start size; do
    [ "$(stat -c %s "$mnt/partitions/p$n.raw")" -eq $((size * 512)) ]
    cmp "$mnt/partitions/p$n.raw" <(dd if="$raw" bs=512 skip="$start" count="$size" status=none)
    count=$((count + 1))
  done < <(sfdisk -J "$raw" | python3 -c '
import json, re, sys
for p in json.load(sys.stdin)["partitiontable"]["partitions"]:
    print(re.search(r"(\d+)$", p["node"]).group(1), p["start"], p["size"])')
  [ "$count" -ge 3 ]
  [ "$(ls "$mnt/partitions" | wc -l)" -eq "$count" ]
}

@test "MBR with an extended and two logical partitions: p1 p2 p3 p5 p6 equal dd of sfdisk's ranges, raw and qcow2" {
  mbr_disk d.raw
  mount_img d.raw "$MNT"
  [ "$(ls "$MNT/partitions" | tr '\n' ' ')" = "p1.raw p2.raw p3.raw p5.raw p6.raw " ]
  parts_equal_sfdisk d.raw "$MNT"
  [ "$(stat -c %a "$MNT/partitions/p5.raw")" = 444 ]
  unmount_img
  qemu-img convert -O qcow2 d.raw d.qcow2
  mount_img d.qcow2 "$MNT"
  parts_equal_sfdisk d.raw "$MNT"
}

@test "GPT made by sgdisk: pN.raw equal dd of sfdisk's ranges, raw and qcow2; names and UUIDs in info and info.json" {
  gpt_disk g.raw
  qemu-img convert -O qcow2 g.raw g.qcow2
  for img in g.raw g.qcow2; do
    mount_img "$img" "$MNT"
    parts_equal_sfdisk g.raw "$MNT"
    uuid=$(sgdisk -i 2 g.raw | sed -n 's/^Partition unique GUID: //p')
    grep -qi "^  p2: start $((22528 * 512)), size $((40960 * 512)), type 0657fd6d-a4ab-43c4-84e5-0933c84b4f4f, uuid $uuid, name swap$" "$MNT/info"
    python3 - "$MNT/info.json" "$uuid" <<'EOF'
import json, sys
t = json.load(open(sys.argv[1]))["imgfuse"]["partitions"]
assert t["label"] == "gpt", t
assert [p["name"] for p in t["list"]] == ["root", "swap", "data"], t
assert t["list"][1]["uuid"].lower() == sys.argv[2].lower(), t
EOF
    unmount_img
  done
}

# mmls_rows RAW: "start length" in sectors of every partition mmls lists: its slot column is "T:N" for
# MBR, "N" for GPT (Meta rows, the extended containers among them, and Unallocated rows are not partitions).
mmls_rows() {
  mmls "$1" | awk '$2 ~ /^[0-9]+(:[0-9]+)?$/ { print $3 + 0, $5 + 0 }' | sort -n
}

# info_rows IMAGE: "start length" in sectors of every partition `imgfuse info` lists, extended ones aside.
info_rows() {
  "$IMGFUSE" info "$1" | awk '/^  p[0-9]+: / && !/extended/ { gsub(",", ""); print $3 / 512, $5 / 512 }' | sort -n
}

@test "The Sleuth Kit's mmls agrees with info (MBR with logical partitions, GPT; raw and qcow2)" {
  mbr_disk d.raw
  gpt_disk g.raw
  qemu-img convert -O qcow2 d.raw d.qcow2
  qemu-img convert -O qcow2 g.raw g.qcow2
  for pair in d.raw:d.raw d.qcow2:d.raw g.raw:g.raw g.qcow2:g.raw; do
    img=${pair%%:*} raw=${pair##*:}
    diff <(mmls_rows "$raw") <(info_rows "$img")
  done
  [ "$(mmls_rows d.raw | wc -l)" -eq 4 ]      # p1, p3, p5, p6
  [ "$(mmls_rows g.raw | wc -l)" -eq 3 ]
  "$IMGFUSE" info d.qcow2 | grep -qx '  p5: start 12582912, size 4194304, type 0x83, uuid .*-05 (logical)'
}

@test "--partition N mounts partition N alone (also -o partition=N); no partition N: exit 2 and one line" {
  mbr_disk d.raw
  qemu-img convert -O qcow2 d.raw d.qcow2
  mount_img --partition 6 d.qcow2 "$MNT"
  cmp "$MNT/disk.raw" <(dd if=d.raw bs=512 skip=34816 count=16384 status=none)
  grep -q "^window: offset $((34816 * 512)), size $((16384 * 512)) " "$MNT/info"
  unmount_img
  mount_img -o partition=1 d.qcow2 "$MNT"
  cmp "$MNT/disk.raw" <(dd if=d.raw bs=512 skip=2048 count=20480 status=none)
  unmount_img
  run "$IMGFUSE" --partition 4 d.qcow2 "$MNT"
  [ "$status" -eq 2 ]
  [ "$output" = "imgfuse: d.qcow2: no partition 4 (partitions: 1, 2, 3, 5, 6)" ]
  qemu-img create -q -f qcow2 empty.qcow2 16M
  run "$IMGFUSE" --partition 1 empty.qcow2 "$MNT"
  [ "$status" -eq 2 ]
  [ "$output" = "imgfuse: empty.qcow2: no partition 1 (the disk has no partition table)" ]
  run "$IMGFUSE" --partition 1 --offset 1M d.qcow2 "$MNT"
  [ "$status" -eq 2 ]
  [ "$output" = "imgfuse: --partition: cannot be combined with --offset/--size" ]
  nothing_mounted
}

@test "ext4 made in partitions/p5.raw of a --rw mount: fsstat and fls read it, e2fsck clean; writes stop at its end" {
  mbr_disk d.raw
  qemu-img convert -O qcow2 d.raw d.qcow2
  qemu-img convert -O raw d.qcow2 before.raw
  mount_img --rw d.qcow2 "$MNT"
  [ "$(stat -c %a "$MNT/partitions/p5.raw")" = 644 ]
  mkfs.ext4 -q -F -E root_owner=0:0 -L inpart "$MNT/partitions/p5.raw"
  echo hello > hello.txt
  e2cp() { debugfs -w -R "write hello.txt hello.txt" "$MNT/partitions/p5.raw" >/dev/null 2>&1; }
  e2cp
  fsstat "$MNT/partitions/p5.raw" | grep -q 'Volume Name: inpart'
  fls "$MNT/partitions/p5.raw" | grep -q 'hello.txt'
  run dd if=/dev/zero of="$MNT/partitions/p5.raw" bs=4096 seek=1023 count=2 conv=notrunc,fsync status=none
  [ "$status" -ne 0 ]
  [[ "$output" == *"No space left on device"* ]]
  unmount_img
  qemu-img check -q d.qcow2
  qemu-img convert -O raw d.qcow2 after.raw
  dd if=after.raw of=p5.img bs=512 skip=24576 count=8192 status=none
  e2fsck -fn p5.img
  fsstat p5.img | grep -q 'Volume Name: inpart'
  fls p5.img | grep -q 'hello.txt'
  # nothing outside p5 changed (the failed dd wrote nothing past its end either)
  cmp <(head -c $((24576 * 512)) before.raw) <(head -c $((24576 * 512)) after.raw)
  cmp <(tail -c +$((32768 * 512 + 1)) before.raw) <(tail -c +$((32768 * 512 + 1)) after.raw)
}

# hostile_mbr FILE KIND: a 16 MiB raw disk whose MBR (and EBRs) python writes: "loop" (an EBR chain that
# comes back to its first EBR), "past-end" (one partition past the disk's end, one across it).
hostile_mbr() {
  python3 - "$1" "$2" <<'EOF'
import struct, sys
path, kind = sys.argv[1], sys.argv[2]
disk = bytearray(16 << 20)
disk[440:444] = b"\x5a\x17\xfe\xed"
def entry(boot_type, start, size):
    return struct.pack("<B3sB3sII", 0, b"\0\0\0", boot_type, b"\0\0\0", start, size)
def table(at, entries):
    for i, e in enumerate(entries):
        disk[at + 446 + 16 * i: at + 446 + 16 * (i + 1)] = e
    disk[at + 510: at + 512] = b"\x55\xaa"
if kind == "loop":
    table(0, [entry(0x83, 2048, 2048), entry(0x05, 8192, 16384)])
    # EBR 1 at 8192: logical at +2048, next EBR at +4096; EBR 2 at 12288: logical, next EBR back at +0
    table(8192 * 512, [entry(0x83, 2048, 1024), entry(0x05, 4096, 4096)])
    table(12288 * 512, [entry(0x83, 2048, 1024), entry(0x05, 0 + 1, 4096)])
    table((8192 + 1) * 512, [entry(0x83, 2048, 1024), entry(0x05, 4096, 4096)])
else:
    table(0, [entry(0x83, 2048, 2048), entry(0x83, 30000, 8192), entry(0x83, 1 << 30, 2048)])
open(path, "wb").write(disk)
EOF
}

# hostile_gpt FILE: a 1 TiB sparse raw disk with a protective MBR and a GPT header whose CRC is right and
# whose entry count is 2^32 - 1 (512 GiB of entries).
hostile_gpt() {
  truncate -s 1T "$1"
  python3 - "$1" <<'EOF'
import struct, sys, zlib, uuid
path = sys.argv[1]
last = (1 << 40) // 512 - 1
mbr = bytearray(512)
mbr[446:462] = struct.pack("<B3sB3sII", 0, b"\0\2\0", 0xEE, b"\xff\xff\xff", 1, 0xFFFFFFFF)
mbr[510:512] = b"\x55\xaa"
def header(my, alt, entries_lba):
    h = bytearray(struct.pack("<8sIIIIQQQQ16sQIII", b"EFI PART", 0x10000, 92, 0, 0, my, alt, 34, last - 34,
                              uuid.uuid4().bytes, entries_lba, 0xFFFFFFFF, 128, 0))
    h[16:20] = struct.pack("<I", zlib.crc32(bytes(h)) & 0xFFFFFFFF)
    return bytes(h) + bytes(512 - len(h))
with open(path, "r+b") as f:
    f.write(mbr)
    f.write(header(1, last, 2))
    f.seek(last * 512)
    f.write(header(last, 1, last - 33))
EOF
}

@test "hostile tables: an EBR loop, partitions past the end, 2^32 GPT entries: bounded, no crash or hang" {
  local limit=() max_kib=65536
  if [ -n "${IMGFUSE_ASAN:-}" ]; then max_kib=$((256 << 10)); else limit=(prlimit --as=$((1 << 30)) --); fi
  hostile_mbr loop.raw loop
  run timeout 20 "${limit[@]}" "$IMGFUSE" info loop.raw
  [ "$status" -eq 0 ]
  [ "$(grep -c '^  p[0-9]*: ' <<<"$output")" -le 130 ]
  grep -q '^  p5: start 5242880, size 524288, type 0x83' <<<"$output"
  mount_img loop.raw "$MNT"
  for f in "$MNT"/partitions/*; do cat "$f" >/dev/null; done
  unmount_img
  hostile_mbr past.raw past-end
  run timeout 20 "$IMGFUSE" info past.raw
  [ "$status" -eq 0 ]
  grep -qx '  p2: start 15360000, size 4194304, type 0x83, uuid .*-02 (clipped at the end of the disk)' <<<"$output"
  grep -qx '  p3: start 549755813888, size 1048576, type 0x83, uuid .*-03 (past the end of the disk: no file)' <<<"$output"
  mount_img past.raw "$MNT"
  [ "$(ls "$MNT/partitions" | tr '\n' ' ')" = "p1.raw p2.raw " ]
  [ "$(stat -c %s "$MNT/partitions/p2.raw")" -eq $((16777216 - 15360000)) ]
  cmp "$MNT/partitions/p2.raw" <(tail -c +15360001 past.raw)
  unmount_img
  hostile_gpt gpt.raw
  qemu-img convert -O qcow2 gpt.raw gpt.qcow2
  for img in gpt.raw gpt.qcow2; do
    /usr/bin/time -f '%e %M' -o t.txt timeout 30 "${limit[@]}" "$IMGFUSE" info "$img" > out.txt
    read -r secs kib < t.txt
    echo "$img: $secs s, $kib KiB" >&3
    [ "$kib" -lt "$max_kib" ]
    ! grep -q '^  p[0-9]' out.txt || false
    mount_img "$img" "$MNT"
    [ ! -e "$MNT/partitions" ] || [ "$(ls "$MNT/partitions" | wc -l)" -eq 0 ]
    unmount_img
  done
}
