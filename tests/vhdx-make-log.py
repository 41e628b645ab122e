#!/usr/bin/env python3
# SPDX-License-Identifier: MIT
"""vhdx-make-log.py IMAGE RAW EXPECT [--stale] [--flushed-past-end] [--break-crc]

Turns IMAGE, a dynamic VHDX with 1 MiB blocks and at least two fully present blocks and one that is not
(as qemu-img makes them), into an image with a dirty log, written from Microsoft's VHDX specification:
the header's LogGuid is set and the log holds an active sequence of two entries that a reader must replay:
  entry 1: data descriptors replacing two 4 KiB sectors of the first present block, a zero descriptor
           clearing 8 KiB of it;
  entry 2: a data descriptor for the BAT sector, which now gives a block that was not present a new home
           past the end of the file (the log extends the file: three data sectors written there, the
           rest zeros) and puts the second present block in state ZERO; data descriptors for those two sectors.
RAW is the guest content before (qemu-img convert -O raw IMAGE); EXPECT receives the guest content after
the replay. --stale adds an older complete entry (lower sequence number) further on in the log that
writes 0xEE over the first present block: a reader that applies it is wrong. --flushed-past-end claims
the file was flushed beyond its end (a truncated file); --break-crc spoils entry 1's checksum (entry 2's
tail is entry 1, so no complete sequence is left)."""
import os
import struct
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import vhdxlib as v  # noqa: E402

SECTOR = 4096


def data_desc(off, sector, seq):
    return b"desc" + sector[-4:] + sector[:8] + struct.pack("<QQ", off, seq)


def zero_desc(off, length, seq):
    return b"zero" + b"\0" * 4 + struct.pack("<QQQ", length, off, seq)


def data_sector(sector, seq):
    return b"data" + struct.pack("<I", seq >> 32) + sector[8:SECTOR - 4] + struct.pack("<I", seq & 0xFFFFFFFF)


def entry(seq, tail, log_guid, flushed, last, descs):
    """descs: list of ("data", off, 4096 bytes) or ("zero", off, length)."""
    ds, sectors = [], []
    for d in descs:
        if d[0] == "data":
            ds.append(data_desc(d[1], d[2], seq))
            sectors.append(data_sector(d[2], seq))
        else:
            ds.append(zero_desc(d[1], d[2], seq))
    head_len = 64 + 32 * len(ds)
    desc_area = (head_len + SECTOR - 1) // SECTOR * SECTOR
    length = desc_area + SECTOR * len(sectors)
    e = bytearray(b"loge" + b"\0" * 4 + struct.pack("<IIQII", length, tail, seq, len(ds), 0) + log_guid +
                  struct.pack("<QQ", flushed, last))
    e += b"".join(ds)
    e += b"\0" * (desc_area - len(e))
    e += b"".join(sectors)
    v.set_crc(e)
    return e


def main():
    args = [a for a in sys.argv[1:] if not a.startswith("--")]
    opts = {a for a in sys.argv[1:] if a.startswith("--")}
    path, raw_path, expect_path = args
    img = v.Image(path)
    assert img.block_size == v.MiB and not img.has_parent
    present = [b for b in range(img.blocks) if img.bat(b)[0] == 6]
    absent = [b for b in range(img.blocks) if img.bat(b)[0] != 6]
    assert len(present) >= 2 and absent
    b1, bz, bu = present[0], present[1], absent[0]
    host1 = img.bat(b1)[1]
    file_size = os.path.getsize(path)
    new_home = (file_size + v.MiB - 1) // v.MiB * v.MiB
    guest = bytearray(open(raw_path, "rb").read())
    bs = img.block_size
    seq = img.seq + 1000
    log_guid = v.guid("6c0c1c2e-93b7-4e2b-8d3a-55aa55aa0001")

    # entry 1: two data sectors and a zero range inside block b1
    s1, s2 = bytes([0xC1]) * SECTOR, bytes([0xC2]) * (SECTOR - 5) + b"tail!"
    e1_descs = [("data", host1 + SECTOR, s1), ("data", host1 + 2 * SECTOR, s2), ("zero", host1 + 4 * SECTOR, 8192)]
    g = b1 * bs
    guest[g + SECTOR:g + 2 * SECTOR] = s1
    guest[g + 2 * SECTOR:g + 3 * SECTOR] = s2
    guest[g + 4 * SECTOR:g + 6 * SECTOR] = bytes(8192)

    # entry 2: the BAT sector (bu -> new_home, fully present; bz -> ZERO) and two sectors of the new block
    bat_sector_off = img.bat_entry_offset(bu) // SECTOR * SECTOR
    assert img.bat_entry_offset(bz) // SECTOR * SECTOR == bat_sector_off
    sec = bytearray(img.read(bat_sector_off, SECTOR))
    struct.pack_into("<Q", sec, img.bat_entry_offset(bu) - bat_sector_off, new_home | 6)
    struct.pack_into("<Q", sec, img.bat_entry_offset(bz) - bat_sector_off, 2)
    d1, d2 = bytes([0xD1]) * SECTOR, b"head" + bytes([0xD2]) * (SECTOR - 4)
    d3 = bytes([0xD3]) * SECTOR  # the block's last sector: the replayed file holds the whole block
    e2_descs = [("data", bat_sector_off, bytes(sec)), ("data", new_home, d1), ("data", new_home + 2 * SECTOR, d2),
                ("data", new_home + bs - SECTOR, d3)]
    for blk in (bu, bz):
        start = blk * bs
        guest[start:min(start + bs, img.size)] = bytes(min(bs, img.size - start))
    g = bu * bs
    guest[g:g + SECTOR] = d1
    guest[g + 2 * SECTOR:g + 3 * SECTOR] = d2
    guest[g + bs - SECTOR:g + bs] = d3

    flushed = file_size + (v.MiB if "--flushed-past-end" in opts else 0)
    last = new_home + v.MiB
    e1 = entry(seq, 0, log_guid, flushed, last, e1_descs)
    e2 = entry(seq + 1, 0, log_guid, flushed, last, e2_descs)
    if "--break-crc" in opts:
        e1[100] ^= 0xFF
    log = bytearray(e1 + e2)
    if "--stale" in opts:
        pos = len(log) + 2 * SECTOR
        stale = entry(seq - 10, pos, log_guid, flushed, last, [("data", host1, bytes([0xEE]) * SECTOR)])
        log += bytes(pos - len(log)) + stale
    assert len(log) <= img.log_length
    with open(path, "r+b") as f:
        f.seek(img.log_offset)
        f.write(log)
        for off in (64 * v.KiB, 128 * v.KiB):
            f.seek(off)
            h = bytearray(f.read(SECTOR))
            h[48:64] = log_guid
            v.set_crc(h)
            f.seek(off)
            f.write(h)
    open(expect_path, "wb").write(guest)


if __name__ == "__main__":
    main()
