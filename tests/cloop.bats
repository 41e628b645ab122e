#!/usr/bin/env bats
# SPDX-License-Identifier: MIT
# cloop.bats - the read-only cloop driver: V2.0 images made by create_compressed_fs (cloop-utils) read back
# byte for byte like their source and like `qemu-img convert -f cloop -O raw`, from many readers at once;
# --rw and --backing are refused with one line; damaged images (offsets past the end, huge block counts,
# later cloop versions) are refused by name, and a block that inflates to the wrong size reads as EIO.

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
  local pids=()
  for i in 0 1 2 3 4 5 6 7; do
    dd if="$MNT/disk.raw" of=part$i bs=4096 skip=$((i * 3)) count=$((768 - i * 3)) 2>/dev/null &
    pids+=($!)
  done
  wait "${pids[@]}"
  for i in 0 1 2 3 4 5 6 7; do
    cmp part$i <(dd if=q.raw bs=4096 skip=$((i * 3)) count=$((768 - i * 3)) 2>/dev/null)
  done
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
    mount_img $bad.cloop "$MNT"
    run dd if="$MNT/disk.raw" of=/dev/null bs=4096 skip=1 count=1
    [ "$status" -ne 0 ]
    [[ "$output" == *"Input/output error"* ]]
    cmp <(dd if="$MNT/disk.raw" bs=4096 count=1 2>/dev/null) <(head -c 4096 /dev/zero | tr '\0' '\001')
    cmp <(dd if="$MNT/disk.raw" bs=4096 skip=3 count=1 2>/dev/null) <(head -c 4096 /dev/zero | tr '\0' '\004')
    unmount_img
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
  sed '2s/V2.0/V4.0/' good.cloop > v4.cloop
  refused_open v4.cloop "cloop V4.0 format not supported (only V2.0, zlib blocks)"
}
