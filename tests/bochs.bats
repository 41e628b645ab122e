#!/usr/bin/env bats
# SPDX-License-Identifier: MIT
# bochs.bats - the read-only Bochs driver: growing redologs made by bximage (convert and create) and
# version 1 redologs written by hand read back byte for byte like their source and like
# `qemu-img convert -f bochs -O raw`; extents never written and sectors whose bitmap bit is clear are holes
# for SEEK_HOLE; --rw and --backing exit 2 with one line; damaged headers are refused by name.

load helpers

setup() { setup_tmp; cd "$TMP"; }
teardown() { teardown_tmp; }

# source_data FILE: 4 MiB: random, then 1 MiB of zeros, then a pattern.
source_data() {
  python3 - "$1" <<'PY'
import os, sys
d = os.urandom(2 << 20) + bytes(1 << 20) + bytes(range(256)) * 4096
open(sys.argv[1], "wb").write(d)
PY
}

# make_v1 OUT: a version 1 growing redolog of 4 extents of 4 KiB (catalog of 8): extent 0 with sectors 0
# and 3 written, extent 2 full, extent 1 and the rest not written; the expected disk goes to OUT.raw.
make_v1() {
  python3 - "$1" <<'PY'
import struct, sys
out = sys.argv[1]
ext, ncat, disk = 4096, 8, 4 * 4096
h = bytearray(512)
h[0:22] = b"Bochs Virtual HD Image"; h[32:39] = b"Redolog"; h[48:55] = b"Growing"
struct.pack_into("<IIIIIQ", h, 64, 0x00010000, 512, ncat, 1, ext, disk)
cat = [0xFFFFFFFF] * ncat
cat[0], cat[2] = 1, 0
stride = 512 + ext
data = bytearray(2 * stride)
raw = bytearray(disk)
# stored extent 1 = guest extent 0: sectors 0 and 3
data[stride] = 0b1001
for s in (0, 3):
    b = bytes([0x10 + s]) * 512
    data[stride + 512 + s * 512: stride + 512 + (s + 1) * 512] = b
    raw[s * 512:(s + 1) * 512] = b
data[stride + 512 + 512: stride + 512 + 1024] = b"\xee" * 512   # bit clear: must read as zeros
# stored extent 0 = guest extent 2: all sectors
data[0] = 0xFF
for s in range(8):
    b = bytes([0x80 + s]) * 512
    data[512 + s * 512: 512 + (s + 1) * 512] = b
    raw[2 * ext + s * 512: 2 * ext + (s + 1) * 512] = b
open(out, "wb").write(bytes(h) + b"".join(struct.pack("<I", c) for c in cat) + bytes(data))
open(out + ".raw", "wb").write(bytes(raw))
PY
}

hole_at() {
  python3 -c 'import os, sys
fd = os.open(sys.argv[1], os.O_RDONLY)
print(os.lseek(fd, int(sys.argv[2]), os.SEEK_HOLE))' "$1" "$2"
}

@test "bximage growing images (convert) read like the source and like qemu-img; zeros are holes" {
  source_data src.raw
  bximage -q -func=convert -imgmode=growing src.raw b.img >/dev/null
  qemu-img convert -f bochs -O raw b.img q.raw
  mount_img b.img "$MNT"
  [ "$(stat -c %s "$MNT/disk.raw")" -eq 4194304 ]
  same_bytes "$MNT/disk.raw" src.raw
  same_bytes "$MNT/disk.raw" q.raw
  [ "$(hole_at "$MNT/disk.raw" 0)" -eq $((2 << 20)) ]
  unmount_img
}

@test "an empty bximage growing image (create) reads as zeros of its size, all a hole" {
  bximage -q -func=create -hd=10M -imgmode=growing e.img >/dev/null
  mount_img e.img "$MNT"
  [ "$(stat -c %s "$MNT/disk.raw")" -eq "$(qemu-img info -f bochs --output=json e.img | python3 -c 'import json,sys; print(json.load(sys.stdin)["virtual-size"])')" ]
  cmp "$MNT/disk.raw" <(head -c "$(stat -c %s "$MNT/disk.raw")" /dev/zero)
  [ "$(hole_at "$MNT/disk.raw" 0)" -eq 0 ]
  unmount_img
}

@test "a version 1 redolog with a partial sector bitmap reads like qemu-img and the expected bytes" {
  make_v1 v1.img
  qemu-img convert -f bochs -O raw v1.img q.raw
  mount_img v1.img "$MNT"
  same_bytes "$MNT/disk.raw" v1.img.raw
  same_bytes "$MNT/disk.raw" q.raw
  [ "$(hole_at "$MNT/disk.raw" 0)" -eq 512 ]
  unmount_img
  run "$IMGFUSE" info v1.img
  [[ "$output" == *"bochs_version: 1"* && "$output" == *"extents_allocated: 2"* ]]
}

@test "bochs: --rw and --backing exit 2 with one line; damaged headers are refused by name" {
  make_v1 v1.img
  refused_open v1.img "Bochs images are read-only (mount without --rw, or use --overlay)" --rw
  refused_open v1.img "format 'bochs' does not support backing files" --backing v1.img.raw
  cp v1.img cat.img; patch_le cat.img 72 4 0xffffffff
  refused_open cat.img "Bochs catalog of 4294967295 entries too large (at most 1048576)"
  cp v1.img ext0.img; patch_le ext0.img 80 4 0
  refused_open ext0.img "Bochs extent size 0 invalid (a power of two from 512 to 8 MiB)"
  cp v1.img ext3.img; patch_le ext3.img 80 4 3000
  refused_open ext3.img "Bochs extent size 3000 invalid (a power of two from 512 to 8 MiB)"
  cp v1.img big.img; patch_le big.img 84 8 0x7fffffffffffffff
  refused_open big.img "Bochs disk size 9223372036854775807 larger than its 8 extents"
  cp v1.img past.img; patch_le past.img 512 4 1000
  refused_open past.img "Bochs catalog entry 0 (1000) points past the end of the file"
  cp v1.img und.img; printf 'Undoable\0' | dd of=und.img bs=1 seek=48 conv=notrunc status=none
  refused_open und.img "Bochs image of type 'Redolog' subtype 'Undoable' not supported (only growing redologs)"
}
