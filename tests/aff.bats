#!/usr/bin/env bats
# SPDX-License-Identifier: MIT
# aff.bats - the AFF driver (AFF1 through AFFLIB, loaded when needed): images made by affconvert read back
# byte for byte like the source and like affcat, opened O_RDONLY, metadata and stored MD5/SHA1 in info,
# `imgfuse verify` against them, --rw refused by name, a damaged page read as EIO for that page only.
# AFM (affconvert -a afm) and AFD (affconvert -o DIR.afd) images read like the source and affcat, every
# file opened O_RDONLY; a file of theirs that leads out of the image's directory is refused with one line.

load helpers

setup() { setup_tmp; cd "$TMP"; }
teardown() { teardown_tmp; }

PAGE=65536

# make_aff: src.raw (compressible text, then zeros) and src.aff of 64 KiB pages.
make_aff() {
  head -c 786432 /dev/urandom | base64 -w 0 > src.raw
  head -c 1048576 /dev/zero >> src.raw
  affconvert -q -s64k src.raw > convert.log 2>&1 || { cat convert.log; return 1; }
  [ -f src.aff ]
}

@test "aff: an affconvert image reads like the source and like affcat; info has its hashes; verify passes" {
  make_aff
  affcat src.aff > affcat.raw
  cmp affcat.raw src.raw
  mount_img src.aff "$MNT"
  cmp "$MNT/disk.raw" src.raw
  grep -q "^  format: aff$" "$MNT/info"
  grep -q "^  stored_md5: $(md5sum < src.raw | cut -d' ' -f1)$" "$MNT/info"
  grep -q "^  stored_sha1: $(sha1sum < src.raw | cut -d' ' -f1)$" "$MNT/info"
  grep -q "^  page_size: $PAGE " "$MNT/info"
  unmount_img
  run "$IMGFUSE" verify -q src.aff
  [ "$status" -eq 0 ]
  [ "$output" = "src.aff: verified: md5 $(md5sum < src.raw | cut -d' ' -f1), sha1 $(sha1sum < src.raw | cut -d' ' -f1) match the stored hashes" ]
}

@test "aff: --rw is refused by name; the file is opened O_RDONLY" {
  make_aff
  run "$IMGFUSE" --rw src.aff "$MNT"
  [ "$status" -eq 2 ]
  [ "$output" = "imgfuse: src.aff: AFF evidence files are read-only: mount without --rw (--overlay FILE gives a writable view)" ]
  nothing_mounted "$MNT"
  hash_traced src.aff
  grep -q 'src\.aff"' trace.txt
  never_opened_for_writing 'src\.aff"'
}

@test "aff: a byte changed inside a page reads as EIO for that page only; verify fails with one line" {
  make_aff
  python3 - <<'EOF'
d = bytearray(open("src.aff", "rb").read())
at = d.find(b"page5")
assert at > 0
d[at + 200] ^= 0xff
open("src.aff", "wb").write(d)
EOF
  mount_img src.aff "$MNT"
  run dd if="$MNT/disk.raw" of=/dev/null bs=$PAGE skip=5 count=1 iflag=direct status=none
  [ "$status" -ne 0 ]
  cmp <(dd if="$MNT/disk.raw" bs=$PAGE count=5 iflag=direct status=none) <(head -c $((5 * PAGE)) src.raw)
  cmp <(dd if="$MNT/disk.raw" bs=$PAGE skip=6 iflag=direct status=none) <(tail -c +$((6 * PAGE + 1)) src.raw)
  unmount_img
  grep -q "src.aff: page 5 cannot be read or inflated: read as EIO" "$TMP/daemon.log"
  run "$IMGFUSE" verify src.aff
  echo "$output"
  [ "$status" -eq 1 ]
  [ "${#lines[@]}" -eq 1 ]
  [[ "$output" == "imgfuse: src.aff: verification failed: the content does not match the stored hash: md5 "*"; 1 unreadable range hashed as zeros, the first $PAGE bytes at offset $((5 * PAGE)) (Input/output error)" ]]
}

@test "aff: a file with the AFF magic that AFFLIB cannot open is refused with one line" {
  printf 'AFF10\r\n\0' > bad.aff
  head -c 5000 /dev/urandom >> bad.aff
  run "$IMGFUSE" info bad.aff
  [ "$status" -eq 2 ]
  [ "$output" = "imgfuse: bad.aff: cannot open as AFF: Input/output error" ]
}

# make_afm [affconvert options]: src.raw as src.afm (metadata) and raw files src.000, src.001, ...
make_afm() {
  head -c 786432 /dev/urandom > src.raw
  head -c 1048576 /dev/zero >> src.raw
  head -c 262144 /dev/urandom >> src.raw
  affconvert -q -a afm "$@" src.raw > convert.log 2>&1 || { cat convert.log; return 1; }
  [ -f src.afm ] && [ -f src.000 ]
}

# make_afd: src.raw as ev.afd/, a directory of .aff files of 64 KiB pages, 256 KiB each at most.
make_afd() {
  head -c 786432 /dev/urandom | base64 -w 0 > src.raw
  head -c 1048576 /dev/zero >> src.raw
  affconvert -q -s64k -M256k -o ev.afd src.raw > convert.log 2>&1 || { cat convert.log; return 1; }
  [ "$(ls ev.afd | wc -l)" -ge 3 ]
}

@test "aff: an AFM (affconvert -a afm: metadata beside split raw files) reads like the source and affcat" {
  make_afm -s1m -M1m
  [ "$(ls src.0?? | wc -l)" -eq 2 ]
  affcat src.afm > affcat.raw
  cmp affcat.raw src.raw
  mount_img src.afm "$MNT"
  cmp "$MNT/disk.raw" src.raw
  grep -q "^  aff_layout: AFM$" "$MNT/info"
  grep -q "^  files: 3$" "$MNT/info"
  grep -q "^  file_1: src.afm$" "$MNT/info"
  grep -q "^  file_2: src.000$" "$MNT/info"
  grep -q "^  file_3: src.001$" "$MNT/info"
  grep -q "^  stored_md5: $(md5sum < src.raw | cut -d' ' -f1)$" "$MNT/info"
  unmount_img
  run "$IMGFUSE" verify -q src.afm
  [ "$status" -eq 0 ]
  # every file opened O_RDONLY
  hash_traced src.afm
  grep -q 'src\.001"' trace.txt
  never_opened_for_writing 'src\.(afm|000|001)"'
}

@test "aff: an AFD (affconvert -o DIR.afd) reads like the source and affcat, named by any of its .aff files" {
  make_afd
  affcat ev.afd > affcat.raw
  cmp affcat.raw src.raw
  n=$(ls ev.afd | wc -l)
  for f in ev.afd/*.aff; do
    mount_img "$f" "$MNT"
    cmp "$MNT/disk.raw" src.raw
    grep -q "^  aff_layout: AFD$" "$MNT/info"
    grep -q "^  files: $n$" "$MNT/info"
    grep -q "^  file_1: $f$" "$MNT/info"
    unmount_img
  done
  run "$IMGFUSE" verify -q ev.afd/file_000.aff
  [ "$status" -eq 0 ]
  hash_traced ev.afd/file_000.aff
  [ "$(grep -cE 'ev\.afd/file_[0-9]+\.aff"' trace.txt)" -ge "$n" ]
  never_opened_for_writing 'ev\.afd/file_[0-9]+\.aff"'
}

@test "aff: an AFM or AFD file that leads out of the image's directory, or is missing, is refused with one line" {
  make_afm -s1m -M1m
  mkdir -p away img
  mv src.001 away/
  ln -s ../away/src.001 img/src.001
  cp src.afm src.000 img/
  run "$IMGFUSE" info img/src.afm
  echo "$output"
  [ "$status" -eq 2 ]
  [[ "$output" == "imgfuse: img/src.afm: AFM file 'img/src.001' refused: "* ]]
  rm img/src.001 img/src.000
  run "$IMGFUSE" info img/src.afm
  [ "$status" -eq 2 ]
  [ "$output" = "imgfuse: img/src.afm: AFM raw file 'img/src.000' missing" ]
  make_afd
  mv ev.afd/file_001.aff away/
  ln -s ../away/file_001.aff ev.afd/file_001.aff
  run "$IMGFUSE" info ev.afd/file_000.aff
  echo "$output"
  [ "$status" -eq 2 ]
  [[ "$output" == "imgfuse: ev.afd/file_000.aff: AFD file 'ev.afd/file_001.aff' refused: "* ]]
  rm ev.afd/file_001.aff
  mkfifo ev.afd/file_009.aff
  run timeout 10 "$IMGFUSE" info ev.afd/file_000.aff
  [ "$status" -eq 2 ]
  [ "$output" = "imgfuse: ev.afd/file_000.aff: AFD file 'ev.afd/file_009.aff' refused: not a regular file" ]
}
