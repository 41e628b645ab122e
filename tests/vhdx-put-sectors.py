#!/usr/bin/env python3
# SPDX-License-Identifier: MIT
"""vhdx-put-sectors.py CHILD EXPECT BLOCK FIRST COUNT BYTE

Writes COUNT logical sectors of BYTE from sector FIRST of payload block BLOCK into CHILD, a differencing
VHDX whose block BLOCK is not present yet and whose chunk has a present sector bitmap (what `imgfuse create
-b` makes), as Microsoft's VHDX specification says a writer does: a new payload block at the 1 MiB-aligned
end of the file holding the sectors, their bits set in the chunk's sector bitmap, the BAT entry
PARTIALLY_PRESENT at the new block. EXPECT (the guest content so far, e.g. the parent's raw image) gets
the same sectors. No log is used (the test's writer is the only user of the file)."""
import os
import struct
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import vhdxlib as v  # noqa: E402


def main():
    child, expect, block, first, count, byte = sys.argv[1:]
    block, first, count, byte = int(block), int(first), int(count), int(byte, 0)
    img = v.Image(child)
    sector, bs, cr = img.logical, img.block_size, img.chunk_ratio
    assert img.has_parent and block < img.blocks and first + count <= bs // sector
    state, _ = img.bat(block)
    assert state == 0, "block %d is not NOT_PRESENT" % block
    sb_index = (block // cr) * (cr + 1) + cr
    sb = struct.unpack("<Q", img.read(img.bat_off + 8 * sb_index, 8))[0]
    assert sb & 7 == 6, "the chunk's sector bitmap is not present"
    bitmap_off = sb >> 20 << 20
    img.f.close()
    data = bytes([byte]) * (count * sector)
    with open(child, "r+b") as f:
        end = (os.fstat(f.fileno()).st_size + v.MiB - 1) // v.MiB * v.MiB
        f.truncate(end + bs)
        f.seek(end + first * sector)
        f.write(data)
        bits = (block % cr) * (bs // sector) + first
        for s in range(bits, bits + count):
            f.seek(bitmap_off + s // 8)
            old = f.read(1)[0]
            f.seek(bitmap_off + s // 8)
            f.write(bytes([old | 1 << (s % 8)]))
        f.seek(img.bat_entry_offset(block))
        f.write(struct.pack("<Q", end | 7))
    with open(expect, "r+b") as f:
        f.seek(block * bs + first * sector)
        f.write(data)


if __name__ == "__main__":
    main()
