#!/usr/bin/env bats
# SPDX-License-Identifier: MIT
# ewf.bats - the EWF driver (E01 through libewf): series made by ewfacquire (several segments, deflate,
# encase6 and encase5) read back byte for byte like the source and like ewfexport, every segment opened
# O_RDONLY and named in info and the audit log, acquisition metadata in info and info.json, --rw refused
# by name, --overlay writes kept out of the evidence, a byte changed inside a chunk read as EIO for that
# chunk only (zeros and a line in `errors` under --on-read-error=zero), hostile segment names refused,
# and `imgfuse verify` against the stored MD5/SHA1. Every -f format of ewfacquire reads like its source and
# ewfexport; Ex01 (EWF2), L01 and Lx01 (logical evidence) are refused by name.

load helpers

setup() { setup_tmp; cd "$TMP"; }
teardown() { teardown_tmp; }

CHUNK=32768

# make_source: src.raw, 8 MiB: 3 MiB random, 2 MiB zeros, 3 MiB random.
make_source() {
  head -c 3145728 /dev/urandom > src.raw
  head -c 2097152 /dev/zero >> src.raw
  head -c 3145728 /dev/urandom >> src.raw
}

# acquire FORMAT [ewfacquire options...]: ev.E01 ... from src.raw, 1 MiB segments, deflate, MD5 and SHA1.
acquire() {
  local fmt=$1; shift
  ewfacquire -q -u -t "$TMP/ev" -S 1MiB -c deflate:fast -f "$fmt" -d sha1 -C CASE-21 -e "Jane Examiner" \
    -E EV-7 -D "test disk" "$@" "$TMP/src.raw" > acquire.log 2>&1 || { cat acquire.log; return 1; }
  [ -f ev.E04 ]
}

# corrupt_chunk N: changes one byte of chunk N (which must hold random data, stored as is) in the segment
# file holding it.
corrupt_chunk() {
  python3 - "$1" "$CHUNK" <<'EOF'
import glob, sys
n, chunk = int(sys.argv[1]), int(sys.argv[2])
needle = open("src.raw", "rb").read()[n * chunk + 100:n * chunk + 164]
for seg in sorted(glob.glob("ev.E??")):
    data = bytearray(open(seg, "rb").read())
    at = data.find(needle)
    if at >= 0:
        data[at + 10] ^= 0xff
        open(seg, "wb").write(data)
        sys.exit(0)
sys.exit("chunk not found in any segment")
EOF
}

check_series() {
  local fmt=$1
  make_source
  acquire "$fmt"
  ewfexport -q -u -f raw -t "$TMP/exported" ev.E01 > export.log 2>&1
  cmp exported.raw src.raw
  mount_img ev.E01 "$MNT"
  cmp "$MNT/disk.raw" src.raw
  cmp "$MNT/disk.raw" exported.raw
  grep -q "^  ewf_format: $fmt$" "$MNT/info"
  unmount_img
}

@test "ewf: an encase6 series of several deflate segments reads like the source and like ewfexport" {
  check_series encase6
}

@test "ewf: an encase5 series reads like the source and like ewfexport" {
  check_series encase5
}

@test "ewf: info names every segment and the acquisition metadata; info.json has them under imgfuse" {
  make_source
  acquire encase6
  run "$IMGFUSE" info ev.E01
  [ "$status" -eq 0 ]
  echo "$output"
  n=$(ls ev.E?? | wc -l)
  [[ "$output" == *"segment_files: $n"* ]]
  for i in $(seq 1 "$n"); do
    [[ "$output" == *"segment_$i: ev.E$(printf %02d "$i")"* ]]
  done
  [[ "$output" == *"case_number: CASE-21"* ]]
  [[ "$output" == *"examiner: Jane Examiner"* ]]
  [[ "$output" == *"evidence_number: EV-7"* ]]
  [[ "$output" == *"acquiry_date: "* ]]
  [[ "$output" == *"media_size: 8388608 "* ]]
  [[ "$output" == *"stored_md5: $(md5sum < src.raw | cut -d' ' -f1)"* ]]
  [[ "$output" == *"stored_sha1: $(sha1sum < src.raw | cut -d' ' -f1)"* ]]
  "$IMGFUSE" info --output=json ev.E01 > info.json
  python3 - info.json "$(md5sum < src.raw | cut -d' ' -f1)" <<'EOF'
import json, sys
j = json.load(open(sys.argv[1]))
assert j["format"] == "ewf" and j["virtual-size"] == 8388608, j
text = json.dumps(j["imgfuse"])
for want in ('"case_number": "CASE-21"', '"examiner": "Jane Examiner"', '"stored_md5": "%s"' % sys.argv[2],
             '"segment_1": ', '"media_size": 8388608'):
    assert want in text, (want, text)
EOF
}

@test "ewf: every segment file is opened O_RDONLY, and the audit log lists each with its size" {
  make_source
  acquire encase6
  hash_traced --audit-log audit.log ev.E01
  n=$(ls ev.E?? | wc -l)
  [ "$(grep -c 'ev\.E[0-9][0-9]"' trace.txt)" -ge "$n" ]
  never_opened_for_writing 'ev\.E[0-9][0-9]"'
  python3 - audit.log "$n" <<'EOF'
import json, os, sys
line = json.loads(open(sys.argv[1]).read().splitlines()[-1])
files = [i["file"] for i in line["images"]]
assert len(files) == int(sys.argv[2]), files
for f, i in zip(files, line["images"]):
    assert i["size"] == os.path.getsize(f), i
assert [os.path.basename(f) for f in files] == ["ev.E%02d" % k for k in range(1, len(files) + 1)], files
EOF
}

@test "ewf: --rw is refused by name; --overlay writes land in the overlay and the evidence is unchanged" {
  make_source
  acquire encase6
  sums=$(md5sum ev.E?? | md5sum)
  run "$IMGFUSE" --rw ev.E01 "$MNT"
  [ "$status" -eq 2 ]
  [ "$output" = "imgfuse: ev.E01: EWF evidence files are read-only: mount without --rw (--overlay FILE gives a writable view)" ]
  nothing_mounted "$MNT"
  mount_img --overlay work.qcow2 ev.E01 "$MNT"
  printf 'written through the overlay' | dd of="$MNT/disk.raw" bs=1 seek=4000000 conv=notrunc status=none
  sync "$MNT/disk.raw"
  unmount_img
  [ "$(md5sum ev.E?? | md5sum)" = "$sums" ]
  # the overlay alone (qemu has no ewf driver: backing left out) holds the written cluster
  out=$(qemu-io -r -c 'read -P 0x77 4000000 1' \
    "json:{\"driver\": \"qcow2\", \"backing\": null, \"file\": {\"driver\": \"file\", \"filename\": \"work.qcow2\"}}")
  [[ "$out" == *"read 1/1 bytes"* && "$out" != *"verification failed"* ]]
  mount_img --overlay work.qcow2 ev.E01 "$MNT"
  [ "$(dd if="$MNT/disk.raw" bs=1 skip=4000000 count=27 status=none)" = "written through the overlay" ]
  cmp -n 4000000 "$MNT/disk.raw" src.raw
  unmount_img
}

@test "ewf: a byte changed inside a chunk reads as EIO for that chunk only; --on-read-error=zero lists it" {
  make_source
  acquire encase6
  corrupt_chunk 40
  mount_img ev.E01 "$MNT"
  run dd if="$MNT/disk.raw" of=/dev/null bs=$CHUNK skip=40 count=1 iflag=direct status=none
  [ "$status" -ne 0 ]
  [[ "$output" == *"Input/output error"* ]]
  cmp <(dd if="$MNT/disk.raw" bs=$CHUNK count=40 iflag=direct status=none) <(head -c $((40 * CHUNK)) src.raw)
  cmp <(dd if="$MNT/disk.raw" bs=$CHUNK skip=41 iflag=direct status=none) <(tail -c +$((41 * CHUNK + 1)) src.raw)
  # asked again (libewf's cache now holds the chunk): still EIO
  run dd if="$MNT/disk.raw" of=/dev/null bs=512 skip=$((40 * 64 + 3)) count=1 iflag=direct status=none
  [ "$status" -ne 0 ]
  unmount_img
  grep -q "ev.E01: chunk 40 (bytes $((40 * CHUNK))-$((41 * CHUNK - 1))) fails its checksum: read as EIO" "$TMP/daemon.log"
  mount_img --on-read-error=zero ev.E01 "$MNT"
  python3 - "$MNT/disk.raw" <<'EOF'
import sys
got, src = open(sys.argv[1], "rb").read(), bytearray(open("src.raw", "rb").read())
src[40 * 32768:41 * 32768] = bytes(32768)
assert got == bytes(src)
EOF
  cat "$MNT/errors"
  [ "$(wc -l < "$MNT/errors")" -eq 1 ]
  [[ "$(cat "$MNT/errors")" == "$((40 * CHUNK)) $CHUNK 0 "*"Input/output error" ]]
  unmount_img
}

@test "ewf: concurrent readers get the right bytes (several libewf handles)" {
  make_source
  acquire encase6
  mount_img ev.E01 "$MNT"
  pids=()
  for i in 0 1 2 3 4 5 6 7; do
    dd if="$MNT/disk.raw" of=part$i bs=1M skip=$i count=1 iflag=direct status=none &
    pids+=($!)
  done
  for p in "${pids[@]}"; do wait "$p"; done
  cat part0 part1 part2 part3 part4 part5 part6 part7 | cmp - src.raw
  unmount_img
}

@test "ewf: a segment file that is a symlink out of the image's directory is refused with one line" {
  make_source
  acquire encase6
  mkdir ev && mv ev.E?? ev/
  mkdir elsewhere && mv ev/ev.E03 elsewhere/
  ln -s "$TMP/elsewhere/ev.E03" ev/ev.E03
  run "$IMGFUSE" info ev/ev.E01
  [ "$status" -eq 2 ]
  [ "$output" = "imgfuse: ev/ev.E01: segment file 'ev/ev.E03' refused: it lies outside the image's directory and the --backing-dir directories" ]
  run "$IMGFUSE" info --backing-dir "$TMP/elsewhere" ev/ev.E01
  [ "$status" -eq 0 ]
}

@test "ewf: a series that loops (a later segment is the first file again) is refused with one line" {
  make_source
  acquire encase6
  rm ev.E03
  ln -s ev.E01 ev.E03
  run "$IMGFUSE" info ev.E01
  [ "$status" -eq 2 ]
  [ "$output" = "imgfuse: ev.E01: segment file 'ev.E03' refused: it is the same file as an earlier segment (the series loops)" ]
}

@test "ewf: a file with an E01 magic that libewf cannot read is refused by the ewf driver with one line" {
  printf 'EVF\x09\x0d\x0a\xff\x00' > bad.E01
  head -c 65536 /dev/zero >> bad.E01
  run "$IMGFUSE" info bad.E01
  [ "$status" -eq 2 ]
  [ "${#lines[@]}" -eq 1 ]
  [[ "$output" == "imgfuse: bad.E01: cannot open as EWF: "* ]]
  run "$IMGFUSE" info -f raw bad.E01
  [ "$status" -eq 0 ]
}

@test "verify: an intact series matches its stored MD5 and SHA1 (exit 0, one line)" {
  make_source
  acquire encase6
  run "$IMGFUSE" verify -q ev.E01
  echo "$output"
  [ "$status" -eq 0 ]
  [ "${#lines[@]}" -eq 1 ]
  [ "$output" = "ev.E01: verified: md5 $(md5sum < src.raw | cut -d' ' -f1), sha1 $(sha1sum < src.raw | cut -d' ' -f1) match the stored hashes" ]
  run "$IMGFUSE" verify -p ev.E01
  [ "$status" -eq 0 ]
  [[ "$output" == *"imgfuse: verify: 100% (8.0 MiB of 8.0 MiB)"* ]]
}

@test "verify: a byte changed inside a chunk after acquisition fails with exit 1 and one line" {
  make_source
  acquire encase6
  corrupt_chunk 20
  python3 -c '
import sys
b = bytearray(open("src.raw", "rb").read()); b[20 * 32768:21 * 32768] = bytes(32768)
open("zeroed.raw", "wb").write(b)'
  run "$IMGFUSE" verify ev.E01
  echo "$output"
  [ "$status" -eq 1 ]
  [ "${#lines[@]}" -eq 1 ]
  [ "$output" = "imgfuse: ev.E01: verification failed: the content does not match the stored hash: md5 $(md5sum < zeroed.raw | cut -d' ' -f1) (stored $(md5sum < src.raw | cut -d' ' -f1)), sha1 $(sha1sum < zeroed.raw | cut -d' ' -f1) (stored $(sha1sum < src.raw | cut -d' ' -f1)); 1 unreadable range hashed as zeros, the first 32768 bytes at offset $((20 * CHUNK)) (Input/output error)" ]
}

@test "verify: a format that stores no hash exits 2 with one line; verify takes one image and no --algo" {
  head -c 1048576 /dev/urandom > d.raw
  run "$IMGFUSE" verify d.raw
  [ "$status" -eq 2 ]
  [ "$output" = "imgfuse: d.raw: nothing to verify: the image (format 'raw') stores no content hash" ]
  run "$IMGFUSE" verify --algo sha256 d.raw
  [ "$status" -eq 2 ]
  [ "$output" = "imgfuse: --algo: not taken by verify (the container's stored hashes decide)" ]
  run "$IMGFUSE" verify d.raw d.raw
  [ "$status" -eq 2 ]
}

# Every -f format of Debian's ewfacquire (libewf 20140813); encase7-v2 writes EWF1 (EVF) segments too.
EWF_FORMATS="ewf smart ftk encase2 encase3 encase4 encase5 encase6 encase7 encase7-v2 linen5 linen6 linen7 ewfx"

@test "ewf: every format ewfacquire writes (E01, e01, s01 series) reads like the source and like ewfexport" {
  make_source
  for fmt in $EWF_FORMATS; do
    mkdir "$fmt"
    ewfacquire -q -u -t "$TMP/$fmt/ev" -S 2MiB -c deflate:fast -f "$fmt" "$TMP/src.raw" > "$fmt/log" 2>&1 ||
      { cat "$fmt/log"; return 1; }
    first=$(ls "$fmt" | grep -E '^ev\.[EeSs]01$')
    echo "$fmt: $(ls "$fmt" | tr '\n' ' ')"
    [ "$(head -c 8 "$fmt/$first" | od -An -tx1 | tr -d ' \n')" = "455646090d0aff00" ]   # EWF1: "EVF\t\r\n\xff\0"
    ewfexport -q -u -f raw -t "$TMP/$fmt/exported" "$fmt/$first" > "$fmt/export.log" 2>&1
    cmp "$fmt/exported.raw" src.raw
    mount_img "$fmt/$first" "$MNT"
    cmp "$MNT/disk.raw" src.raw
    grep -q "^  segment_files: $(ls "$fmt" | grep -cE '^ev\.[EeSs][0-9]{2}$')$" "$MNT/info"
    unmount_img
  done
}

@test "ewf: Ex01 (EWF2), L01 and Lx01 (logical evidence) are refused by name, probed or with -f ewf" {
  printf 'EVF2\x0d\x0a\x81\x00' > e.Ex01
  printf 'LVF\x09\x0d\x0a\xff\x00' > l.L01
  printf 'LEF2\x0d\x0a\x81\x00' > l.Lx01
  for f in e.Ex01 l.L01 l.Lx01; do head -c 65536 /dev/urandom >> $f; done
  declare -A why=(
    [e.Ex01]="EWF2 (Ex01) evidence file: not readable (libewf 20140813 reads EWF version 1 only: E01, S01)"
    [l.L01]="logical evidence file (L01): holds files, not a disk image"
    [l.Lx01]="logical evidence file (Lx01): holds files, not a disk image")
  for f in e.Ex01 l.L01 l.Lx01; do
    for how in "" "-f ewf"; do
      run timeout 30 "$IMGFUSE" --foreground $how "$f" "$MNT"
      echo "$how $f -> $status: $output"
      [ "$status" -eq 2 ]
      [ "$output" = "imgfuse: $f: ${why[$f]}" ]
      run "$IMGFUSE" info $how "$f"
      [ "$status" -eq 2 ]
      [ "$output" = "imgfuse: $f: ${why[$f]}" ]
      not_mounted "$MNT"
    done
    run "$IMGFUSE" map "$f"
    [ "$status" -eq 2 ]
    [ "$output" = "imgfuse: $f: ${why[$f]}" ]
    mount_img -f raw "$f" "$MNT"
    same_bytes "$MNT/disk.raw" "$f"
    grep -q "^  looks_like: .*(read it with -f ewf)$" "$MNT/info"
    unmount_img
  done
}

@test "ewf: compressed text, stored random, zero chunks and a short last chunk read like the source, 4 readers at once" {
  # chunks inflated by imgfuse (libdeflate) and chunks stored as is, each checked, read concurrently
  { head -c 1048576 /dev/urandom; seq 1 400000 | head -c 2097152; head -c 1048576 /dev/zero; head -c 1536 /dev/urandom; } > src.raw
  ewfacquire -q -u -t "$TMP/ev" -b 128 -c deflate:best -C C -e E -E 1 -D d src.raw > acquire.log 2>&1 || { cat acquire.log; false; }
  mount_img ev.E01 "$MNT"
  [ "$(stat -c %s "$MNT/disk.raw")" = "$(stat -c %s src.raw)" ]
  for k in 0 1 2 3; do
    cmp <(dd if="$MNT/disk.raw" bs=4096 skip=$((k * 257)) status=none) <(dd if=src.raw bs=4096 skip=$((k * 257)) status=none) &
  done
  for k in 0 1 2 3; do wait -n; done
  cmp "$MNT/disk.raw" src.raw
  unmount_img
}
