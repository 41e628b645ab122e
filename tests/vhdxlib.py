#!/usr/bin/env python3
# SPDX-License-Identifier: MIT
"""vhdxlib.py - a small reader and writer of VHDX structures for the tests, written from Microsoft's
VHDX specification (MS-VHDX): CRC-32C, GUIDs, the current header, the region table, metadata items and
the BAT. The test generators (vhdx-make-log.py, vhdx-make-diff.py) import it; as a command,
`vhdxlib.py map IMAGE` prints the data extents the BAT gives a fixed or dynamic image ("start end host"
per line, end exclusive, neighbours merged), an oracle for imgfuse's map independent of the driver."""
import re
import struct
import sys
import uuid

MiB = 1 << 20
KiB = 1 << 10


def _crc_table():
    t = []
    for i in range(256):
        c = i
        for _ in range(8):
            c = (c >> 1) ^ 0x82F63B78 if c & 1 else c >> 1
        t.append(c)
    return t


_T = _crc_table()


def _times(mat, vec):
    r, i = 0, 0
    while vec:
        if vec & 1:
            r ^= mat[i]
        vec >>= 1
        i += 1
    return r


def _square(mat):
    return [_times(mat, mat[n]) for n in range(32)]


def _zero_ops():
    """ops[k]: the linear map of the CRC register over 2**k zero bytes."""
    op = [0x82F63B78] + [1 << (n - 1) for n in range(1, 32)]  # one zero bit
    for _ in range(3):
        op = _square(op)
    ops = [op]
    for _ in range(40):
        ops.append(_square(ops[-1]))
    return ops


_ZOPS = []
_NONZERO = re.compile(b"[^\\x00]")


def _skip_zeros(c, n):
    if not _ZOPS:
        _ZOPS.extend(_zero_ops())
    k = 0
    while n:
        if n & 1:
            c = _times(_ZOPS[k], c)
        n >>= 1
        k += 1
    return c


def crc32c(data):
    """CRC-32C; runs of zero bytes are skipped in logarithmic time (test images are mostly zeros)."""
    data = bytes(data)
    c, i, n = 0xFFFFFFFF, 0, len(data)
    while i < n:
        j = data.find(bytes(64), i)
        j = n if j < 0 else j
        for b in data[i:j]:
            c = _T[(c ^ b) & 0xFF] ^ (c >> 8)
        if j >= n:
            break
        m = _NONZERO.search(data, j)
        k = m.start() if m else n
        c = _skip_zeros(c, k - j)
        i = k
    return c ^ 0xFFFFFFFF


def set_crc(buf, at=4):
    """Stores the CRC-32C of buf (with the 4 bytes at `at` zeroed) at `at`; buf is a bytearray."""
    buf[at:at + 4] = b"\0\0\0\0"
    buf[at:at + 4] = struct.pack("<I", crc32c(bytes(buf)))


def crc_ok(buf, at=4):
    b = bytearray(buf)
    stored = struct.unpack_from("<I", b, at)[0]
    b[at:at + 4] = b"\0\0\0\0"
    return crc32c(bytes(b)) == stored


def guid(s):
    """The on-disk bytes of a GUID string (first three fields little-endian)."""
    return uuid.UUID(s).bytes_le


def guid_str(b):
    return "{" + str(uuid.UUID(bytes_le=bytes(b))) + "}"


BAT_GUID = guid("2DC27766-F623-4200-9D64-115E9BFD4A08")
METADATA_GUID = guid("8B7CA206-4790-4B9A-B8FE-575F050F886E")
FILE_PARAMS = guid("CAA16737-FA36-4D43-B3B6-33F0AA44E76B")
DISK_SIZE = guid("2FA54224-CD1B-4876-B211-5DBED83BF4B8")
PAGE83 = guid("BECA12AB-B2E6-4523-93EF-C309E000C746")
LOGICAL_SECTOR = guid("8141BF1D-A96F-4709-BA47-F233A8FAAB5F")
PHYSICAL_SECTOR = guid("CDA348C7-445D-4471-9CC9-E9885251C556")
PARENT_LOCATOR = guid("A8D35F2D-B30B-454D-ABF7-D3D84834AB0C")
LOCATOR_TYPE_VHDX = guid("B04AEFB7-D19E-4A81-B789-25B8E9445913")


class Image:
    """The parsed structures of a VHDX file (read from `path` as needed)."""

    def read(self, off, n):
        self.f.seek(off)
        return self.f.read(n).ljust(n, b"\0")

    def __init__(self, path):
        self.f = open(path, "rb")
        hs = []
        for i, off in enumerate((64 * KiB, 128 * KiB)):
            h = self.read(off, 4096)
            if h[:4] == b"head" and crc_ok(h):
                hs.append((struct.unpack_from("<Q", h, 8)[0], i, off))
        seq, self.header_index, self.header_off = max(hs)
        h = self.read(self.header_off, 4096)
        self.seq = seq
        self.data_write_guid = h[32:48]
        self.log_guid = h[48:64]
        self.log_length, self.log_offset = struct.unpack_from("<IQ", h, 68)
        rt = self.read(192 * KiB, 64 * KiB)
        self.regions = {}
        for i in range(struct.unpack_from("<I", rt, 8)[0]):
            e = rt[16 + 32 * i:48 + 32 * i]
            self.regions[bytes(e[:16])] = struct.unpack_from("<QI", e, 16)
        self.bat_off, self.bat_len = self.regions[BAT_GUID]
        self.md_off, self.md_len = self.regions[METADATA_GUID]
        md = self.read(self.md_off, 64 * KiB)
        self.items = {}
        for i in range(struct.unpack_from("<H", md, 10)[0]):
            e = md[32 + 32 * i:64 + 32 * i]
            off, ln = struct.unpack_from("<II", e, 16)
            self.items[bytes(e[:16])] = self.read(self.md_off + off, ln)
        self.block_size, flags = struct.unpack("<II", self.items[FILE_PARAMS][:8])
        self.has_parent = bool(flags & 2)
        self.size = struct.unpack("<Q", self.items[DISK_SIZE][:8])[0]
        self.logical = struct.unpack("<I", self.items[LOGICAL_SECTOR][:4])[0]
        self.chunk_ratio = (1 << 23) * self.logical // self.block_size
        self.blocks = (self.size + self.block_size - 1) // self.block_size

    def bat_index(self, block):
        return block + block // self.chunk_ratio

    def bat_entry_offset(self, block):
        """File offset of the BAT entry of payload block `block`."""
        return self.bat_off + 8 * self.bat_index(block)

    def bat(self, block):
        e = struct.unpack("<Q", self.read(self.bat_entry_offset(block), 8))[0]
        return e & 7, e >> 20 << 20


def data_extents(img):
    """[start, end, host offset] of every run of fully present blocks, neighbours merged when they lie
    back to back in the file too."""
    ext = []
    for b in range(img.blocks):
        state, host = img.bat(b)
        if state != 6:
            continue
        s, t = b * img.block_size, min((b + 1) * img.block_size, img.size)
        if ext and ext[-1][1] == s and ext[-1][2] + (s - ext[-1][0]) == host:
            ext[-1][1] = t
        else:
            ext.append([s, t, host])
    return ext


if __name__ == "__main__":
    if len(sys.argv) != 3 or sys.argv[1] != "map":
        sys.exit("usage: vhdxlib.py map IMAGE")
    for s, t, h in data_extents(Image(sys.argv[2])):
        print(s, t, h)
