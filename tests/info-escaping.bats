#!/usr/bin/env bats
# SPDX-License-Identifier: MIT
# info-escaping.bats - strings an image supplies (here a qcow2 backing name with a newline, a forged
# "read-only: no", a 0xff byte and an ESC) never forge a line or a terminal escape in `imgfuse info`,
# MNT/info and `imgfuse map`, and info.json, `info --json` and `map --json` stay valid UTF-8 JSON with
# U+FFFD for the bad byte and the exact bytes in KEY_hex.

load helpers

setup() { setup_tmp; cd "$TMP"; }
teardown() { teardown_tmp; }

NAME_HEX=626173650a726561642d6f6e6c793a206e6fff1b5b33316d2e726177  # "base\nread-only: no\xff\e[31m.raw"
ESCAPED='base\nread-only: no\xff\x1b[31m.raw'

# make_top: top.qcow2 whose backing name is the hostile name, and a raw file of that name beside it.
make_top() {
  truncate -s 64K plain.raw
  qemu-img create -q -f qcow2 -b plain.raw -F raw top.qcow2 1M
  python3 - "$NAME_HEX" <<'EOF'
import struct, sys
name = bytes.fromhex(sys.argv[1])
open(name, "wb").write(b"\xab" * 65536)
d = bytearray(open("top.qcow2", "rb").read())
off, = struct.unpack(">Q", d[8:16])
d[off:off + len(name)] = name
d[16:20] = struct.pack(">I", len(name))
open("top.qcow2", "wb").write(d)
EOF
}

# check_text FILE: one backing_file line, escaped; the only read-only line (if any) is the real one.
check_text() {
  cat -A "$1"
  [ "$(grep -c '^  backing_file: ' "$1")" -eq 1 ]
  grep -qxF "  backing_file: $ESCAPED" "$1"
  grep -qxF "  backing_resolved: $TMP/$ESCAPED" "$1"
  ! grep -q '^read-only: no' "$1" || false
  ! grep -q $'\x1b' "$1" || false
  ! LC_ALL=C grep -q $'\xff' "$1"
}

# check_json FILE: strict UTF-8, valid JSON; the name reads as U+FFFD in place of the bad byte and its
# exact bytes come back from backing_file_hex.
check_json() {
  python3 - "$1" "$NAME_HEX" "$TMP" <<'EOF'
import json, sys
raw = open(sys.argv[1], "rb").read()
j = json.loads(raw.decode("utf-8"))
name = bytes.fromhex(sys.argv[2])
assert j["backing-filename"] == name.decode("utf-8", "replace"), j["backing-filename"]
assert j["full-backing-filename"] == name.decode("utf-8", "replace"), j["full-backing-filename"]
top = j["imgfuse"]["layers"][0]
assert top["backing_file"] == name.decode("utf-8", "replace"), top["backing_file"]
assert bytes.fromhex(top["backing_file_hex"]) == name
assert bytes.fromhex(top["backing_resolved_hex"]) == sys.argv[3].encode() + b"/" + name
base = j["imgfuse"]["layers"][1]
assert bytes.fromhex(base["filename_hex"]).endswith(name)
EOF
}

@test "info: a backing name with a newline, 0xff and ESC is one escaped line; --json is valid UTF-8 JSON" {
  make_top
  run "$IMGFUSE" info top.qcow2
  [ "$status" -eq 0 ]
  printf '%s\n' "$output" > info.txt
  check_text info.txt
  "$IMGFUSE" info --json top.qcow2 > info.json
  check_json info.json
}

@test "MNT/info and MNT/info.json escape the same way" {
  make_top
  mount_img top.qcow2 "$MNT"
  cp "$MNT/info" info.txt
  cp "$MNT/info.json" info.json
  python3 -c 'import json, sys; json.loads(open(sys.argv[1], "rb").read().decode("utf-8"))' "$MNT/stats.json"
  unmount_img
  check_text info.txt
  [ "$(grep -c '^read-only: ' info.txt)" -eq 1 ]
  grep -qx 'read-only: yes (evidence files opened O_RDONLY)' info.txt
  check_json info.json
}

@test "map: the backing file's name is escaped in text; the JSON (qemu-img's, no file names) is valid UTF-8" {
  make_top
  "$IMGFUSE" map top.qcow2 > map.txt
  cat -A map.txt
  [ "$(wc -l < map.txt)" -eq 3 ]
  grep -qF "$TMP/$ESCAPED" map.txt
  "$IMGFUSE" map --json top.qcow2 > map.json
  python3 - "$NAME_HEX" <<'EOF'
import json, sys
runs = json.loads(open("map.json", "rb").read().decode("utf-8"))
assert [(r["start"], r["length"], r["depth"], r["data"]) for r in runs] == [(0, 65536, 1, True), (65536, 983040, 0, False)], runs
assert all("file" not in r for r in runs), runs
EOF
}

@test "text escaping: a backslash in a name is doubled, valid UTF-8 passes, JSON has no _hex for it" {
  truncate -s 64K 'b\ä.raw'
  qemu-img create -q -f qcow2 -b 'b\ä.raw' -F raw t.qcow2 1M
  run "$IMGFUSE" info t.qcow2
  [[ "$output" == *"  backing_file: b\\\\ä.raw"* ]]
  "$IMGFUSE" info --json t.qcow2 > t.json
  python3 -c '
import json
d = json.load(open("t.json", encoding="utf-8"))
t = d["imgfuse"]["layers"][0]
assert d["backing-filename"] == "b\\ä.raw" and "backing-filename_hex" not in d, d
assert t["backing_file"] == "b\\ä.raw" and "backing_file_hex" not in t, t'
}
