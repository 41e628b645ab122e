#!/usr/bin/env python3
# SPDX-License-Identifier: MIT
"""qcow2-vmstate.py IMAGE NAME DISK_SIZE VMSTATE_SIZE: turns the existing internal snapshot NAME of a
qcow2 v3 image into one that holds VM state, by patching its snapshot table entry (qcow2 spec,
"Snapshots"): the 32-bit and 64-bit VM state sizes and the virtual disk size in the extra data.  The test
prepares the VM state bytes beforehand with qemu-io at the offset where the spec puts them (the first L1
entry past DISK_SIZE), while the image is still larger; so no allocation is done here."""
import struct
import sys

path, name, disk_size, vm_size = sys.argv[1], sys.argv[2].encode(), int(sys.argv[3]), int(sys.argv[4])
with open(path, "r+b") as f:
    hdr = f.read(72)
    assert hdr[:4] == b"QFI\xfb" and struct.unpack(">I", hdr[4:8])[0] == 3, "not a qcow2 v3 image"
    nb, table = struct.unpack(">IQ", hdr[60:72])
    pos = table
    for _ in range(nb):
        f.seek(pos)
        fixed = f.read(40)
        id_len, name_len = struct.unpack(">HH", fixed[12:16])
        extra = struct.unpack(">I", fixed[36:40])[0]
        f.seek(pos + 40 + extra + id_len)
        if f.read(name_len) == name:
            assert extra >= 16, "snapshot entry without the v3 extra data"
            f.seek(pos + 32)
            f.write(struct.pack(">I", vm_size if vm_size < 2**32 else 0))
            f.seek(pos + 40)
            f.write(struct.pack(">QQ", vm_size, disk_size))
            sys.exit(0)
        pos += 40 + extra + id_len + name_len
        pos = (pos + 7) // 8 * 8
sys.exit("no snapshot named %s" % name.decode())
