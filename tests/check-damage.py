#!/usr/bin/env python3
# SPDX-License-Identifier: MIT
"""check-damage.py FORMAT IMAGE MODE: crafts one kind of damage in an image qemu-img made, for
tests/check.bats (imgfuse check against qemu-img check). Written from the formats' specifications; every
mode expects guest clusters/blocks 0 and 1 (parallels and vdi: 0 and 2, of 1 MiB) to be allocated, for
qcow2/qed in the first L2 table.
  qcow2   leak (a cluster appended with refcount 1), reftable-ref (guest cluster 1's L2 entry points at
          the refcount table, the cluster after the header), alias (guest cluster 1's L2 entry names
          guest cluster 0's data cluster: an overlapping allocation)
  qed     leak (a cluster appended), l2-on-l1 (guest cluster 1 points at the L1 table), past-eof (guest
          cluster 1 points past the end of the file), alias
  parallels  leak (a cluster appended), past-eof (BAT entry 0 past the end of the file), in-use
          (the in-use flag of an image not closed cleanly), alias (BAT entry 2 = BAT entry 0)
  vdi     alias (block map entry 2 = entry 0), count (the header's allocated-block count off by one)
  vpc     alias (BAT entry 1 = BAT entry 0)
  vmdk    past-eof (the grain of guest grain 0 past the end of the file, both grain tables)
  vhdx    past-eof (payload block 0's BAT entry past the end of the file)"""
import os
import struct
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))


def qcow2_set_refcount(f, hdr, ci, value):
    cluster_bits = struct.unpack(">I", hdr[20:24])[0]
    order = struct.unpack(">I", hdr[96:100])[0] if struct.unpack(">I", hdr[4:8])[0] >= 3 else 4
    bits = 1 << order
    per_block = (1 << cluster_bits) * 8 // bits
    rt_off = struct.unpack(">Q", hdr[48:56])[0]
    f.seek(rt_off + 8 * (ci // per_block))
    blk = struct.unpack(">Q", f.read(8))[0] & ~0x1FF
    assert blk and bits == 16, "refcount block missing or not 16-bit refcounts"
    f.seek(blk + (ci % per_block) * 2)
    f.write(struct.pack(">H", value))


def qcow2(f, mode):
    hdr = f.read(104)
    assert hdr[:4] == b"QFI\xfb"
    cbits = struct.unpack(">I", hdr[20:24])[0]
    csize = 1 << cbits
    f.seek(struct.unpack(">Q", hdr[40:48])[0])
    l2 = struct.unpack(">Q", f.read(8))[0] & 0x00FFFFFFFFFFFE00
    f.seek(l2)
    e0, e1 = struct.unpack(">QQ", f.read(16))
    assert e0 & 0x00FFFFFFFFFFFE00 and e1 & 0x00FFFFFFFFFFFE00, "guest clusters 0 and 1 must be allocated"
    if mode == "leak":
        end = (os.fstat(f.fileno()).st_size + csize - 1) // csize * csize
        f.truncate(end + csize)
        qcow2_set_refcount(f, hdr, end // csize, 1)
    elif mode == "reftable-ref":
        rt = struct.unpack(">Q", hdr[48:56])[0]
        f.seek(l2 + 8)
        f.write(struct.pack(">Q", (1 << 63) | rt))
    elif mode == "alias":
        f.seek(l2 + 8)
        f.write(struct.pack(">Q", e0))
    else:
        sys.exit("unknown qcow2 mode " + mode)


def qed(f, mode):
    h = f.read(64)
    assert h[:4] == b"QED\0"
    csize, table_size, header_size = struct.unpack("<III", h[4:16])
    l1 = struct.unpack("<Q", h[40:48])[0]
    if mode == "leak":
        end = (os.fstat(f.fileno()).st_size + csize - 1) // csize * csize
        f.truncate(end + csize)
        return
    f.seek(l1)
    l2 = struct.unpack("<Q", f.read(8))[0]
    f.seek(l2)
    e0, e1 = struct.unpack("<QQ", f.read(16))
    assert e0 > 1 and e1 > 1, "guest clusters 0 and 1 must be allocated"
    f.seek(l2 + 8)
    if mode == "l2-on-l1":
        f.write(struct.pack("<Q", l1))
    elif mode == "past-eof":
        f.write(struct.pack("<Q", (os.fstat(f.fileno()).st_size // csize + 16) * csize))
    elif mode == "alias":
        f.write(struct.pack("<Q", e0))
    else:
        sys.exit("unknown qed mode " + mode)


def parallels(f, mode):
    h = f.read(64)
    assert h[:16] in (b"WithoutFreeSpace", b"WithouFreSpacExt")
    tracks = struct.unpack("<I", h[28:32])[0]
    csize = tracks * 512
    f.seek(64)
    b0, b1 = struct.unpack("<II", f.read(8))
    if mode == "leak":
        size = os.fstat(f.fileno()).st_size
        f.truncate(size + csize)
    elif mode == "past-eof":
        unit = csize if h[:16] == b"WithouFreSpacExt" else 512
        f.seek(64)
        f.write(struct.pack("<I", (os.fstat(f.fileno()).st_size + 64 * csize) // unit))
    elif mode == "in-use":
        f.seek(44)
        f.write(struct.pack("<I", 0x746F6E59))
    elif mode == "alias":
        f.seek(64 + 8)
        b2 = struct.unpack("<I", f.read(4))[0]
        assert b0 and b2, "clusters 0 and 2 must be allocated"
        f.seek(64 + 8)
        f.write(struct.pack("<I", b0))
    else:
        sys.exit("unknown parallels mode " + mode)


def vdi(f, mode):
    h = f.read(0x190)
    bmap = struct.unpack("<I", h[0x154:0x158])[0]
    if mode == "alias":
        f.seek(bmap)
        b0, _, b2 = struct.unpack("<III", f.read(12))
        assert b0 < 0xFFFFFFFE and b2 < 0xFFFFFFFE, "blocks 0 and 2 must be allocated"
        f.seek(bmap + 8)
        f.write(struct.pack("<I", b0))
    elif mode == "count":
        n = struct.unpack("<I", h[0x184:0x188])[0]
        f.seek(0x184)
        f.write(struct.pack("<I", n + 1))
    else:
        sys.exit("unknown vdi mode " + mode)


def vpc(f, mode):
    f.seek(0)
    foot = f.read(512)
    assert foot[:8] == b"conectix"
    dyn = struct.unpack(">Q", foot[16:24])[0]
    f.seek(dyn)
    dh = f.read(1024)
    bat = struct.unpack(">Q", dh[16:24])[0]
    f.seek(bat)
    b0, b1 = struct.unpack(">II", f.read(8))
    assert mode == "alias" and b0 != 0xFFFFFFFF and b1 != 0xFFFFFFFF
    f.seek(bat + 4)
    f.write(struct.pack(">I", b0))


def vmdk(f, mode):
    h = f.read(512)
    assert h[:4] == b"KDMV" and mode == "past-eof"
    gte_per_gt = struct.unpack("<I", h[44:48])[0]
    rgd, gd = struct.unpack("<QQ", h[48:64])
    beyond = (os.fstat(f.fileno()).st_size + (1 << 20)) // 512
    for gd_sector in (gd, rgd):
        if not gd_sector:
            continue
        f.seek(gd_sector * 512)
        gt = struct.unpack("<I", f.read(4))[0]
        assert gt, "no grain table for guest grain 0"
        f.seek(gt * 512)
        f.write(struct.pack("<I", beyond))
    del gte_per_gt


def vhdx(path, mode):
    import vhdxlib
    img = vhdxlib.Image(path)
    assert mode == "past-eof"
    off = img.bat_entry_offset(0)
    img.f.close()
    size = os.path.getsize(path)
    with open(path, "r+b") as f:
        f.seek(off)
        f.write(struct.pack("<Q", ((size >> 20) + 64) << 20 | 6))


def main():
    fmt, path, mode = sys.argv[1:4]
    if fmt == "vhdx":
        return vhdx(path, mode)
    with open(path, "r+b") as f:
        {"qcow2": qcow2, "qed": qed, "parallels": parallels, "vdi": vdi, "vpc": vpc, "vmdk": vmdk}[fmt](f, mode)


if __name__ == "__main__":
    main()
