#!/usr/bin/env python3
"""qcow2-corrupt.py IMAGE MODE CLUSTER: damages guest cluster CLUSTER (within the first L2 table) of a
qcow2 image, following the qcow2 spec's L1/L2 layout:
  past-eof      its L2 entry points to a host cluster beyond the end of the file
  bad-deflate   its compressed data (the L2 entry must be compressed) is overwritten with an invalid
                deflate block header, so decompression fails"""
import os
import struct
import sys

path, mode, cluster = sys.argv[1], sys.argv[2], int(sys.argv[3])
with open(path, "r+b") as f:
    hdr = f.read(48)
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
    else:
        sys.exit("unknown mode " + mode)
