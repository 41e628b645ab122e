#!/usr/bin/env python3
# SPDX-License-Identifier: MIT
"""vhdx-make-diff.py PARENT PARENT_RAW CHILD EXPECT [--linkage GUID] [--relative PATH] [--only KEY] [--plain 1]

Writes CHILD, a differencing VHDX over PARENT (any VHDX of at least 8 MiB; the child takes its logical
sector size, 512 or 4096 bytes: sector numbers below are in those units), from Microsoft's VHDX specification (qemu-img cannot make one): 1 MiB blocks, an empty log,
the BAT with its sector-bitmap entry after every chunk of payload entries, and blocks in every state:
  block 0 fully present (0x11), block 1 partially present (sector 0: 0x21, sectors 3-10: 0x22, the last
  sector: 0x23), block 2 ZERO, block 3 not present (the parent's), block 4 partially present (sectors
  100-199: 0x24), block 5 UNMAPPED (zeros), block 6 UNDEFINED (zeros), the rest not present.
The parent locator holds parent_linkage (PARENT's DataWriteGuid, or GUID), relative_path (".\\NAME" or
PATH), volume_path and absolute_win32_path (a directory of no machine: found by base name); --only KEY
keeps just that path key. --plain 1 leaves blocks 2, 5 and 6 not present (libvhdi reads a differencing
disk's ZERO, UNMAPPED and UNDEFINED blocks from the parent, where the specification gives zeros). EXPECT receives the guest content: PARENT_RAW with the child's sectors on top."""
import os
import struct
import sys
import uuid

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import vhdxlib as v  # noqa: E402

MiB = v.MiB
BLOCK = MiB
SECTOR = 512  # the parent's logical sector size, set in main
LOG_OFF, BAT_OFF, MD_OFF, BITMAP_OFF, DATA_OFF = 1 * MiB, 2 * MiB, 3 * MiB, 4 * MiB, 5 * MiB


def utf16(s):
    return s.encode("utf-16-le")


def locator(pairs):
    n = len(pairs)
    head = v.LOCATOR_TYPE_VHDX + struct.pack("<HH", 0, n)
    strings = b""
    entries = b""
    base = 20 + 12 * n
    for k, val in pairs:
        kb, vb = utf16(k), utf16(val)
        entries += struct.pack("<IIHH", base + len(strings), base + len(strings) + len(kb), len(kb), len(vb))
        strings += kb + vb
    return head + entries + strings


def header(seq, data_write_guid):
    h = bytearray(4096)
    h[0:4] = b"head"
    struct.pack_into("<Q", h, 8, seq)
    h[16:32] = uuid.uuid4().bytes_le
    h[32:48] = data_write_guid
    struct.pack_into("<HHIQ", h, 64, 0, 1, MiB, LOG_OFF)
    v.set_crc(h)
    return h


def region_table():
    t = bytearray(64 * 1024)
    t[0:4] = b"regi"
    struct.pack_into("<I", t, 8, 2)
    t[16:48] = v.BAT_GUID + struct.pack("<QII", BAT_OFF, MiB, 1)
    t[48:80] = v.METADATA_GUID + struct.pack("<QII", MD_OFF, MiB, 1)
    v.set_crc(t)
    return t


def metadata(size, loc):
    items = [(v.FILE_PARAMS, struct.pack("<II", BLOCK, 2), 4), (v.DISK_SIZE, struct.pack("<Q", size), 6),
             (v.PAGE83, uuid.uuid4().bytes_le, 6), (v.LOGICAL_SECTOR, struct.pack("<I", SECTOR), 6),
             (v.PHYSICAL_SECTOR, struct.pack("<I", 4096), 6), (v.PARENT_LOCATOR, loc, 6)]
    md = bytearray(64 * 1024)
    md[0:8] = b"metadata"
    struct.pack_into("<HH", md, 8, 0, len(items))
    off = 64 * 1024
    for i, (g, data, flags) in enumerate(items):
        md[32 + 32 * i:64 + 32 * i] = g + struct.pack("<IIII", off, len(data), flags, 0)
        md += data
        off += len(data)
    return md


def main():
    args, opts, it = [], {}, iter(sys.argv[1:])
    for a in it:
        if a.startswith("--"):
            opts[a[2:]] = next(it)
        else:
            args.append(a)
    parent_path, parent_raw, child_path, expect_path = args
    parent = v.Image(parent_path)
    global SECTOR
    SECTOR = parent.logical
    assert parent.size >= 8 * MiB
    size = parent.size
    name = os.path.basename(parent_path)
    paths = [("relative_path", opts.get("relative", ".\\" + name)),
             ("volume_path", "\\\\?\\Volume{26a21bda-a627-11d7-9931-806e6f6e6963}\\no-such-dir\\" + name),
             ("absolute_win32_path", "\\\\?\\C:\\no-such-dir\\" + name)]
    if "only" in opts:
        paths = [p for p in paths if p[0] == opts["only"]]
    linkage = opts.get("linkage", v.guid_str(parent.data_write_guid))
    loc = locator([("parent_linkage", linkage)] + paths)

    guest = bytearray(open(parent_raw, "rb").read())
    blocks = (size + BLOCK - 1) // BLOCK
    chunk_ratio = (1 << 23) * SECTOR // BLOCK
    bat = bytearray(8 * ((blocks + chunk_ratio - 1) // chunk_ratio * (chunk_ratio + 1)))
    bitmap = bytearray(MiB)
    payload = {}
    spb = BLOCK // SECTOR

    def set_state(b, state, off=0):
        struct.pack_into("<Q", bat, 8 * (b + b // chunk_ratio), off | state)

    def put_sectors(b, first, count, byte):
        blk = payload.setdefault(b, bytearray(BLOCK))
        blk[first * SECTOR:(first + count) * SECTOR] = bytes([byte]) * (count * SECTOR)
        g = b * BLOCK + first * SECTOR
        guest[g:g + count * SECTOR] = bytes([byte]) * (count * SECTOR)
        for s in range(first, first + count):
            bit = (b % chunk_ratio) * spb + s
            bitmap[bit // 8] |= 1 << (bit % 8)

    put_sectors(0, 0, spb, 0x11)
    put_sectors(1, 0, 1, 0x21)
    put_sectors(1, 3, 8, 0x22)
    put_sectors(1, spb - 1, 1, 0x23)
    put_sectors(4, 100, 100, 0x24)
    for b, state in () if opts.get("plain") else ((2, 2), (5, 3), (6, 1)):
        set_state(b, state)
        guest[b * BLOCK:(b + 1) * BLOCK] = bytes(BLOCK)
    off = DATA_OFF
    for b in sorted(payload):
        set_state(b, 6 if b == 0 else 7, off)
        off += BLOCK
    struct.pack_into("<Q", bat, 8 * chunk_ratio, BITMAP_OFF | 6)

    with open(child_path, "wb") as f:
        f.write(b"vhdxfile" + utf16("imgfuse tests/vhdx-make-diff.py"))
        dwg = uuid.uuid4().bytes_le
        for pos, data in ((64 * 1024, header(1, dwg)), (128 * 1024, header(2, dwg)), (192 * 1024, region_table()),
                          (256 * 1024, region_table()), (BAT_OFF, bat), (MD_OFF, metadata(size, loc)),
                          (BITMAP_OFF, bitmap)):
            f.seek(pos)
            f.write(data)
        off = DATA_OFF
        for b in sorted(payload):
            f.seek(off)
            f.write(payload[b])
            off += BLOCK
    open(expect_path, "wb").write(guest)


if __name__ == "__main__":
    main()
