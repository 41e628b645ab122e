#!/usr/bin/env python3
# SPDX-License-Identifier: MIT
"""tests/vpc-make-diff.py - writes a VHD differencing disk (disk type 4) over an existing dynamic or fixed
VHD parent, written from the VHD 1.0 specification for the tests (QEMU cannot create one).

The child copies the parent's size fields (creator application, geometry, current size) so both have the
same virtual size, records the parent's UUID and name, and carries the parent locators asked for. Each
write OFF:LEN:BYTE fills LEN bytes (whole sectors) at guest offset OFF with BYTE in the child and sets
exactly those sectors' bitmap bits: every other sector of the disk comes from the parent. With
--parent-raw RAW --expect OUT the expected raw view (parent bytes with the writes applied) goes to OUT.
With --dynamic SIZE and PARENT "none" it writes a plain dynamic disk (type 3) of SIZE bytes instead (the
fuzz seeds use it for blocks smaller than QEMU makes).

Usage: vpc-make-diff.py [--block-size N] [--locators w2ru,w2ku,macx] [--parent-name NAME]
                        [--locator-path PATH] [--parent-raw RAW --expect OUT] [--dynamic SIZE]
                        PARENT|none CHILD [OFF:LEN:BYTE...]
"""
import argparse
import os
import struct
import uuid

SECTOR = 512
PLATFORM = {"w2ru": b"W2ru", "w2ku": b"W2ku", "macx": b"MacX"}


def checksum(buf, at):
    """One's complement of the byte sum, the 4-byte checksum field at 'at' counted as zero."""
    total = sum(buf[:at]) + sum(buf[at + 4:])
    return (~total) & 0xFFFFFFFF


def with_checksum(buf, at):
    buf = bytearray(buf)
    buf[at:at + 4] = b"\0\0\0\0"
    buf[at:at + 4] = struct.pack(">I", checksum(buf, at))
    return bytes(buf)


def read_parent_footer(path):
    with open(path, "rb") as f:
        f.seek(-SECTOR, os.SEEK_END)
        footer = f.read(SECTOR)
    assert footer[:8] == b"conectix", "parent has no VHD footer"
    return footer


def virtual_size(footer):
    """Enough for the tests: the size the child's BAT must cover (the larger of CHS and current size)."""
    cyl, heads, secs = struct.unpack(">HBB", footer[56:60])
    return max(cyl * heads * secs * SECTOR, struct.unpack(">Q", footer[48:56])[0])


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--block-size", type=int, default=2 << 20)
    ap.add_argument("--locators", default="w2ru,w2ku")
    ap.add_argument("--parent-name", help="name in the header (default: the parent's base name)")
    ap.add_argument("--locator-path", help="path the locators name (default: the parent's base name)")
    ap.add_argument("--parent-raw")
    ap.add_argument("--expect")
    ap.add_argument("--dynamic", type=int, help="no parent: a dynamic disk of this many bytes")
    ap.add_argument("parent")
    ap.add_argument("child")
    ap.add_argument("writes", nargs="*")
    a = ap.parse_args()

    if a.dynamic is not None:
        pfooter = bytearray(SECTOR)
        pfooter[0:8] = b"conectix"
        struct.pack_into(">III", pfooter, 8, 2, 0x00010000, 0)
        pfooter[28:32] = b"qem2"  # sized by current_size, not by the CHS geometry
        cyl = min(a.dynamic // SECTOR, 65535)  # a geometry of cyl/1/1 no larger than the disk
        struct.pack_into(">IIQQHBB", pfooter, 32, 0x00050003, 0x5769326B, a.dynamic, a.dynamic, cyl, 1, 1)
        pfooter[68:84] = uuid.uuid4().bytes
        pfooter = bytes(pfooter)
        a.locators = ""
    else:
        pfooter = read_parent_footer(a.parent)
    size = a.dynamic if a.dynamic is not None else virtual_size(pfooter)
    bs = a.block_size
    entries = (size + bs - 1) // bs
    bitmap_size = ((bs // SECTOR + 7) // 8 + SECTOR - 1) // SECTOR * SECTOR
    base = os.path.basename(a.parent)
    target = a.locator_path or base

    # layout: footer copy, dynamic header, BAT, locator data, blocks, footer
    header_off = SECTOR
    bat_off = header_off + 1024
    bat_bytes = (entries * 4 + SECTOR - 1) // SECTOR * SECTOR
    pos = bat_off + bat_bytes
    locs = []
    for name in [x for x in a.locators.split(",") if x]:
        if name == "macx":
            data = ("file://" + (target if target.startswith("/") else "./" + target)).encode()
        else:
            win = target.replace("/", "\\")
            if name == "w2ku" and not win.startswith("\\"):
                win = "C:\\images\\" + win
            elif name == "w2ku":
                win = "C:" + win
            elif not win.startswith("."):
                win = ".\\" + win
            data = win.encode("utf-16-le")
        space = (len(data) + SECTOR - 1) // SECTOR * SECTOR
        locs.append((PLATFORM[name], data, pos, space))
        pos += space

    blocks = {}  # block index -> (bitmap bytearray, data bytearray)
    writes = []
    for w in a.writes:
        off, length, byte = (int(x, 0) for x in w.split(":"))
        assert off % SECTOR == 0 and length % SECTOR == 0 and off + length <= size, w
        writes.append((off, length, byte))
        for sec in range(off // SECTOR, (off + length) // SECTOR):
            bi, si = divmod(sec * SECTOR, bs)
            bm, data = blocks.setdefault(bi, (bytearray(bitmap_size), bytearray(bs)))
            s = si // SECTOR
            bm[s // 8] |= 0x80 >> (s % 8)
            data[si:si + SECTOR] = bytes([byte]) * SECTOR

    bat = bytearray(b"\xff" * bat_bytes)
    block_pos = {}
    for bi in sorted(blocks, reverse=True):  # allocate in reverse: host order differs from guest order
        block_pos[bi] = pos
        struct.pack_into(">I", bat, bi * 4, pos // SECTOR)
        pos += bitmap_size + bs

    footer = bytearray(pfooter)
    footer[16:24] = struct.pack(">Q", header_off)
    footer[60:64] = struct.pack(">I", 3 if a.dynamic is not None else 4)
    footer[68:84] = uuid.uuid4().bytes
    footer = with_checksum(footer, 64)

    hdr = bytearray(1024)
    hdr[0:8] = b"cxsparse"
    hdr[8:16] = b"\xff" * 8
    struct.pack_into(">QIII", hdr, 16, bat_off, 0x00010000, entries, bs)
    hdr[40:56] = pfooter[68:84]
    hdr[56:60] = pfooter[24:28]
    pname = (a.parent_name if a.parent_name is not None else base).encode("utf-16-be")[:512]
    if a.dynamic is not None:
        hdr[40:60] = bytes(20)
        pname = b""
    hdr[64:64 + len(pname)] = pname
    for i, (code, data, off, space) in enumerate(locs):
        struct.pack_into(">4sIIIQ", hdr, 576 + 24 * i, code, space // SECTOR, len(data), 0, off)
    hdr = with_checksum(hdr, 36)

    with open(a.child, "wb") as f:
        f.write(footer)
        f.write(hdr)
        f.seek(bat_off)
        f.write(bat)
        for code, data, off, space in locs:
            f.seek(off)
            f.write(data.ljust(space, b"\0"))
        for bi, (bm, data) in blocks.items():
            f.seek(block_pos[bi])
            f.write(bm)
            f.write(data)
        f.seek(pos)
        f.write(footer)

    if a.expect:
        with open(a.parent_raw, "rb") as f:
            out = bytearray(f.read())
        for off, length, byte in writes:
            out[off:off + length] = bytes([byte]) * length
        with open(a.expect, "wb") as f:
            f.write(out)


if __name__ == "__main__":
    main()
