#!/usr/bin/env bats
# SPDX-License-Identifier: MIT
# tests/map-stream.bats - maps are streamed (issue 16 item 7): `imgfuse map` writes runs as it walks and
# MNT/layers/N/map is generated read by read, so a small hostile image with a huge, fragmented disk (every
# run one cluster) costs neither the command nor the daemon memory that grows with the disk; on normal
# images the output is what it was (the layer maps and `imgfuse map` against qemu-img map).
load helpers

setup() { setup_tmp; cd "$TMP"; }
teardown() { teardown_tmp; }

# shared_l2 OUT CLUSTER_BITS SIZE: tests/make-hostile's fragmented-map bomb (every run one cluster: data,
# unallocated, zero in turn) of SIZE bytes.
shared_l2() {
  python3 - "$BATS_TEST_DIRNAME/make-hostile" "$@" <<'EOF'
import importlib.machinery, sys
mh = importlib.machinery.SourceFileLoader("make_hostile", sys.argv[1]).load_module()
q = mh.q2_shared_l2(int(sys.argv[3]), int(sys.argv[4]),
                    lambda q, i: (q.off(5) | mh.OFLAG_COPIED, 0, mh.OFLAG_ZERO)[i % 3])
open(sys.argv[2], "wb").write(q.image())
EOF
}

# peak_rss_mib: the daemon's peak resident size from MNT/stats.json, in MiB.
peak_rss_mib() {
  python3 -c 'import json, sys; print(json.load(open(sys.argv[1]))["process"]["peak_rss_bytes"] >> 20)' "$MNT/stats.json"
}

# limited CMD...: runs CMD under a 256 MiB address-space limit (not under ASan, which reserves terabytes).
limited() {
  if [ -n "${IMGFUSE_ASAN:-}" ]; then "$@"; else prlimit --as=$((256 << 20)) -- "$@"; fi
}

@test "layers/0/map of a fragmented 4 TiB qcow2: read with cat, head, dd and python at once, daemon peak RSS under 48 MiB" {
  shared_l2 bomb.qcow2 16 $((4 << 40))
  [ "$(stat -c %s bomb.qcow2)" -lt $((2 << 20)) ]
  mount_img -f qcow2 bomb.qcow2 "$MNT"
  map=$MNT/layers/0-bomb.qcow2/map
  [ "$(stat -c %s "$map")" -eq 0 ]   # streamed: size 0, like /proc files
  [ "$(head -n 3 "$map" | tr '\n' ';')" = "0 65536 data;131072 65536 zero;196608 65536 data;" ]
  timeout 60 head -c $((64 << 20)) "$map" > head.txt
  [ "$(stat -c %s head.txt)" -eq $((64 << 20)) ]
  # every line one cluster: L2 entry i data if i % 3 == 0, zero if 2, the unallocated ones left out
  python3 - head.txt <<'EOF'
import sys
lines = open(sys.argv[1]).read().split("\n")[:-1]
assert len(lines) > 2000000, len(lines)
c = 0
for i, l in enumerate(lines):
    while c % 8192 % 3 == 1:
        c += 1
    assert l == "%d 65536 %s" % (c << 16, "data" if c % 8192 % 3 == 0 else "zero"), (i, l)
    c += 1
EOF
  # a read at a later offset continues, one at an earlier offset starts again
  timeout 60 dd if="$map" bs=1M skip=32 count=1 status=none | cmp - <(tail -c +$(((32 << 20) + 1)) head.txt | head -c $((1 << 20)))
  timeout 60 python3 - "$map" head.txt <<'EOF'
import sys
want = open(sys.argv[2], "rb").read()
with open(sys.argv[1], "rb", buffering=0) as f:
    a = f.read(1 << 20)
    f.seek(0)
    b = f.read(4 << 20)
    f.seek(40 << 20)
    c = f.read(1 << 20)
assert a == want[:1 << 20] and b == want[:4 << 20] and c == want[40 << 20:41 << 20]
EOF
  rss=$(peak_rss_mib)
  echo "daemon peak RSS: $rss MiB"
  [ "$rss" -lt 48 ]
  unmount_img
}

@test "layers/N/map of a qcow2 chain: cat, cp, python read() and head give the same text, equal to qemu-img map" {
  qemu-img create -q -f qcow2 -o cluster_size=4096 base.qcow2 64M
  qemu-img create -q -f qcow2 -o cluster_size=4096 -b base.qcow2 -F qcow2 top.qcow2
  # 3000 one-cluster runs in the top (data and zero in turn): a map of several generator steps
  python3 -c '
for i in range(3000):
    print("write -P 0x%x %d 4k" % (i % 250 + 1, i * 8192) if i % 2 == 0 else "write -z %d 4k" % (i * 8192))' > cmds
  qemu-io -f qcow2 top.qcow2 < cmds > /dev/null
  qemu-io -f qcow2 -c "write -P 0x55 32M 1M" base.qcow2 > /dev/null
  mount_img top.qcow2 "$MNT"
  map=$MNT/layers/0-top.qcow2/map
  cat "$map" > cat.txt
  cp "$map" cp.txt
  cp --sparse=always "$map" cp-sparse.txt
  python3 -c 'import sys; sys.stdout.write(open(sys.argv[1]).read())' "$map" > py.txt
  head -c 1000000 "$map" > head.txt
  cmp cat.txt cp.txt
  cmp cat.txt cp-sparse.txt
  cmp cat.txt py.txt
  cmp cat.txt head.txt
  [ "$(wc -l < cat.txt)" -eq 3000 ]
  qemu-img map --output=json top.qcow2 > top.json
  layer_map_equals_qemu top.json cat.txt
  [ "$(cat "$MNT/layers/1-base.qcow2/map")" = "33554432 1048576 data" ]
  unmount_img
}

@test "imgfuse map of a fragmented 4 TiB qcow2 streams: output starts at once, peak RSS under 32 MiB" {
  shared_l2 bomb.qcow2 16 $((4 << 40))
  limited /usr/bin/time -o rss.txt -f %M timeout 120 "$IMGFUSE" map -f qcow2 bomb.qcow2 | head -c $((32 << 20)) > text.txt || true
  [ "$(stat -c %s text.txt)" -eq $((32 << 20)) ]
  sed -n 2p text.txt | grep -qE '^0x0 +0x10000 +0 +data +0x50000 +'
  sed -n 3p text.txt | grep -qE '^0x10000 +0x10000 +1 +unallocated +- +-$'
  echo "imgfuse map peak RSS: $(tail -n 1 rss.txt) KiB"
  [ "$(tail -n 1 rss.txt)" -lt $((32 << 10)) ]
  limited /usr/bin/time -o rss.txt -f %M timeout 120 "$IMGFUSE" map --json -f qcow2 bomb.qcow2 | head -c $((32 << 20)) > json.txt || true
  [ "$(stat -c %s json.txt)" -eq $((32 << 20)) ]
  [ "$(tail -n 1 rss.txt)" -lt $((32 << 10)) ]
}

@test "imgfuse map --json of a fragmented qcow2 (16384 runs, many output pieces) equals qemu-img map" {
  shared_l2 frag.qcow2 12 $((64 << 20))
  "$IMGFUSE" map --json -f qcow2 frag.qcow2 > ours.json
  qemu-img map -f qcow2 --output=json frag.qcow2 > theirs.json
  python3 - ours.json theirs.json <<'EOF'
import json, sys
def runs(path):
    out = []
    for e in json.load(open(path)):
        key = (e["present"], e["zero"], e["data"], e.get("offset") is not None and e["data"])
        if out and out[-1][2] == key and out[-1][0] + out[-1][1] == e["start"]:
            out[-1][1] += e["length"]
        else:
            out.append([e["start"], e["length"], key])
    return out
ours, theirs = runs(sys.argv[1]), runs(sys.argv[2])
assert len(ours) == 16384, len(ours)
assert ours == theirs, (ours[:4], theirs[:4])
EOF
  "$IMGFUSE" map -f qcow2 frag.qcow2 > ours.txt
  [ "$(wc -l < ours.txt)" -eq 16385 ]
}
