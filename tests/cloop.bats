#!/usr/bin/env bats
# SPDX-License-Identifier: MIT
# cloop.bats - the read-only cloop driver: V2.0 images made by create_compressed_fs (cloop-utils) read back
# byte for byte like their source and like `qemu-img convert -f cloop -O raw`, from many readers at once;
# V4.0 (index at the start or at the end) and V3 images of zlib, xz, lz4, lzo and stored blocks, which no Debian
# tool writes, made by tests/tools/make-cloop and read like their source; --rw and --backing are refused
# with one line; damaged images (offsets past the end, huge block counts, unknown compressor tags and
# flags, bad V3 footers, unknown versions) are refused by name, and a block that decodes to the wrong
# size reads as EIO.

load helpers

setup() { setup_tmp; cd "$TMP"; }
teardown() { teardown_tmp; }

# source FILE: 3 MiB + 1000 bytes of random, zero and patterned data (not a whole number of blocks).
source_data() {
  python3 - "$1" <<'PY'
import os, sys
d = os.urandom(1 << 20) + bytes(1 << 20) + bytes(range(256)) * 4096 + os.urandom(1000)
open(sys.argv[1], "wb").write(d)
PY
}

# make_cloop OUT BLOCKSIZE [BAD]: a V2.0 cloop of 4 blocks written by hand; BAD=short makes block 1
# inflate to half a block, BAD=long to a block and more.
make_cloop() {
  python3 - "$@" <<'PY'
import struct, sys, zlib
out, bs, bad = sys.argv[1], int(sys.argv[2]), sys.argv[3] if len(sys.argv) > 3 else ""
pre = b"#!/bin/sh\n#V2.0 Format\nmodprobe cloop file=$0 && mount -r -t iso9660 /dev/cloop $1\n"
blocks = [bytes([i + 1]) * bs for i in range(4)]
if bad == "short":
    blocks[1] = blocks[1][: bs // 2]
if bad == "long":
    blocks[1] = blocks[1] + b"x" * 512
streams = [zlib.compress(b) for b in blocks]
off = 128 + 8 + 8 * (len(blocks) + 1)
offs = [off]
for s in streams:
    offs.append(offs[-1] + len(s))
hdr = pre.ljust(128, b"\0") + struct.pack(">II", bs, len(blocks)) + b"".join(struct.pack(">Q", o) for o in offs)
open(out, "wb").write(hdr + b"".join(streams))
PY
}

# patch_be FILE OFFSET WIDTH VALUE: a big-endian field of WIDTH bytes (4 or 8) overwritten in place.
patch_be() {
  python3 -c 'import struct, sys
f = open(sys.argv[1], "r+b"); f.seek(int(sys.argv[2], 0))
f.write(struct.pack(">I" if sys.argv[3] == "4" else ">Q", int(sys.argv[4], 0)))' "$@"
}

# block1_eio IMAGE: mounted, block 1 (4 KiB) of IMAGE reads as EIO while block 0 still reads its bytes
# of 0x01 and block 3 its bytes of 0x04 (the images of make_cloop and cloop_py).
block1_eio() {
  mount_img "$1" "$MNT"
  run dd if="$MNT/disk.raw" of=/dev/null bs=4096 skip=1 count=1
  [ "$status" -ne 0 ]
  [[ "$output" == *"Input/output error"* ]]
  cmp <(dd if="$MNT/disk.raw" bs=4096 count=1 2>/dev/null) <(head -c 4096 /dev/zero | tr '\0' '\001')
  cmp <(dd if="$MNT/disk.raw" bs=4096 skip=3 count=1 2>/dev/null) <(head -c 4096 /dev/zero | tr '\0' '\004')
  unmount_img
}

# eight_readers EXPECT: eight concurrent readers of $MNT/disk.raw, each from its own offset (reader i
# skips 3i 4 KiB blocks) to the end of the first 3 MiB, read what EXPECT holds there.
eight_readers() {
  local pids=() i
  for i in 0 1 2 3 4 5 6 7; do
    dd if="$MNT/disk.raw" of=part$i bs=4096 skip=$((i * 3)) count=$((768 - i * 3)) 2>/dev/null &
    pids+=($!)
  done
  wait "${pids[@]}"
  for i in 0 1 2 3 4 5 6 7; do
    cmp part$i <(dd if="$1" bs=4096 skip=$((i * 3)) count=$((768 - i * 3)) 2>/dev/null)
  done
}

@test "create_compressed_fs images read like the source and like qemu-img, at several block sizes" {
  source_data src.raw
  for bsz in 512 65536 1048576; do
    create_compressed_fs -q -B $bsz src.raw c$bsz.cloop
    qemu-img convert -f cloop -O raw c$bsz.cloop q$bsz.raw
    mount_img c$bsz.cloop "$MNT"
    size=$(stat -c %s "$MNT/disk.raw")
    [ "$size" -eq $(( ( $(stat -c %s src.raw) + bsz - 1 ) / bsz * bsz )) ]
    same_bytes "$MNT/disk.raw" q$bsz.raw
    cmp -n "$(stat -c %s src.raw)" "$MNT/disk.raw" src.raw
    unmount_img
  done
}

@test "a cloop mount serves eight concurrent readers the right bytes" {
  source_data src.raw
  create_compressed_fs -q -B 65536 src.raw c.cloop
  qemu-img convert -f cloop -O raw c.cloop q.raw
  mount_img c.cloop "$MNT"
  eight_readers q.raw
  unmount_img
}

@test "cloop: info names the layout; map shows compressed data; --rw and --backing exit 2 with one line" {
  source_data src.raw
  create_compressed_fs -q -B 65536 src.raw c.cloop
  run "$IMGFUSE" info c.cloop
  [ "$status" -eq 0 ]
  [[ "$output" == *"format: cloop"* && "$output" == *"block_size: 65536"* && "$output" == *"blocks: 49"* ]]
  run "$IMGFUSE" map c.cloop
  [ "$status" -eq 0 ]
  [[ "${lines[1]}" == "0x0 "*"0x310000 "*"compressed"* ]]
  refused_open c.cloop "cloop images are read-only (mount without --rw, or use --overlay)" --rw
  refused_open c.cloop "format 'cloop' does not support backing files" --backing src.raw
}

@test "cloop: a block that inflates short or long reads as EIO; the other blocks still read" {
  for bad in short long; do
    make_cloop $bad.cloop 4096 $bad
    block1_eio $bad.cloop
  done
}

@test "cloop: damaged headers are refused at open with one line naming the cause" {
  make_cloop good.cloop 4096
  cp good.cloop count.cloop; patch_be count.cloop 132 4 0xffffffff
  refused_open count.cloop "cloop block count 4294967295 too large (offsets table over 256 MiB)"
  cp good.cloop count2.cloop; patch_be count2.cloop 132 4 1000
  refused_open count2.cloop "cloop offsets table of 1000 blocks passes the end of the file"
  cp good.cloop past.cloop; patch_be past.cloop $((136 + 8 * 4)) 8 0x7fffffffffff
  refused_open past.cloop "cloop block 4 offset 140737488355327 outside the data area"
  cp good.cloop back.cloop; patch_be back.cloop $((136 + 8 * 2)) 8 0
  refused_open back.cloop "cloop block 1 has a bad compressed length"
  cp good.cloop bs.cloop; patch_be bs.cloop 128 4 1000
  refused_open bs.cloop "cloop block size 1000 invalid (a multiple of 512 up to 16 MiB)"
  cp good.cloop zero.cloop; patch_be zero.cloop 128 4 0
  refused_open zero.cloop "cloop block size 0 invalid (a multiple of 512 up to 16 MiB)"
  sed '2s/V2.0/V5.0/' good.cloop > v5.cloop
  refused_open v5.cloop "cloop V5.0 format not supported (V2.0, V3 and V4.0 are)"
}

MAKE_CLOOP="$BATS_TEST_DIRNAME/tools/make-cloop"

# make_layout LAYOUT CODECS BLOCKSIZE OUT: tests/tools/make-cloop of src.raw.
make_layout() {
  "$MAKE_CLOOP" -B "$3" --layout "$1" --codecs "$2" src.raw "$4"
}

# cloop_py OUT LAYOUT PYTHON-KWARGS: make-cloop's build() of 4 blocks of 4 KiB (bytes 1, 2, 3, 4), with
# overrides, e.g. tags={1: 7}.
cloop_py() {
  /usr/bin/python3 - "$MAKE_CLOOP" "$@" <<'PY'
import importlib.machinery, lzma, sys, zlib
mc = importlib.machinery.SourceFileLoader("make_cloop", sys.argv[1]).load_module()
data = b"".join(bytes([i + 1]) * 4096 for i in range(4))
kw = eval("dict(" + sys.argv[4] + ")", {"lzma": lzma, "zlib": zlib, "mc": mc, "data": data})
open(sys.argv[2], "wb").write(mc.build(data, 4096, sys.argv[3], **kw))
PY
}

@test "cloop V4.0 (index first or last) and V3 images of zlib, xz, lz4, lzo and stored blocks read like the source" {
  source_data src.raw
  for layout in 4 4f 3; do
    for codecs in zlib xz lz4 lzo none zlib,xz,lz4,lzo,none; do
      make_layout $layout $codecs 65536 c.cloop
      mount_img c.cloop "$MNT"
      size=$(stat -c %s "$MNT/disk.raw")
      if [ $layout = 3 ]; then   # V3 keeps the original size; V4.0 pads the last block
        [ "$size" -eq "$(stat -c %s src.raw)" ]
        cmp "$MNT/disk.raw" src.raw
      else
        [ "$size" -eq $(( ( $(stat -c %s src.raw) + 65535 ) / 65536 * 65536 )) ]
        cmp -n "$(stat -c %s src.raw)" "$MNT/disk.raw" src.raw
        cmp -i "$(stat -c %s src.raw):0" "$MNT/disk.raw" <(head -c $(( size - $(stat -c %s src.raw) )) /dev/zero)
      fi
      unmount_img
    done
  done
}

@test "cloop V4.0 and V3: 512-byte blocks and eight concurrent readers get the right bytes" {
  source_data src.raw
  for layout in 4f 3; do
    make_layout $layout zlib,xz,lz4,lzo,none 512 small.cloop
    mount_img small.cloop "$MNT"
    cmp -n "$(stat -c %s src.raw)" "$MNT/disk.raw" src.raw
    unmount_img
  done
  make_layout 4 xz,lz4,lzo,zlib 65536 c.cloop
  mount_img c.cloop "$MNT"
  eight_readers src.raw
  unmount_img
}

@test "cloop V4.0 and V3: info names the version, where the index is and the compressors; --rw exits 2" {
  source_data src.raw
  make_layout 4f zlib,xz,lz4,lzo,none 65536 f.cloop
  run "$IMGFUSE" info f.cloop
  [ "$status" -eq 0 ]
  [[ "$output" == *"format: cloop"* && "$output" == *"cloop_version: V4.0"* ]]
  [[ "$output" == *"cloop_index: footer"* && "$output" == *"compression: zlib,none,xz,lz4,lzo"* ]]
  make_layout 3 xz 65536 v3.cloop
  run "$IMGFUSE" info v3.cloop
  [ "$status" -eq 0 ]
  [[ "$output" == *"cloop_version: V3"* && "$output" == *"compression: xz"* ]]
  [[ "$output" == *"virtual_size: $(stat -c %s src.raw) "* ]]
  refused_open v3.cloop "cloop images are read-only (mount without --rw, or use --overlay)" --rw
  refused_open f.cloop "cloop images are read-only (mount without --rw, or use --overlay)" --rw
}

@test "cloop V4.0 and V3: a block that decodes short or long (xz, lz4, lzo, stored) reads as EIO; the others read" {
  cloop_py xz.cloop 4 'codecs=["xz"], streams={1: lzma.compress(data[:100], format=lzma.FORMAT_XZ)}'
  cloop_py lz4.cloop 4f 'codecs=["lz4"], streams={1: mc.compress("lz4", data[:8192])}'
  cloop_py none.cloop 3 'codecs=["none"], streams={1: data[:4000]}'
  cloop_py lzo.cloop 3 'codecs=["lzo"], streams={1: mc.compress("lzo", data[:8192])}'
  cloop_py garbage.cloop 4 'codecs=["xz"], streams={1: b"\xfd7zXZ\x00" + bytes(200)}'
  for img in xz lz4 none lzo garbage; do
    block1_eio $img.cloop
  done
}

@test "cloop V4.0 and V3: unknown compressor tags and flags and bad footers are refused with one line" {
  cloop_py tag.cloop 4 'tags={2: 7}'
  refused_open tag.cloop "cloop block 2 has an unknown compressor tag 7"
  cloop_py tag5.cloop 4f 'tags={1: 5}'
  refused_open tag5.cloop "cloop block 1 has an unknown compressor tag 5"
  cloop_py flags.cloop 3 'tags={0: 6}'
  refused_open flags.cloop "cloop block 0 has unknown compression flags 0x6"
  cloop_py flags32.cloop 3 'tags={3: 32}'
  refused_open flags32.cloop "cloop block 3 has unknown compression flags 0x20"
  cloop_py ver.cloop 3 'version3=4'
  refused_open ver.cloop "cloop V3 footer version 4 not supported (only 3)"
  cloop_py orig.cloop 3 'orig=4096 * 5'
  refused_open orig.cloop "cloop V3 original size 20480 does not fit 4 blocks of 4096 bytes"
  cloop_py count.cloop 3 'count=5'
  refused_open count.cloop "cloop V3 footer of 5 blocks does not end the file"
  cloop_py past.cloop 4f 'offs={4: 1 << 40}'
  refused_open past.cloop "cloop block 4 offset 1099511627776 outside the data area"
  cloop_py big.cloop 4f 'count=0xffffffff'
  refused_open big.cloop "cloop block count 4294967295 too large (offsets table over 256 MiB)"
}
