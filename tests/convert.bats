#!/usr/bin/env bats
# SPDX-License-Identifier: MIT
# convert.bats - `imgfuse convert` and `imgfuse resize` against qemu-img: every source format qemu-img
# makes converted into every format imgfuse creates, each result equal to its source by `qemu-img
# compare` and clean by `qemu-img check`; compressed qcow2 written by parallel workers; -B (only the top
# layer copied), several sources, -n, sparse output; refusals with one line; resize the same as
# `qemu-img resize` on a copy.

load helpers

setup() { setup_tmp; cd "$TMP"; }
teardown() { teardown_tmp; }

# Formats imgfuse creates that qemu-img reads and (except raw) checks.
TARGETS="raw qcow2 qcow parallels vpc qed vdi vmdk vhdx"

# make_sources: one image per source format, all holding the same guest bytes as src.raw (32 MiB:
# random, text, zeros, a pattern, unaligned pieces), and a qcow2 chain top.qcow2 -> base.qcow2.
make_sources() {
  python3 - <<'EOF'
import os, random
random.seed(7)
text = b"imgfuse convert test: the quick brown fox. " * 30000
with open("src.raw", "wb") as f:
    for i in range(32):
        k = i % 4
        f.write(os.urandom(1 << 20) if k == 0 else text[:1 << 20] if k == 1 else bytes(1 << 20) if k == 2
                else bytes([i + 1]) * (1 << 20))
EOF
  qemu-io -f raw -c 'write -P 0x5a 7000001 3333' -c 'write -z 9437184 65536' src.raw >/dev/null
  local f
  for f in qcow2 vmdk vpc vhdx vdi qed; do
    qemu-img convert -f raw -O "$f" src.raw "src.$f"
  done
  qemu-img convert -c -f raw -O qcow2 src.raw src.comp.qcow2
  qemu-img create -q -f qcow2 base.qcow2 32M
  fmt_io qcow2 base.qcow2 'write -P 0x11 0 8M' 'write -P 0x22 20M 3M'
  qemu-img create -q -f qcow2 -b base.qcow2 -F qcow2 top.qcow2
  fmt_io qcow2 top.qcow2 'write -P 0x33 1M 1M' 'write -z 21M 64k' 'write -P 0x44 31M 1M' 'write -P 0x55 4095 10000'
}

# same_as SRC DST FMT: qemu-img compare calls them identical, and qemu-img check (where it checks FMT) is clean.
same_as() {
  run qemu-img compare "$1" -F "$3" "$2"
  echo "compare $1 $2: $output"
  [ "$status" -eq 0 ]
  case $3 in raw | vpc | qcow) ;; *) check_clean "$2" ;; esac  # qemu-img checks none of these
}

@test "convert: every source format into every target format equals the source (qemu-img compare, check)" {
  make_sources
  local s t
  for s in src.raw src.qcow2 src.comp.qcow2 src.vmdk src.vpc src.vhdx src.vdi src.qed top.qcow2; do
    for t in $TARGETS; do
      rm -f "out.$t"
      run "$IMGFUSE" convert -O "$t" "$s" "out.$t"
      echo "convert $s -> $t: $status $output"
      [ "$status" -eq 0 ]
      [ -z "$output" ]
      same_as "$s" "out.$t" "$t"
    done
  done
}

@test "convert: the default target format is raw, byte for byte" {
  make_sources
  "$IMGFUSE" convert top.qcow2 out.img
  same_bytes out.img "$(raw_of top.qcow2)"
  "$IMGFUSE" convert -f vmdk src.vmdk out2.img
  same_bytes out2.img src.raw
}

@test "convert: ranges that read as zeros are not written: a sparse raw and qcow2 target" {
  make_sources
  "$IMGFUSE" convert -O raw src.qcow2 out.raw
  "$IMGFUSE" convert -O qcow2 src.raw out.qcow2
  # 8 of the 32 MiB are zeros: they take no space in either target
  [ "$(du -k out.raw | cut -f1)" -le $((25 * 1024)) ]
  run qemu-img map --output=json out.qcow2
  [[ "$output" == *'"start": 2097152, "length": 1048576, "depth": 0, "present": false, "zero": true'* ]]
  # -S 0 writes every byte
  "$IMGFUSE" convert -S 0 -O raw src.qcow2 full.raw
  [ "$(du -k full.raw | cut -f1)" -ge $((32 * 1024)) ]
  same_bytes full.raw src.raw
}

@test "convert -c: compressed qcow2 from parallel workers reads as the source and checks clean" {
  make_sources
  "$IMGFUSE" convert -c -O qcow2 src.raw c.qcow2
  same_as src.raw c.qcow2 qcow2
  run qemu-img check c.qcow2
  [[ "$output" == *"compressed clusters"* ]]
  # the text and pattern MiBs compress; the random ones are stored as they are
  [ "$(stat -c %s c.qcow2)" -lt $((12 * 1024 * 1024)) ]
  run qemu-img map --output=json c.qcow2
  [[ "$output" == *'"start": 1048576, "length": 1048576, "depth": 0, "present": true, "zero": false, "data": true, "compressed": true'* ]] ||
    qemu-img map c.qcow2 2>&1 | grep -q "compressed clusters"
  # zstd compression type, a small cluster size and one worker give the same bytes
  "$IMGFUSE" convert -c -m 1 -O qcow2 -o cluster_size=4096,compression_type=zstd src.qcow2 z.qcow2
  same_as src.raw z.qcow2 qcow2
  # a disk whose last cluster is short
  head -c 1000000 src.raw > odd.raw
  "$IMGFUSE" convert -c -O qcow2 -f raw odd.raw odd.qcow2
  same_as odd.raw odd.qcow2 qcow2
  # a format without compressed clusters
  run "$IMGFUSE" convert -c -O parallels src.raw p.img
  [ "$status" -eq 2 ]
  [ "$output" = "imgfuse: p.img: format 'parallels' cannot be written compressed (-c): qcow2 can" ]
}

@test "convert -c: a compressed qcow2 is then written through a --rw mount and checks clean" {
  make_sources
  "$IMGFUSE" convert -c -O qcow2 src.raw c.qcow2
  mount_img --rw c.qcow2 "$MNT"
  dd if=/dev/urandom of=w.bin bs=64k count=3 status=none
  dd if=w.bin of="$MNT/disk.raw" bs=64k seek=17 conv=notrunc status=none
  cp "$MNT/disk.raw" shown.raw
  unmount_img
  check_clean c.qcow2
  qemu-img convert -O raw c.qcow2 after.raw
  same_bytes after.raw shown.raw
  cmp -n 196608 -i 0:1114112 w.bin after.raw
}

@test "convert -B: the target names the new backing file and holds only the top layer" {
  make_sources
  run "$IMGFUSE" convert -O qcow2 -B base.qcow2 -F qcow2 top.qcow2 out.qcow2
  [ "$status" -eq 0 ]
  qemu-img info out.qcow2 | grep -q "^backing file: base.qcow2"
  run qemu-img compare top.qcow2 out.qcow2
  [ "$status" -eq 0 ]
  check_clean out.qcow2
  # nothing of the base was copied: the 0x11 MiBs come from depth 1
  run qemu-img map --output=json out.qcow2
  [[ "$output" == *'"start": 2097152, "length": 6291456, "depth": 1'* ]]
  # the zeroed range of the top layer is written as zeros (the base has 0x22 there)
  run qemu-io -f qcow2 -c 'read -P 0 21M 64k' out.qcow2
  [[ "$output" != *"Pattern verification failed"* ]]
  run "$IMGFUSE" convert -O qcow2 -B base.qcow2 top.qcow2 x.qcow2
  [ "$status" -eq 2 ]
  [ "$output" = "imgfuse: x.qcow2: backing file specified without backing format; add -F FMT" ]
  run "$IMGFUSE" convert -O raw -B base.qcow2 -F qcow2 top.qcow2 x.raw
  [ "$status" -eq 2 ]
  [ "$output" = "imgfuse: x.raw: format 'raw' does not support backing files" ]
}

@test "convert: several sources are concatenated into one target" {
  make_sources
  head -c 3000000 src.raw > a.raw
  "$IMGFUSE" convert -O qcow2 a.raw top.qcow2 src.vmdk all.qcow2
  { cat a.raw; cat "$(raw_of top.qcow2)"; cat src.raw; } > expect.raw
  qemu-img convert -O raw all.qcow2 all.raw
  # qcow2 rounds the size up to 512 bytes
  [ "$(stat -c %s all.raw)" -eq $(( ($(stat -c %s expect.raw) + 511) / 512 * 512 )) ]
  cmp -n "$(stat -c %s expect.raw)" all.raw expect.raw
  check_clean all.qcow2
}

@test "convert -n: into an existing image; --target-is-zero; a target too small is refused" {
  make_sources
  qemu-img create -q -f qcow2 ex.qcow2 40M
  fmt_io qcow2 ex.qcow2 'write -P 0x77 0 40M'
  "$IMGFUSE" convert -n -O qcow2 src.qcow2 ex.qcow2
  qemu-img convert -O raw ex.qcow2 ex.raw
  cmp -n $((32 << 20)) ex.raw src.raw
  # the zeros of the source overwrote the 0x77 (the target is not known to be zero)
  [ "$(dd if=ex.raw bs=1M skip=2 count=1 status=none | tr -d '\0' | wc -c)" -eq 0 ]
  check_clean ex.qcow2
  qemu-img create -q -f qcow2 small.qcow2 16M
  run "$IMGFUSE" convert -n -O qcow2 src.qcow2 small.qcow2
  [ "$status" -eq 2 ]
  [ "$output" = "imgfuse: small.qcow2: the target is 16777216 bytes, smaller than the 33554432 bytes to copy" ]
  run "$IMGFUSE" convert --target-is-zero -O qcow2 src.qcow2 new.qcow2
  [ "$status" -eq 2 ]
  [ "$output" = "imgfuse: --target-is-zero: needs -n (a new target reads as zeros anyway)" ]
  [ ! -e new.qcow2 ]
}

@test "convert: refusals are one line, and the source is never the target" {
  make_sources
  md5=$(md5sum < src.qcow2)
  run "$IMGFUSE" convert -O qcow2 src.qcow2 src.qcow2
  [ "$status" -eq 2 ]
  [ "$output" = "imgfuse: src.qcow2: the target is also a source (src.qcow2): refusing to overwrite it" ]
  ln -s src.qcow2 link.qcow2
  run "$IMGFUSE" convert -O raw link.qcow2 src.qcow2
  [ "$status" -eq 2 ]
  [ "$(md5sum < src.qcow2)" = "$md5" ]
  run "$IMGFUSE" convert -O nosuch src.qcow2 o.img
  [ "$status" -eq 2 ]
  [ "$output" = "imgfuse: nosuch: unknown image format" ]
  run "$IMGFUSE" convert -O raw missing.qcow2 o.img
  [ "$status" -eq 2 ]
  [ "${#lines[@]}" -eq 1 ]
  [[ "$output" == "imgfuse: missing.qcow2: "* ]]
  [ ! -e o.img ]
  run "$IMGFUSE" convert -m 0 src.qcow2 o.img
  [ "$status" -eq 2 ]
  [ "$output" = "imgfuse: -m: '0' is not a number of parallel requests from 1 to 16" ]
  run "$IMGFUSE" convert src.qcow2
  [ "$status" -eq 2 ]
  [[ "$output" == "imgfuse: usage: imgfuse convert "* ]]
  run "$IMGFUSE" convert --compres src.qcow2 o.img
  [ "$status" -eq 2 ]
  [[ "$output" == *"--compres"*"did you mean --compress?"* ]]
}

@test "convert: a read error in the source is one line naming the source and the offset, exit 1" {
  qemu-img create -q -f qcow2 bad.qcow2 8M
  fmt_io qcow2 bad.qcow2 'write -P 0x11 0 8M'
  # cut the file inside its data clusters: the clusters past the end cannot be read
  truncate -s $(( $(stat -c %s bad.qcow2) - 3 * 1048576 )) bad.qcow2
  run "$IMGFUSE" convert -O raw bad.qcow2 out.raw
  echo "$output"
  [ "$status" -eq 1 ]
  [ "${#lines[@]}" -eq 1 ]
  [[ "$output" == "imgfuse: bad.qcow2: read error at offset "*": Input/output error" ]]
}

@test "convert -p: progress lines on a pipe, nothing with -q; -t writeback syncs" {
  make_sources
  run "$IMGFUSE" convert -p -O qcow2 src.raw p.qcow2
  [ "$status" -eq 0 ]
  [[ "${lines[-1]}" == "imgfuse: convert: 100% (32.0 MiB of 32.0 MiB)" ]]
  run "$IMGFUSE" convert -q -p -O qcow2 src.raw q.qcow2
  [ -z "$output" ]
  run "$IMGFUSE" convert -t writeback -O qcow2 src.raw w.qcow2
  [ "$status" -eq 0 ]
  same_as src.raw w.qcow2 qcow2
  run "$IMGFUSE" convert -t directsync src.raw x.raw
  [ "$status" -eq 2 ]
  [ "$output" = "imgfuse: -t: 'directsync' is not a cache mode: unsafe (default), writeback or none" ]
}

@test "convert: an evidence source is opened read-only and left unchanged" {
  make_sources
  chmod 0444 src.vmdk
  before=$(stat -c '%Y %s' src.vmdk; md5sum < src.vmdk)
  "$IMGFUSE" convert -O qcow2 src.vmdk out.qcow2
  [ "$(stat -c '%Y %s' src.vmdk; md5sum < src.vmdk)" = "$before" ]
  same_as src.vmdk out.qcow2 qcow2
}

# ---------------------------------------------------------------- resize

@test "resize: grow and shrink like qemu-img resize on a copy, byte for byte" {
  qemu-img create -q -f qcow2 a.qcow2 10M
  fmt_io qcow2 a.qcow2 'write -P 0x11 0 10M'
  cp a.qcow2 q.qcow2
  run "$IMGFUSE" resize a.qcow2 +6M
  [ "$status" -eq 0 ]
  [ "$output" = "Image resized." ]
  qemu-img resize -q q.qcow2 +6M
  run qemu-img compare a.qcow2 q.qcow2
  [ "$status" -eq 0 ]
  [ "$(qemu-img info --output=json a.qcow2 | python3 -c 'import json,sys; print(json.load(sys.stdin)["virtual-size"])')" = $((16 << 20)) ]
  check_clean a.qcow2
  run "$IMGFUSE" resize a.qcow2 8M
  [ "$status" -eq 2 ]
  [ "$output" = "imgfuse: a.qcow2: shrinking from 16777216 to 8388608 bytes drops data past the new end: give --shrink to do it" ]
  run "$IMGFUSE" resize -q --shrink a.qcow2 -8M
  [ "$status" -eq 0 ]
  [ -z "$output" ]
  qemu-img resize -q --shrink q.qcow2 -8M
  run qemu-img compare a.qcow2 q.qcow2
  [ "$status" -eq 0 ]
  check_clean a.qcow2
  # raw
  head -c 5000000 /dev/urandom > r.raw
  cp r.raw r2.raw
  "$IMGFUSE" resize -q -f raw r.raw 7M
  qemu-img resize -q -f raw r2.raw 7M
  same_bytes r.raw r2.raw
}

@test "resize: refusals are one line" {
  qemu-img create -q -f vmdk v.vmdk 10M
  run "$IMGFUSE" resize v.vmdk +1M
  [ "$status" -eq 2 ]
  [ "$output" = "imgfuse: v.vmdk: format 'vmdk' cannot be grown by imgfuse" ]
  qemu-img create -q -f qcow2 a.qcow2 10M
  run "$IMGFUSE" resize a.qcow2 -20M
  [ "$status" -eq 2 ]
  [ "$output" = "imgfuse: -20M: invalid size (a size, +SIZE or -SIZE not below zero)" ]
  run "$IMGFUSE" resize a.qcow2
  [ "$status" -eq 2 ]
  [[ "$output" == "imgfuse: usage: imgfuse resize "* ]]
}
