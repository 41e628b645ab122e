#!/usr/bin/env python3
# SPDX-License-Identifier: MIT
# tests/luks2-edit.py FILE PYTHON-STATEMENT [--primary-only|--raw-json TEXT]: edits the JSON metadata of a
# LUKS2 container as a spec-following writer would: the statement changes `j` (the parsed JSON of the
# primary copy), the result is written into both header copies (or the primary only) and each copy's
# checksum recomputed. --raw-json puts TEXT as the JSON area verbatim (hostile metadata). --bad-csum
# N: breaks the checksum of copy N (0 primary, 1 secondary) without touching anything else.
import hashlib, json, struct, sys

path, stmt = sys.argv[1], sys.argv[2]
opts = sys.argv[3:]
with open(path, "r+b") as f:
    data = bytearray(f.read(4 << 20))
    hdr_size = struct.unpack(">Q", data[8:16])[0]

    def fix(off, js):
        area = js.encode()
        if len(area) > hdr_size - 4096:
            sys.exit("JSON too large for the area")
        data[off + 4096:off + hdr_size] = area + b"\0" * (hdr_size - 4096 - len(area))
        data[off + 448:off + 512] = b"\0" * 64
        alg = data[off + 72:off + 104].rstrip(b"\0").decode()
        d = hashlib.new(alg, bytes(data[off:off + hdr_size])).digest()
        data[off + 448:off + 448 + len(d)] = d

    if "--bad-csum" in opts:
        n = int(opts[opts.index("--bad-csum") + 1])
        data[n * hdr_size + 448] ^= 0xff
    else:
        if "--raw-json" in opts:
            text = opts[opts.index("--raw-json") + 1]
        else:
            j = json.loads(data[4096:hdr_size].rstrip(b"\0").decode())
            exec(stmt)
            text = json.dumps(j)
        for n in ([0] if "--primary-only" in opts else [0, 1]):
            fix(n * hdr_size, text)
    f.seek(0)
    f.write(data[:2 * hdr_size])
