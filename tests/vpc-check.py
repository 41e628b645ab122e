#!/usr/bin/env python3
# SPDX-License-Identifier: MIT
"""tests/vpc-check.py IMAGE - a structural check of a VHD image, for the write tests (`qemu-img check`
does not support vpc): the footer at the end has its cookie and a good checksum; for dynamic and
differencing disks the copy at offset 0 equals it, the dynamic header's checksum is good, and every BAT
entry is unused or points at a sector-aligned block that lies after the metadata and before the footer,
with no two blocks overlapping. Prints "No errors were found" and exits 0, else one line per error and 1."""
import os
import struct
import sys

SECTOR = 512


def checksum(buf, at):
    return (~(sum(buf[:at]) + sum(buf[at + 4:]))) & 0xFFFFFFFF


def main():
    path = sys.argv[1]
    errors = []
    size = os.path.getsize(path)
    with open(path, "rb") as f:
        f.seek(size - SECTOR)
        footer = f.read(SECTOR)
        f.seek(0)
        head = f.read(SECTOR)
        if footer[:8] != b"conectix":
            errors.append("no footer cookie at the end")
        elif checksum(footer, 64) != struct.unpack(">I", footer[64:68])[0]:
            errors.append("footer checksum mismatch")
        dtype = struct.unpack(">I", footer[60:64])[0]
        if not errors and dtype in (3, 4):
            if head != footer:
                errors.append("the footer copy at offset 0 differs from the footer at the end")
            hoff = struct.unpack(">Q", footer[16:24])[0]
            f.seek(hoff)
            hdr = f.read(1024)
            if hdr[:8] != b"cxsparse" or checksum(hdr, 36) != struct.unpack(">I", hdr[36:40])[0]:
                errors.append("dynamic header cookie or checksum bad")
            bat_off, _, entries, bsize = struct.unpack(">QIII", hdr[16:36])
            bitmap = ((bsize // SECTOR + 7) // 8 + SECTOR - 1) // SECTOR * SECTOR
            f.seek(bat_off)
            bat = struct.unpack(">%dI" % entries, f.read(entries * 4))
            meta_end = max(hoff + 1024, bat_off + entries * 4)
            spans = []
            for i, e in enumerate(bat):
                if e == 0xFFFFFFFF:
                    continue
                start, end = e * SECTOR, e * SECTOR + bitmap + bsize
                if start < meta_end or end > size - SECTOR:
                    errors.append("BAT entry %d (block at %d..%d) outside the data area" % (i, start, end))
                spans.append((start, end, i))
            spans.sort()
            for a, b in zip(spans, spans[1:]):
                if b[0] < a[1]:
                    errors.append("blocks of BAT entries %d and %d overlap" % (a[2], b[2]))
    for e in errors:
        print("ERROR: " + e)
    if not errors:
        print("No errors were found on the image.")
    sys.exit(1 if errors else 0)


if __name__ == "__main__":
    main()
