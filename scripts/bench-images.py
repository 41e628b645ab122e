#!/usr/bin/env python3
# SPDX-License-Identifier: MIT
"""scripts/bench-images.py - the disk behind scripts/bench's format rows (issues 19-21), and its DMG.

  bench-images.py mix OUT SIZE   writes the mixed disk: groups of min(64 MiB, SIZE/4), each a quarter of
                                 random bytes (incompressible), a quarter of text lines (numbers and words,
                                 about 4x with zlib) and a half of zeros (unallocated blocks in the sparse
                                 formats, zero chunks in DMG, empty chunks in E01)
  bench-images.py dmg SRC OUT    writes a UDIF image of SRC as hdiutil's UDZO does: one block table of
                                 1 MiB chunks, zlib (level 1, hdiutil's default) for chunks that hold data
                                 and zero-fill chunks for all-zero ones; the chunks stream to OUT, so the
                                 memory used stays at one chunk and the table (tests/dmg-make.py writes
                                 the property list and the trailer)
"""
import importlib.util
import os
import sys
import zlib

MiB = 1 << 20
SECTOR = 512
CHUNK = MiB


def parse_size(text):
    units = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}
    if text[-1:].upper() in units:
        return int(text[:-1]) * units[text[-1:].upper()]
    return int(text)


def text_block(n, seed):
    """n bytes of text lines: a running number, a derived one and a few words."""
    words = [b"evidence", b"sector", b"cluster", b"imgfuse", b"volume", b"journal", b"inode", b"extent"]
    out, i = bytearray(), seed
    while len(out) < n:
        out += b"%d %d %s %s\n" % (i, (i * 7919) % 1000003, words[i % 8], words[(i // 8) % 8])
        i += 1
    return bytes(out[:n])


def mix(out, size):
    group = max(4 * SECTOR, min(64 * MiB, size // 4))
    quarter = group // 4
    with open(out, "wb") as f:
        pos, g = 0, 0
        while pos < size:
            for part in (os.urandom(quarter), text_block(quarter, g * 1000003), bytes(2 * quarter)):
                part = part[:size - pos]
                f.write(part)
                pos += len(part)
            g += 1


class StreamFork:
    """The data fork written straight to a file: tests/dmg-make.py's Dmg only extends it and asks its
    length; bytes() of it is empty, so Dmg.image() returns the property list and the trailer."""
    def __init__(self, f):
        self.f, self.n = f, 0

    def extend(self, data):
        self.f.write(data)
        self.n += len(data)

    def __len__(self):
        return self.n

    def __bytes__(self):
        return b""


def chunk_entries(s, src):
    while True:
        data = s.read(CHUNK)
        if not data:
            return
        if len(data) % SECTOR:
            raise SystemExit("bench-images.py: %s is not a whole number of sectors" % src)
        if data.count(0) == len(data):
            yield (0, len(data) // SECTOR, None)
        else:
            yield (0x80000005, len(data) // SECTOR, zlib.compress(data, 1))


def dmg(src, out):
    here = os.path.dirname(os.path.abspath(__file__))
    spec = importlib.util.spec_from_file_location("dmg_make", os.path.join(here, "..", "tests", "dmg-make.py"))
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    d = mod.Dmg()
    with open(src, "rb") as s, open(out, "wb") as f:
        d.fork = StreamFork(f)
        d.table(0, chunk_entries(s, src))   # a generator: one compressed chunk in memory at a time
        f.write(d.image())


def main():
    if len(sys.argv) == 4 and sys.argv[1] == "mix":
        mix(sys.argv[2], parse_size(sys.argv[3]))
    elif len(sys.argv) == 4 and sys.argv[1] == "dmg":
        dmg(sys.argv[2], sys.argv[3])
    else:
        raise SystemExit(__doc__)


if __name__ == "__main__":
    main()
