#!/usr/bin/env python3
# SPDX-License-Identifier: MIT
"""tests/dmg-make.py - writes Apple UDIF (DMG) test images from the format's description: a data fork of
chunks, an XML property list whose resource-fork/blkx array holds one base64 "mish" block table per
partition, and the 512-byte "koly" trailer.  Chunks: raw (1), zero fill (0), ignore (2), ADC (0x80000004,
with a small encoder of its literal and copy codes), zlib (0x80000005) and bzip2 (0x80000006), with a
comment chunk and the terminator in each table.  It also writes the disk the image stands for (OUT.src).

Usage: tests/dmg-make.py OUT [CASE]
CASE: all (default: every chunk type, three tables) · small (32 KiB, every type, two tables) · zlib-big (one zlib table, 4 MiB) · short (a zlib
chunk that inflates to half its sectors) · long (one that inflates to more) · lzfse · lzma · count (a
table claiming 2^32-1 chunks) · past (a chunk stored past the end) · bomb (a zlib chunk of 64 MiB + 512
of zeros) · nest (plist nested 100000 deep) · xmlhuge (plist length 2^40)
"""
import base64
import bz2
import os
import struct
import sys
import zlib

SECTOR = 512


def adc_encode(data):
    """ADC: literal runs (0x80 | n-1), 3-byte copies (0x40 | n-4, 16-bit distance-1) for 4..67 bytes."""
    out, lit, i, last = bytearray(), bytearray(), 0, {}

    def flush():
        while lit:
            n = min(128, len(lit))
            out.append(0x80 | (n - 1))
            out.extend(lit[:n])
            del lit[:n]

    while i < len(data):
        key = bytes(data[i:i + 4])
        j = last.get(key)
        if len(key) == 4 and j is not None and 0 < i - j <= 65536:
            n = 4
            while n < 67 and i + n < len(data) and data[j + n] == data[i + n]:
                n += 1
            flush()
            out.append(0x40 | (n - 4))
            out.extend(struct.pack(">H", i - j - 1))
            for k in range(i, i + n):
                last[bytes(data[k:k + 4])] = k
            i += n
        else:
            last[key] = i
            lit.append(data[i])
            i += 1
    flush()
    return bytes(out)


def source(nsec):
    rnd = os.urandom(nsec * SECTOR // 4)
    text = (b"imgfuse dmg test " * (nsec * SECTOR // 68 + 1))[: nsec * SECTOR // 4]
    return rnd + text + bytes(nsec * SECTOR // 4) + bytes(range(256)) * (nsec * SECTOR // 4 // 256)


class Dmg:
    def __init__(self):
        self.fork = bytearray()
        self.tables = []   # (first sector, sector count, [chunk entries])

    def table(self, first, chunks):
        """chunks: (type, sectors, stored bytes or None, optional data-offset override)."""
        entries, sec = [], 0
        for c in chunks:
            ctype, nsec, stored = c[0], c[1], c[2]
            off = len(self.fork)
            if stored:
                self.fork.extend(stored)
            clen = len(stored) if stored else 0
            if len(c) > 3:
                off = c[3]
            entries.append(struct.pack(">IIQQQQ", ctype, 0, sec, nsec, off, clen))
            sec += nsec
        entries.append(struct.pack(">IIQQQQ", 0x7FFFFFFE, 0, sec, 0, len(self.fork), 0))
        entries.append(struct.pack(">IIQQQQ", 0xFFFFFFFF, 0, sec, 0, len(self.fork), 0))
        self.tables.append((first, sec, entries))

    def mish(self, first, nsec, entries, count=None):
        h = bytearray(204)
        h[0:4] = b"mish"
        struct.pack_into(">IQQQII", h, 4, 1, first, nsec, 0, 0, 0)
        struct.pack_into(">II", h, 0x40, 2, 32)
        struct.pack_into(">I", h, 0xC8, len(entries) if count is None else count)
        return bytes(h) + b"".join(entries)

    def plist(self, count=None):
        items = []
        for i, (first, nsec, entries) in enumerate(self.tables):
            data = base64.encodebytes(self.mish(first, nsec, entries, count if i == 0 else None)).decode()
            items.append("\t\t\t<dict>\n\t\t\t\t<key>Attributes</key>\n\t\t\t\t<string>0x0050</string>\n"
                         "\t\t\t\t<key>CFName</key>\n\t\t\t\t<string>disk image (Apple_HFS : %d)</string>\n"
                         "\t\t\t\t<key>Data</key>\n\t\t\t\t<data>\n\t\t\t\t%s\t\t\t\t</data>\n"
                         "\t\t\t\t<key>ID</key>\n\t\t\t\t<string>%d</string>\n"
                         "\t\t\t\t<key>Name</key>\n\t\t\t\t<string>disk image (Apple_HFS : %d)</string>\n"
                         "\t\t\t</dict>\n" % (i, data.replace("\n", "\n\t\t\t\t"), i, i))
        return ('<?xml version="1.0" encoding="UTF-8"?>\n'
                '<!DOCTYPE plist PUBLIC "-//Apple//DTD PLIST 1.0//EN" "http://www.apple.com/DTDs/PropertyList-1.0.dtd">\n'
                '<plist version="1.0">\n<dict>\n\t<key>resource-fork</key>\n\t<dict>\n\t\t<key>blkx</key>\n'
                '\t\t<array>\n' + "".join(items) + '\t\t</array>\n\t</dict>\n</dict>\n</plist>\n').encode()

    def image(self, count=None, plist=None, xml_len=None):
        xml = self.plist(count) if plist is None else plist
        total = max(f + n for f, n, _ in self.tables)
        k = bytearray(512)
        k[0:4] = b"koly"
        struct.pack_into(">IIIQQQQQII", k, 4, 4, 512, 1, 0, 0, len(self.fork), 0, 0, 1, 1)
        struct.pack_into(">QQ", k, 0xD8, len(self.fork), len(xml) if xml_len is None else xml_len)
        struct.pack_into(">IQ", k, 0x1E8, 1, total)
        return bytes(self.fork) + xml + bytes(k)


def build(case):
    d, disk = Dmg(), bytearray()
    if case == "zlib-big":
        src = source(8192)
        chunks = [(0x80000005, 2048, zlib.compress(src[i:i + 2048 * SECTOR])) for i in range(0, len(src), 2048 * SECTOR)]
        d.table(0, chunks)
        return d, src, {}
    if case == "small":
        src = bytearray(source(64))
        s = lambda a, n: bytes(src[a * SECTOR:(a + n) * SECTOR])
        src[32 * SECTOR:40 * SECTOR] = bytes(8 * SECTOR)
        d.table(0, [(1, 8, s(0, 8)), (0x80000005, 8, zlib.compress(s(8, 8))), (0x80000006, 8, bz2.compress(s(16, 8)))])
        d.table(24, [(0x80000004, 8, adc_encode(s(24, 8))), (0, 8, None), (2, 24, None)])
        src[40 * SECTOR:] = bytes(24 * SECTOR)
        return d, bytes(src), {}
    if case in ("all", "short", "long", "lzfse", "lzma", "count", "past", "bomb", "nest", "xmlhuge"):
        src = bytearray(source(1024))   # 512 KiB: quarters random, text, zeros, pattern
        s = lambda a, n: bytes(src[a * SECTOR:(a + n) * SECTOR])
        t0 = [(1, 128, s(0, 128)), (0x80000005, 128, zlib.compress(s(128, 128))), (0x80000006, 128, bz2.compress(s(256, 128)))]
        t0.append((0, 128, None))                         # zero fill: sectors 384..511
        src[384 * SECTOR:512 * SECTOR] = bytes(128 * SECTOR)
        zl = zlib.compress(s(512, 128))
        if case == "short":
            zl = zlib.compress(s(512, 64))
        if case == "long":
            zl = zlib.compress(s(512, 128) + b"x" * 512)
        if case == "bomb":
            zl = zlib.compress(bytes(64 * 1024 * 1024 + 512))
        t1 = [(0x80000004, 128, adc_encode(s(512, 128)) if case not in ("short", "long", "bomb") else None),
              (0x80000004 if case not in ("short", "long", "bomb") else 0x80000005, 128, adc_encode(s(640, 128))),
              (2, 128, None),                             # "ignore": reads as zeros
              (0x80000006, 128, bz2.compress(s(896, 128)))]
        if case in ("short", "long", "bomb"):
            t1[0] = (0x80000005, 128, zl)
            t1[1] = (0x80000004, 128, adc_encode(s(640, 128)))
        src[768 * SECTOR:896 * SECTOR] = bytes(128 * SECTOR)   # under the "ignore" chunk
        if case == "lzfse":
            t1[2] = (0x80000007, 128, b"bvx2")
        if case == "lzma":
            t1[2] = (0x80000008, 128, b"\x5d")
        if case == "past":
            t1[3] = (0x80000006, 128, bz2.compress(s(896, 128)), 1 << 40)
        d.table(0, t0[:2])
        d.table(256, t0[2:])
        d.table(512, t1)
        return d, bytes(src), {"count": 0xFFFFFFFF} if case == "count" else {}
    raise SystemExit("dmg-make.py: unknown case " + case)


def main():
    out = sys.argv[1]
    case = sys.argv[2] if len(sys.argv) > 2 else "all"
    d, src, kw = build(case)
    if case == "nest":
        kw["plist"] = b'<?xml version="1.0"?><plist version="1.0">' + b"<dict>" * 100000 + b"</dict>" * 100000 + b"</plist>"
    if case == "xmlhuge":
        kw["xml_len"] = 1 << 40
    with open(out, "wb") as f:
        f.write(d.image(**kw))
    with open(out + ".src", "wb") as f:
        f.write(src)


if __name__ == "__main__":
    main()
