#!/usr/bin/env python3
# SPDX-License-Identifier: MIT
"""tests/sesparselib.py - writes VMDK seSparse extents (the space-efficient sparse format ESXi uses for
snapshots; qemu-img reads it but cannot create it) from the layout alone, for tests/vmdk-sesparse.bats,
tests/make-hostile and the fuzz seeds.  Layout of the files written here (sectors): the const header
at 0, the volatile header at 1, journal header and journal at 2 and 3, the grain directory from 4,
then the grain tables (64 sectors each), free bitmap and backmap (one sector each), and the grains
(8 sectors each).  Grain tables and grains are stored in reverse order of use, so that a reader must
follow the entries, not guess.  Directory entries are 0x10000000 in the top half and the table's index
below; table entries have the type in the top nibble (0 unallocated, 1 unmapped, 2 zero, 3 allocated),
an allocated one holding the grain's index with its low 12 bits in bits 48-59 and the rest in bits 0-47.

Usage: tests/sesparselib.py OUTDIR NAME CAPACITY_BYTES [--parent HINT --parent-cid HEX] [--parent-raw RAW]
writes OUTDIR/NAME.vmdk (descriptor), OUTDIR/NAME-sesparse.vmdk and OUTDIR/NAME.expect.raw (what the disk
reads: the parent's raw bytes under unallocated grains, zeros without a parent).
"""
import functools
import struct
import sys

SECTOR = 512
GRAIN = 4096
GTES = 4096
GT_SECTORS = 64
GD_TYPE = 0x10000000
MAGIC, VERSION, VOLATILE_MAGIC = 0xCAFEBABE, 0x200000001, 0xCAFECAFE
U64 = 0xFFFFFFFFFFFFFFFF


@functools.lru_cache(maxsize=64)
def pattern(seed, n):
    return bytes(((i * 131 + seed * 17 + (i >> 9)) & 0xFF) for i in range(n))


class SeSparse:
    """grains: grain number -> 4096 bytes, "zero" or "unmapped". fields overrides header fields by name,
    gd_override / gte_override: directory / table entry values by index (gte by grain number)."""

    def __init__(self, capacity_bytes, grains=None):
        self.capacity = (capacity_bytes + SECTOR - 1) // SECTOR
        self.grains = dict(grains or {})
        self.fields, self.volatile = {}, {}
        self.gd_override, self.gte_override = {}, {}

    @staticmethod
    def default_grains(capacity_bytes):
        """Data in the first, a middle and the last table, zero and unmapped entries, a grain index over 4096."""
        n = capacity_bytes // GRAIN
        g = {0: pattern(1, GRAIN), 1: pattern(2, GRAIN), 7: "zero", 8: "unmapped", 9: pattern(3, GRAIN)}
        for i in range(20, 20 + 4200, 1):  # over 4096 allocated grains: indexes need the high bits
            if i < n:
                g[i] = pattern(4 + i % 7, GRAIN) if i % 3 else "zero"
        if n > GTES + 10:
            g[GTES + 5] = pattern(9, GRAIN)
            g[GTES + 6] = "zero"
        g[n - 1] = pattern(10, GRAIN)
        return g

    def layout(self):
        n_gd = (self.capacity + GTES * 8 - 1) // (GTES * 8)
        gd_secs = max(1, (n_gd * 8 + SECTOR - 1) // SECTOR)
        tables = sorted({g // GTES for g in self.grains})
        gts = 4 + gd_secs
        free = gts + len(tables) * GT_SECTORS
        backmap = free + 1
        grains = (backmap + 1 + 7) // 8 * 8
        return n_gd, gd_secs, tables, gts, free, backmap, grains

    def image(self):
        n_gd, gd_secs, tables, gts, free, backmap, gr = self.layout()
        data = sorted(g for g, v in self.grains.items() if isinstance(v, bytes))
        index = {g: len(data) - 1 - i for i, g in enumerate(data)}       # reverse order on disk
        tindex = {t: len(tables) - 1 - i for i, t in enumerate(tables)}  # likewise
        f = dict(magic=MAGIC, version=VERSION, capacity=self.capacity, grain=8, gt_size=GT_SECTORS, flags=0,
                 r1=0, r2=0, r3=0, r4=0, vol=1, vol_size=1, jh=2, jh_size=1, j=3, j_size=1, gd=4, gd_size=gd_secs,
                 gts=gts, gts_size=len(tables) * GT_SECTORS, fb=free, fb_size=1, bm=backmap, bm_size=1, grains=gr,
                 grains_size=len(data) * 8)
        f.update(self.fields)
        order = ["magic", "version", "capacity", "grain", "gt_size", "flags", "r1", "r2", "r3", "r4", "vol",
                 "vol_size", "jh", "jh_size", "j", "j_size", "gd", "gd_size", "gts", "gts_size", "fb", "fb_size",
                 "bm", "bm_size", "grains", "grains_size"]
        head = b"".join(struct.pack("<Q", f[k] & U64) for k in order)
        head += bytes(SECTOR - len(head))
        v = dict(magic=VOLATILE_MAGIC, free_gt=len(tables), txn=1, replay=0)
        v.update(self.volatile)
        vol = struct.pack("<QQQQ", *(v[k] & U64 for k in ("magic", "free_gt", "txn", "replay"))).ljust(SECTOR, b"\0")
        gd = bytearray(gd_secs * SECTOR)
        for t in tables:
            struct.pack_into("<Q", gd, 8 * t, (GD_TYPE << 32) | tindex[t])
        for i, val in self.gd_override.items():
            struct.pack_into("<Q", gd, 8 * i, val & U64)
        gtbuf = bytearray(len(tables) * GT_SECTORS * SECTOR)
        for g, val in self.grains.items():
            if isinstance(val, bytes):
                idx = index[g]
                e = (3 << 60) | ((idx & 0xFFF) << 48) | (idx >> 12)
            else:
                e = (2 if val == "zero" else 1) << 60
            e = self.gte_override.get(g, e)
            struct.pack_into("<Q", gtbuf, tindex[g // GTES] * GT_SECTORS * SECTOR + 8 * (g % GTES), e & U64)
        img = bytearray(head + vol + bytes(2 * SECTOR) + gd + gtbuf)
        img += bytes(gr * SECTOR - len(img))
        for g in sorted(data, key=lambda x: index[x]):
            img += self.grains[g]
        return bytes(img)

    def expect(self, parent=None):
        out = bytearray(parent[:self.capacity * SECTOR] if parent else bytes(self.capacity * SECTOR))
        out += bytes(self.capacity * SECTOR - len(out))
        for g, val in self.grains.items():
            out[g * GRAIN:(g + 1) * GRAIN] = val if isinstance(val, bytes) else bytes(GRAIN)
        return bytes(out[:self.capacity * SECTOR])


def descriptor(extent_name, sectors, cid=0x5e5e5e5e, parent_hint=None, parent_cid=None):
    d = "# Disk DescriptorFile\nversion=1\nencoding=\"UTF-8\"\nCID=%08x\nparentCID=%s\n" % (
        cid, "%08x" % parent_cid if parent_cid is not None else "ffffffff")
    d += "isNativeSnapshot=\"no\"\ncreateType=\"seSparse\"\n"
    if parent_hint:
        d += "parentFileNameHint=\"%s\"\n" % parent_hint
    d += "# Extent description\nRW %d SESPARSE \"%s\"\n\n# The Disk Data Base\n#DDB\n\n" % (sectors, extent_name)
    d += "ddb.adapterType = \"lsilogic\"\nddb.virtualHWVersion = \"14\"\n"
    return d.encode()


def main(argv):
    out, name, cap = argv[0], argv[1], int(argv[2])
    opts = dict(zip(argv[3::2], argv[4::2]))
    parent = open(opts["--parent-raw"], "rb").read() if "--parent-raw" in opts else None
    s = SeSparse(cap, SeSparse.default_grains(cap))
    ext = name + "-sesparse.vmdk"
    with open("%s/%s" % (out, ext), "wb") as f:
        f.write(s.image())
    pcid = int(opts["--parent-cid"], 16) if "--parent-cid" in opts else None
    with open("%s/%s.vmdk" % (out, name), "wb") as f:
        f.write(descriptor(ext, s.capacity, parent_hint=opts.get("--parent"), parent_cid=pcid))
    with open("%s/%s.expect.raw" % (out, name), "wb") as f:
        f.write(s.expect(parent))


if __name__ == "__main__":
    main(sys.argv[1:])
