#!/usr/bin/env python3
# SPDX-License-Identifier: MIT
"""qcow2-corrupt.py IMAGE MODE CLUSTER: damages guest cluster CLUSTER (within the first L2 table) of a
qcow2 image, following the qcow2 spec's L1/L2 layout:
  past-eof      its L2 entry points to a host cluster beyond the end of the file
  bad-deflate   its compressed data (the L2 entry must be compressed) is overwritten with an invalid
                deflate block header, so decompression fails
Refcount damage (issue 16; CLUSTER is ignored, except by set-l2-refcount where it is the new value):
  zero-refblock0        the first refcount block is zeroed: every cluster it describes reads as free
  zero-l1-l2-refcounts  only the refcounts of the L1 table's clusters and the first L2 table become 0
  set-l2-refcount       the refcount of the first L2 table becomes CLUSTER
  l2-on-refblock        the second L1 entry names the first refcount block as its L2 table"""
import os
import struct
import sys


def set_refcount(f, hdr, cluster_index, value):
    """Stores a refcount through the refcount table, for any refcount width."""
    cluster_bits = struct.unpack(">I", hdr[20:24])[0]
    version = struct.unpack(">I", hdr[4:8])[0]
    order = struct.unpack(">I", hdr[96:100])[0] if version >= 3 else 4
    bits = 1 << order
    per_block = (1 << cluster_bits) * 8 // bits
    rt_off = struct.unpack(">Q", hdr[48:56])[0]
    f.seek(rt_off + 8 * (cluster_index // per_block))
    blk = struct.unpack(">Q", f.read(8))[0] & ~0x1FF
    assert blk, "no refcount block for cluster %d" % cluster_index
    bit = (cluster_index % per_block) * bits
    f.seek(blk + bit // 8)
    if bits >= 8:
        f.write(value.to_bytes(bits // 8, "big"))
    else:
        byte = f.read(1)[0]
        mask = ((1 << bits) - 1) << (bit % 8)
        f.seek(blk + bit // 8)
        f.write(bytes([(byte & ~mask) | ((value << (bit % 8)) & mask)]))

path, mode, cluster = sys.argv[1], sys.argv[2], int(sys.argv[3])
with open(path, "r+b") as f:
    hdr = f.read(104)
    assert hdr[:4] == b"QFI\xfb", "not qcow2"
    cluster_bits = struct.unpack(">I", hdr[20:24])[0]
    l1_off = struct.unpack(">Q", hdr[40:48])[0]
    f.seek(l1_off)
    l2_off = struct.unpack(">Q", f.read(8))[0] & 0x00FFFFFFFFFFFE00
    assert l2_off, "no L2 table for the first L1 entry"
    entry_pos = l2_off + 8 * cluster
    f.seek(entry_pos)
    entry = struct.unpack(">Q", f.read(8))[0]
    csize = 1 << cluster_bits
    if mode == "past-eof":
        size = os.fstat(f.fileno()).st_size
        host = (size + 16 * csize) // csize * csize
        f.seek(entry_pos)
        f.write(struct.pack(">Q", (1 << 63) | host))
    elif mode == "bad-deflate":
        assert entry & (1 << 62), "cluster %d is not compressed" % cluster
        x = 62 - (cluster_bits - 8)
        host = entry & ((1 << x) - 1)
        f.seek(host)
        f.write(b"\xff" * 64)
    elif mode == "zero-refblock0":
        rt_off = struct.unpack(">Q", hdr[48:56])[0]
        f.seek(rt_off)
        blk = struct.unpack(">Q", f.read(8))[0] & ~0x1FF
        f.seek(blk)
        f.write(bytes(csize))
    elif mode == "zero-l1-l2-refcounts":
        l1_size = struct.unpack(">I", hdr[36:40])[0]
        for c in range(l1_off // csize, (l1_off + 8 * l1_size + csize - 1) // csize):
            set_refcount(f, hdr, c, 0)
        set_refcount(f, hdr, l2_off // csize, 0)
    elif mode == "set-l2-refcount":
        set_refcount(f, hdr, l2_off // csize, cluster)
    elif mode == "l2-on-refblock":
        rt_off = struct.unpack(">Q", hdr[48:56])[0]
        f.seek(rt_off)
        blk = struct.unpack(">Q", f.read(8))[0] & ~0x1FF
        f.seek(l1_off + 8)
        f.write(struct.pack(">Q", (1 << 63) | blk))
    else:
        sys.exit("unknown mode " + mode)
