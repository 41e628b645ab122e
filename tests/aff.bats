#!/usr/bin/env bats
# SPDX-License-Identifier: MIT
# aff.bats - the AFF driver (AFF1 through AFFLIB, loaded when needed): images made by affconvert read back
# byte for byte like the source and like affcat, opened O_RDONLY, metadata and stored MD5/SHA1 in info,
# `imgfuse verify` against them, --rw refused by name, a damaged page read as EIO for that page only.

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
  # LeakSanitizer cannot run under ptrace (sanitizer builds): leaks are checked by the other tests
  ASAN_OPTIONS="${ASAN_OPTIONS:-}:detect_leaks=0" strace -f -qq -e trace=open,openat -o trace.txt "$IMGFUSE" hash src.aff
  grep -q 'src\.aff"' trace.txt
  ! grep 'src\.aff"' trace.txt | grep -E 'O_RDWR|O_WRONLY|O_CREAT'
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
