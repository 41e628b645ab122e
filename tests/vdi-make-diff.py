#!/usr/bin/env python3
# SPDX-License-Identifier: MIT
"""tests/vdi-make-diff.py - writes VirtualBox differencing VDI images (image type 4) over an existing VDI
parent, from the VDI 1.1 header layout, for the tests (neither QEMU nor imgfuse's own create is used, so
the two check each other).

The child copies the parent's disk size, records the parent's uuidCreate as its uuidLinkage and the
parent's uuidModify as its uuidParentModify, and gets a fresh uuidCreate and uuidModify. Each write
OFF:LEN:BYTE allocates the 1 MiB block(s) it touches in the child, each holding the parent's bytes of that
block (from --parent-raw, zeros without it) with LEN bytes at guest offset OFF set to BYTE; each ZERO:B
makes block B a zero entry (reads as zeros whatever the parent holds). Every other block reads from the
parent. With --expect OUT the expected raw view goes to OUT (needs --parent-raw).

--base SIZE writes a plain dynamic VDI (type 1) of SIZE bytes instead, with the same writes over zeros
(PARENT is then "none"). --link UUID and --parent-modify UUID replace the recorded parent UUIDs (the tests'
mismatches); --uuid UUID fixes the child's own uuidCreate.

Usage: vdi-make-diff.py [--parent-raw RAW] [--expect OUT] [--base SIZE] [--link UUID]
                        [--parent-modify UUID] [--uuid UUID] PARENT|none CHILD [OFF:LEN:BYTE|ZERO:B ...]
"""
import argparse
import struct
import uuid

BLOCK = 1 << 20
HEADER_SIZE = 0x190
BMAP_OFFSET = 0x200
FREE, ZERO = 0xFFFFFFFF, 0xFFFFFFFE


def le_uuid(text):
    """A UUID as VirtualBox stores it: the first three fields little-endian."""
    return uuid.UUID(text).bytes_le


def parent_fields(path):
    with open(path, "rb") as f:
        h = f.read(0x200)
    assert struct.unpack_from("<I", h, 0x40)[0] == 0xBEDA107F, "parent is not a VDI image"
    return struct.unpack_from("<Q", h, 0x170)[0], h[0x188:0x198], h[0x198:0x1A8]


def header(kind, size, blocks, allocated, data_off, create, modify, link, parent_modify):
    h = bytearray(0x200)
    h[0:40] = b"<<< Oracle VM VirtualBox Disk Image >>>\n"
    struct.pack_into("<III", h, 0x40, 0xBEDA107F, 0x00010001, HEADER_SIZE)
    struct.pack_into("<II", h, 0x4C, kind, 0)
    h[0x54:0x54 + 20] = b"vdi-make-diff test\0\0"
    struct.pack_into("<II", h, 0x154, BMAP_OFFSET, data_off)
    struct.pack_into("<I", h, 0x168, 512)
    struct.pack_into("<QIIII", h, 0x170, size, BLOCK, 0, blocks, allocated)
    h[0x188:0x198], h[0x198:0x1A8] = create, modify
    h[0x1A8:0x1B8], h[0x1B8:0x1C8] = link, parent_modify
    return bytes(h)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--parent-raw")
    ap.add_argument("--expect")
    ap.add_argument("--base", type=int)
    ap.add_argument("--link")
    ap.add_argument("--parent-modify")
    ap.add_argument("--uuid")
    ap.add_argument("parent")
    ap.add_argument("child")
    ap.add_argument("writes", nargs="*")
    a = ap.parse_args()

    if a.base is not None:
        size, p_create, p_modify, kind = a.base, bytes(16), bytes(16), 1
    else:
        size, p_create, p_modify = parent_fields(a.parent)
        kind = 4
    link = le_uuid(a.link) if a.link else p_create
    parent_modify = le_uuid(a.parent_modify) if a.parent_modify else p_modify
    create = le_uuid(a.uuid) if a.uuid else uuid.uuid4().bytes_le
    blocks = (size + BLOCK - 1) // BLOCK

    view = bytearray(size)
    if a.parent_raw:
        with open(a.parent_raw, "rb") as f:
            got = f.read(size)
        view[:len(got)] = got
    bmap = [FREE] * blocks
    data = []                        # host blocks in order
    for w in a.writes:
        if w.startswith("ZERO:"):
            b = int(w[5:], 0)
            bmap[b] = ZERO
            view[b * BLOCK:min(size, (b + 1) * BLOCK)] = bytes(min(size, (b + 1) * BLOCK) - b * BLOCK)
            continue
        off, length, byte = (int(x, 0) for x in w.split(":"))
        view[off:off + length] = bytes([byte]) * length
        for b in range(off // BLOCK, (off + length - 1) // BLOCK + 1):
            if bmap[b] >= ZERO:
                bmap[b] = len(data)
                data.append(b)
    data_off = BMAP_OFFSET + ((blocks * 4 + 511) // 512) * 512
    with open(a.child, "wb") as f:
        f.write(header(kind, size, blocks, len(data), data_off, create, uuid.uuid4().bytes_le, link
                       if kind == 4 else bytes(16), parent_modify if kind == 4 else bytes(16)))
        f.write(b"".join(struct.pack("<I", e) for e in bmap).ljust(data_off - BMAP_OFFSET, b"\0"))
        for b in data:
            f.write(bytes(view[b * BLOCK:(b + 1) * BLOCK]).ljust(BLOCK, b"\0"))
    if a.expect:
        with open(a.expect, "wb") as f:
            f.write(view)


if __name__ == "__main__":
    main()
