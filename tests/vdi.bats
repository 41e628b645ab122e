#!/usr/bin/env bats
# SPDX-License-Identifier: MIT
# vdi.bats - the VirtualBox VDI driver: dynamic and static images made by qemu-img and qemu-io read back
# byte for byte like `qemu-img convert -O raw`, with SEEK_DATA/SEEK_HOLE and `imgfuse map` agreeing with
# `qemu-img map`; writes through --rw mounts (in place, into new blocks, concurrent, punched holes) leave
# images `qemu-img check` finds clean and that QEMU reads as expected; broken headers are refused with
# one line naming the file and the reason.

load helpers

setup() { setup_tmp; cd "$TMP"; }
teardown() { teardown_tmp; }

SEEKMAP="$BATS_TEST_DIRNAME/seekmap.py"
MiB=1048576

# extents KEY: merged "start end" extents whose KEY is true, from a qemu-img style JSON map on stdin.
extents() {
  python3 -c '
import json, sys
ext = []
for e in json.load(sys.stdin):
    if not e[sys.argv[1]]:
        continue
    s, t = e["start"], e["start"] + e["length"]
    if ext and ext[-1][1] == s:
        ext[-1][1] = t
    else:
        ext.append([s, t])
for s, t in ext:
    print(s, t)' "$1"
}

# check_mount IMAGE [options]: size, bytes and the SEEK_DATA map of the mount agree with QEMU, and so do
# the data and zero extents of `imgfuse map` (data only for static images: QEMU also reports holes of the
# host file inside allocated blocks as zero, which imgfuse map does not look for).
check_mount() {
  local img=$1; shift
  local oracle ours theirs key keys="data zero"
  [ "$(image_type "$img")" -eq 1 ] || keys=data
  oracle=$(raw_of "$img")
  mount_img "$@" "$img" "$MNT"
  [ "$(stat -c %s "$MNT/disk.raw")" -eq "$(stat -c %s "$oracle")" ]
  same_bytes "$MNT/disk.raw" "$oracle"
  ours=$(python3 "$SEEKMAP" "$MNT/disk.raw")
  theirs=$(qemu-img map --output=json "$img" | extents data)
  unmount_img
  [ "$ours" = "$theirs" ] || { echo "SEEK_DATA map differs: ours [$ours] qemu [$theirs]"; return 1; }
  for key in $keys; do
    ours=$("$IMGFUSE" map --json "$img" | extents $key)
    theirs=$(qemu-img map --output=json "$img" | extents $key)
    [ "$ours" = "$theirs" ] || { echo "imgfuse map differs on $key: ours [$ours] qemu [$theirs]"; return 1; }
  done
}

# header_u32 FILE OFFSET: a little-endian uint32 header field, as a decimal number.
header_u32() {
  python3 -c 'import struct, sys; print(struct.unpack_from("<I", open(sys.argv[1], "rb").read(512), int(sys.argv[2], 0))[0])' "$1" "$2"
}
image_type() { header_u32 "$1" 0x4c; }

# bmap_entry FILE BLOCK: the block map entry of guest block BLOCK, as a decimal number.
bmap_entry() {
  python3 - "$@" <<'EOF'
import struct, sys
with open(sys.argv[1], "rb") as f:
    hdr = f.read(512)
    bmap = struct.unpack_from("<I", hdr, 0x154)[0]
    f.seek(bmap + 4 * int(sys.argv[2]))
    print(struct.unpack("<I", f.read(4))[0])
EOF
}

# write_both OFFSET LENGTH SEED FILES...: the same pseudo-random bytes into each file at OFFSET.
write_both() {
  local off=$1 len=$2 seed=$3 f; shift 3
  python3 -c 'import random, sys; r = random.Random(int(sys.argv[2])); sys.stdout.buffer.write(bytes(r.getrandbits(8) for _ in range(int(sys.argv[1]))))' \
    "$len" "$seed" > "$TMP/chunk"
  for f in "$@"; do
    dd if="$TMP/chunk" of="$f" bs=$len seek=$off oflag=seek_bytes conv=notrunc status=none
  done
}

# ---------------------------------------------------------------- reading

@test "a dynamic image, partly allocated, with a virtual size not a multiple of 1 MiB, reads like qemu-img" {
  qemu-img create -q -f vdi dyn.vdi 5000000
  fmt_io vdi dyn.vdi 'write -P 0x11 0 7000' 'write -P 0x22 1M 1M' 'write -P 0x33 3M 4k' 'write -P 0x44 4999000 1192'
  check_mount dyn.vdi
  # the 4 KiB write in the otherwise empty block 3 reads as data for its whole block, zeros around it
  mount_img dyn.vdi "$MNT"
  cmp -n 4096 -i $((3 * MiB)):0 "$MNT/disk.raw" <(head -c 4096 /dev/zero | tr '\0' '\063')
  cmp -n $((MiB - 4096)) -i $((3 * MiB + 4096)):0 "$MNT/disk.raw" /dev/zero
  [ "$(python3 "$SEEKMAP" "$MNT/disk.raw" $((2 * MiB)) $((4 * MiB)))" = "$((3 * MiB)) $((4 * MiB))" ]
}

@test "a static (fixed) image reads like qemu-img, every block data" {
  qemu-img create -q -f vdi -o static=on fixed.vdi 3M
  fmt_io vdi fixed.vdi 'write -P 0x5a 100 5000' 'write -P 0xa5 2M 1M'
  check_mount fixed.vdi
  run "$IMGFUSE" info fixed.vdi
  [[ "$output" == *"image_type: static"* ]]
  [[ "$output" == *"blocks_allocated: 3"* ]]
}

@test "qemu-img convert -O vdi of a raw file with holes reads back as that raw file" {
  head -c $((6 * MiB + 512)) /dev/zero > src.raw
  write_both 0 300000 1 src.raw
  write_both $((2 * MiB + 4095)) 70000 2 src.raw
  write_both $((6 * MiB - 10)) 522 3 src.raw
  qemu-img convert -O vdi src.raw conv.vdi
  check_mount conv.vdi
  mount_img conv.vdi "$MNT"
  same_bytes "$MNT/disk.raw" src.raw
}

@test "an empty dynamic image and a 0-byte image mount with the right size and no data" {
  qemu-img create -q -f vdi empty.vdi 10M
  qemu-img create -q -f vdi zero.vdi 0
  check_mount empty.vdi
  mount_img zero.vdi "$MNT"
  [ "$(stat -c %s "$MNT/disk.raw")" -eq 0 ]
  [ -z "$(python3 "$SEEKMAP" "$MNT/disk.raw")" ]
}

@test "info and info.json describe the image; the untrusted comment is reduced to printable ASCII" {
  qemu-img create -q -f vdi info.vdi 2M
  fmt_io vdi info.vdi 'write -P 1 0 512'
  printf 'evil\nline\033[31m\xff' | dd of=info.vdi bs=1 seek=$((0x54)) conv=notrunc status=none
  run "$IMGFUSE" info info.vdi
  echo "$output"
  [ "$status" -eq 0 ]
  [[ "$output" == *"format: vdi"* ]]
  [[ "$output" == *"image_type: dynamic"* ]]
  [[ "$output" == *"block_size: 1048576"* ]]
  [[ "$output" == *"blocks_total: 2"* ]]
  [[ "$output" == *"blocks_allocated: 1"* ]]
  [[ "$output" =~ uuid:\ [0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12} ]]
  [[ "$output" == *"uuid_parent: 00000000-0000-0000-0000-000000000000"* ]]
  [[ "$output" == *"comment: evil?line?[31m?"* ]]
  ! grep -q '^line' <<<"$output" || false
  mount_img info.vdi "$MNT"
  python3 - "$MNT/info.json" <<'EOF'
import json, sys
text = open(sys.argv[1]).read()
json.loads(text)
assert '"image_type": "dynamic"' in text, text
assert '"blocks_allocated": 1' in text, text
assert '"comment": "evil?line?[31m?"' in text, text
EOF
}

# ---------------------------------------------------------------- writing

@test "--rw: unaligned writes into allocated, unallocated and the last partial block; qemu-img check is clean" {
  qemu-img create -q -f vdi w.vdi 5000000
  fmt_io vdi w.vdi 'write -P 0x11 0 7000' 'write -P 0x22 2M 1M'
  qemu-img convert -O raw w.vdi want.raw
  mount_img --rw w.vdi "$MNT"
  write_both 12345 5000 1 "$MNT/disk.raw" want.raw                  # inside an allocated block
  write_both $((MiB - 100)) 300 2 "$MNT/disk.raw" want.raw          # across into an unallocated block
  write_both $((3 * MiB + 77)) 4096 3 "$MNT/disk.raw" want.raw      # inside an empty block
  write_both $((2 * MiB - 5)) 10 4 "$MNT/disk.raw" want.raw         # across into an allocated block
  write_both $((5000192 - 1000)) 1000 5 "$MNT/disk.raw" want.raw    # the end of the last, partial block
  same_bytes "$MNT/disk.raw" want.raw
  unmount_img
  check_clean w.vdi
  qemu-img convert -O raw w.vdi got.raw
  same_bytes got.raw want.raw
  [ "$(qemu-img map --output=json w.vdi | extents data)" = "0 5000192" ]
  run "$IMGFUSE" info w.vdi
  [[ "$output" == *"blocks_allocated: 5"* ]]
}

@test "--rw on a static image writes in place: the file does not grow, qemu-img check is clean" {
  qemu-img create -q -f vdi -o static=on s.vdi 3M
  qemu-img convert -O raw s.vdi want.raw
  size=$(stat -c %s s.vdi)
  mount_img --rw s.vdi "$MNT"
  write_both 1 70000 6 "$MNT/disk.raw" want.raw
  write_both $((3 * MiB - 3)) 3 7 "$MNT/disk.raw" want.raw
  unmount_img
  [ "$(stat -c %s s.vdi)" -eq "$size" ]
  check_clean s.vdi
  qemu-img convert -O raw s.vdi got.raw
  same_bytes got.raw want.raw
}

@test "concurrent writers into one new block and adjacent new blocks allocate each block once" {
  qemu-img create -q -f vdi c.vdi 8M
  qemu-img convert -O raw c.vdi want.raw
  mount_img --rw c.vdi "$MNT"
  pids=()
  # eight writers: four into block 1 (disjoint 64 KiB pieces), four into blocks 4 and 5 (both sides)
  for i in 0 1 2 3; do
    write_both 0 65536 $((10 + i)) "$TMP/piece.$i"
    (dd if="$TMP/piece.$i" of="$MNT/disk.raw" bs=65536 seek=$((MiB + i * 200000)) oflag=seek_bytes conv=notrunc status=none) 3>&- &
    pids+=($!)
    write_both 0 65536 $((20 + i)) "$TMP/other.$i"
    (dd if="$TMP/other.$i" of="$MNT/disk.raw" bs=65536 seek=$((5 * MiB - 131072 + i * 65536)) oflag=seek_bytes conv=notrunc status=none) 3>&- &
    pids+=($!)
  done
  wait "${pids[@]}"
  unmount_img
  for i in 0 1 2 3; do
    dd if="$TMP/piece.$i" of=want.raw bs=65536 seek=$((MiB + i * 200000)) oflag=seek_bytes conv=notrunc status=none
    dd if="$TMP/other.$i" of=want.raw bs=65536 seek=$((5 * MiB - 131072 + i * 65536)) oflag=seek_bytes conv=notrunc status=none
  done
  check_clean c.vdi
  qemu-img convert -O raw c.vdi got.raw
  same_bytes got.raw want.raw
  # exactly three blocks allocated, three host blocks in the file
  [ "$(stat -c %s c.vdi)" -eq $(($(header_u32 c.vdi 0x158) + 3 * MiB)) ]
  run "$IMGFUSE" info c.vdi
  [[ "$output" == *"blocks_allocated: 3"* ]]
}

@test "punching a hole with --discard=unmap makes whole blocks zero entries; their host block is reused" {
  qemu-img create -q -f vdi p.vdi 4M
  fmt_io vdi p.vdi 'write -P 0x11 0 4M'
  size=$(stat -c %s p.vdi)
  mount_img --rw --discard=unmap p.vdi "$MNT"
  fallocate -p -o $((MiB - 10)) -l $((MiB + 20)) "$MNT/disk.raw"   # block 1 whole, 10 bytes either side
  [ "$(python3 "$SEEKMAP" "$MNT/disk.raw")" = "0 $MiB
$((2 * MiB)) $((4 * MiB))" ]
  unmount_img
  [ "$(bmap_entry p.vdi 1)" -eq $((0xfffffffe)) ]
  check_clean p.vdi
  qemu-img convert -O raw p.vdi got.raw
  cmp -n $((MiB - 10)) got.raw <(head -c $MiB /dev/zero | tr '\0' '\021')
  cmp -n $((MiB + 20)) -i $((MiB - 10)):0 got.raw /dev/zero
  # a new write into block 1 takes the freed host block: the file does not grow
  mount_img --rw --discard=unmap p.vdi "$MNT"
  printf 'again' | dd of="$MNT/disk.raw" bs=1 seek=$((MiB + 3)) conv=notrunc status=none
  unmount_img
  [ "$(stat -c %s p.vdi)" -eq "$size" ]
  [ "$(bmap_entry p.vdi 1)" -lt 4 ]
  check_clean p.vdi
  [ "$(qemu-io -f vdi -c "read -v $((MiB + 3)) 5" p.vdi | head -1)" = "$(printf '%08x:  61 67 61 69 6e  again' $((MiB + 3)))" ]
}

@test "without --discard=unmap a punched hole writes zeros and keeps every block allocated" {
  qemu-img create -q -f vdi k.vdi 3M
  fmt_io vdi k.vdi 'write -P 0x11 0 3M'
  mount_img --rw k.vdi "$MNT"
  fallocate -p -o $((MiB / 2)) -l $((2 * MiB)) "$MNT/disk.raw"
  unmount_img
  [ "$(bmap_entry k.vdi 1)" -eq 1 ]
  check_clean k.vdi
  qemu-img convert -O raw k.vdi got.raw
  cmp -n $((2 * MiB)) -i $((MiB / 2)):0 got.raw /dev/zero
  cmp -n $((MiB / 2)) got.raw <(head -c $MiB /dev/zero | tr '\0' '\021')
}

# ---------------------------------------------------------------- refusals

@test "broken headers are refused with one line naming the file and the reason" {
  qemu-img create -q -f vdi good.vdi 3M
  fmt_io vdi good.vdi 'write -P 1 0 1M'
  head -c 300 good.vdi > trunc.vdi
  refused_open trunc.vdi "file too short for a VDI header"
  cp good.vdi sig.vdi && patch_le sig.vdi 0x40 4 0x12345678
  refused_open sig.vdi "not a VDI image (bad signature 0x12345678)" -f vdi
  cp good.vdi ver.vdi && patch_le ver.vdi 0x44 4 0x00020000
  refused_open ver.vdi "unsupported VDI version 2.0"
  cp good.vdi diff.vdi && patch_le diff.vdi 0x4c 4 4
  refused_open diff.vdi "differencing VDI image with a null parent UUID (uuidLinkage): no parent to find"
  cp good.vdi undo.vdi && patch_le undo.vdi 0x4c 4 3
  refused_open undo.vdi "unsupported VDI image type 3 (undo)"
  cp good.vdi bmap.vdi && patch_le bmap.vdi 0x154 4 $((64 * MiB))
  refused_open bmap.vdi "block map extends past the end of the file"
  cp good.vdi blocks.vdi && patch_le blocks.vdi 0x180 4 2
  refused_open blocks.vdi "blocks_in_image 2 does not match the disk size 3145728"
  cp good.vdi size.vdi && patch_le size.vdi 0x170 8 $((5 * MiB))
  refused_open size.vdi "does not match the disk size"
  cp good.vdi bsize.vdi && patch_le bsize.vdi 0x178 4 65536
  refused_open bsize.vdi "unsupported VDI block size 65536"
  cp good.vdi parent.vdi && patch_le parent.vdi 0x1b8 4 7
  refused_open parent.vdi "names a parent image"
  cp good.vdi huge.vdi && patch_le huge.vdi 0x180 4 $((0x7fffffff)) && patch_le huge.vdi 0x170 8 $((0x7fffffff * MiB))
  refused_open huge.vdi "larger than the limit"
}

@test "a block map entry past the end of the file: that block reads EIO, the rest reads, --rw is refused" {
  qemu-img create -q -f vdi bad.vdi 3M
  fmt_io vdi bad.vdi 'write -P 0x11 0 1M' 'write -P 0x22 2M 1M'
  python3 - bad.vdi <<'EOF'
import struct, sys
with open(sys.argv[1], "r+b") as f:
    f.seek(struct.unpack_from("<I", open(sys.argv[1], "rb").read(512), 0x154)[0] + 8)
    f.write(struct.pack("<I", 1000))
EOF
  mount_img bad.vdi "$MNT"
  run dd if="$MNT/disk.raw" bs=4096 skip=$((2 * MiB / 4096)) count=1 of=/dev/null status=none
  [ "$status" -ne 0 ]
  [[ "$output" == *"Input/output error"* ]]
  cmp -n $MiB "$MNT/disk.raw" <(head -c $MiB /dev/zero | tr '\0' '\021')
  unmount_img
  grep -q "bad.vdi: block map entry 2 (0x000003e8) points past the end of the file" "$TMP/daemon.log"
  refused_open bad.vdi "block map entry 2 (0x000003e8) names a host block index beyond blocks_in_image; the image can only be opened read-only" --rw
}

@test "--cache=none (O_DIRECT on the image file): reads and allocating writes give the same bytes" {
  qemu-img create -q -f vdi d.vdi 3M
  fmt_io vdi d.vdi 'write -P 0x11 512 7000'
  qemu-img convert -O raw d.vdi want.raw
  check_mount d.vdi --cache=none
  mount_img --rw --cache=none d.vdi "$MNT"
  write_both 3333 2000 8 "$MNT/disk.raw" want.raw
  write_both $((2 * MiB + 1)) 9000 9 "$MNT/disk.raw" want.raw
  same_bytes "$MNT/disk.raw" want.raw
  unmount_img
  check_clean d.vdi
  qemu-img convert -O raw d.vdi got.raw
  same_bytes got.raw want.raw
}

@test "the generated hostile VDI images mount and read or are refused with one line, read-only and --rw" {
  python3 "$BATS_TEST_DIRNAME/make-hostile" "$TMP/h" vdi >/dev/null
  for mode in "" --rw; do
    run python3 "$BATS_TEST_DIRNAME/tools/read-all-hostile" $mode --jobs 2 "$TMP/h"
    echo "$output"
    [ "$status" -eq 0 ]
    [[ "${lines[-1]}" =~ ^read-all-hostile:\ ([0-9]+)\ images:\ ([0-9]+)\ mounted.*,\ ([0-9]+)\ refused.*\ 0\ failed ]]
    [ "${BASH_REMATCH[1]}" -ge 90 ] && [ "${BASH_REMATCH[2]}" -ge 5 ] && [ "${BASH_REMATCH[3]}" -ge 60 ]
  done
  for f in "$TMP"/h/vdi-00[01]-valid-*.img; do
    mount_img -f vdi "$f" "$MNT"
    same_bytes "$MNT/disk.raw" "$(raw_of "$f")"
    unmount_img
  done
  refused_open "$(ls "$TMP"/h/vdi-*-huge-16t-all-shared.img)" "names a host block another block also uses" --rw -f vdi
}

@test "a header count that disagrees with the block map is corrected by the next --rw mount" {
  qemu-img create -q -f vdi n.vdi 4M
  fmt_io vdi n.vdi 'write -P 1 0 1k' 'write -P 2 3M 1k'
  patch_le n.vdi 0x184 4 3
  run "$IMGFUSE" info n.vdi
  [[ "$output" == *"blocks_allocated: 2"* ]]
  [[ "$output" == *"blocks_allocated_in_header: 3"* ]]
  mount_img --rw n.vdi "$MNT"
  unmount_img
  grep -q "n.vdi: header says 3 blocks allocated, the block map 2; header corrected" "$TMP/daemon.log"
  [ "$(header_u32 n.vdi 0x184)" -eq 2 ]
  check_clean n.vdi
}

@test "a daemon killed during allocating writes leaves every fsynced block readable and the image repairable" {
  qemu-img create -q -f vdi k.vdi 40M
  qemu-img convert -O raw k.vdi want.raw
  mount_img --rw k.vdi "$MNT"
  for i in 0 1 2 3; do
    write_both $((i * 3 * MiB + 4096)) 8192 $((30 + i)) want.raw
    dd if="$TMP/chunk" of="$MNT/disk.raw" bs=8192 seek=$((i * 3 * MiB + 4096)) oflag=seek_bytes conv=notrunc,fsync status=none
  done
  # more allocating writes in flight when the daemon dies
  (for i in $(seq 20 39); do dd if=/dev/urandom of="$MNT/disk.raw" bs=65536 count=1 seek=$((i * 16)) conv=notrunc status=none 2>/dev/null || break; done) 3>&- &
  writer=$!
  sleep 0.3
  kill_daemon 9
  wait "$writer" || true
  run qemu-img check -f vdi k.vdi
  echo "$output"
  [[ "$output" != *"block index"* ]]   # no entry out of range or shared, whatever the count says
  mount_img --rw k.vdi "$MNT"
  unmount_img
  check_clean k.vdi
  qemu-img convert -O raw k.vdi got.raw
  cmp -n $((20 * MiB)) got.raw want.raw
}
