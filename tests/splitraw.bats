#!/usr/bin/env bats
# SPDX-License-Identifier: MIT
# splitraw.bats - the split raw driver: pieces made by `split` (numbered .001/.00 and lettered .aa), of
# uneven sizes, read as one disk byte for byte like `cat` of the pieces; probed by name only when the
# second piece exists, always with -f splitraw; host offsets per piece in the map; pieces outside the
# image's directory or a series that loops refused with one line; --rw refused by name.

load helpers

setup() { setup_tmp; cd "$TMP"; }
teardown() { teardown_tmp; }

# make_source: src.raw, 6000000 bytes: random, zeros, random.
make_source() {
  head -c 3000000 /dev/urandom > src.raw
  truncate -s 5000000 src.raw
  head -c 1000000 /dev/urandom >> src.raw
}

@test "splitraw: numbered pieces of uneven sizes (.001 ...) probe and read like cat of the pieces" {
  make_source
  split -b 1000000 -d -a 3 --numeric-suffixes=1 src.raw disk.
  truncate -s 123457 disk.002
  truncate -s 0 disk.004
  cat disk.0?? > expect.raw
  run "$IMGFUSE" info disk.001
  [ "$status" -eq 0 ]
  echo "$output"
  [[ "$output" == *"format: splitraw"* ]]
  [[ "$output" == *"virtual_size: $(stat -c %s expect.raw) "* ]]
  [[ "$output" == *"segment_files: 6"* ]]
  [[ "$output" == *"segment_2: disk.002 (123457 bytes)"* ]]
  [[ "$output" == *"segment_4: disk.004 (0 bytes)"* ]]
  mount_img disk.001 "$MNT"
  cmp "$MNT/disk.raw" expect.raw
  # a read across three pieces (the empty one between)
  cmp <(dd if="$MNT/disk.raw" bs=1000 skip=2100 count=50 status=none) <(dd if=expect.raw bs=1000 skip=2100 count=50 status=none)
  unmount_img
}

@test "splitraw: lettered pieces (.aa ...) with a sparse piece: bytes like cat, host offsets and holes in the map" {
  make_source
  split -b 777777 src.raw disk.
  [ -f disk.ah ]
  truncate -s 2000000 disk.ac   # grows it with a hole
  cat disk.a? > expect.raw
  "$IMGFUSE" hash disk.aa > ours.txt
  [ "$(cut -d' ' -f1 ours.txt)" = "$(sha256sum < expect.raw | cut -d' ' -f1)" ]
  run "$IMGFUSE" map disk.aa
  echo "$output"
  [ "$status" -eq 0 ]
  # the second piece's data starts at its own host offset 0, in its own file
  grep -qE "^0xbde31 +0xbde31 +0 +data +0x0 +disk.ab$" <<<"$output"
  grep -qE " zero .*disk.ac$| zero *$" <<<"$output"
  mount_img disk.aa "$MNT"
  cmp "$MNT/disk.raw" expect.raw
  unmount_img
}

@test "splitraw: split -d pieces (.00) with -f splitraw; a lone .001 without .002 stays raw" {
  make_source
  split -b 2500000 -d src.raw p.
  [ -f p.02 ]
  cat p.0? > expect.raw
  "$IMGFUSE" hash -f splitraw p.00 > ours.txt
  [ "$(cut -d' ' -f1 ours.txt)" = "$(sha256sum < expect.raw | cut -d' ' -f1)" ]
  cp src.raw lone.001
  run "$IMGFUSE" info lone.001
  [[ "$output" == *"format: raw"* ]]
  cp src.raw plain
  run "$IMGFUSE" info -f splitraw plain
  [ "$status" -eq 2 ]
  [ "$output" = "imgfuse: plain: not a piece of a split raw image: the name must end in a piece number such as .001, .00 or .aa" ]
}

@test "splitraw: --rw is refused by name; every piece is opened O_RDONLY" {
  make_source
  split -b 2000000 -d -a 3 --numeric-suffixes=1 src.raw disk.
  run "$IMGFUSE" --rw disk.001 "$MNT"
  [ "$status" -eq 2 ]
  [ "$output" = "imgfuse: disk.001: split raw images are read-only: mount without --rw (--overlay FILE gives a writable view)" ]
  nothing_mounted "$MNT"
  hash_traced disk.001
  [ "$(grep -c 'disk\.00[123]"' trace.txt)" -ge 3 ]
  never_opened_for_writing 'disk\.00[0-9]"'
}

@test "splitraw: a piece that is a symlink out of the directory, or back to the first piece, is refused" {
  make_source
  mkdir d other
  split -b 2000000 -d -a 3 --numeric-suffixes=1 src.raw d/disk.
  mv d/disk.002 other/
  ln -s "$TMP/other/disk.002" d/disk.002
  run "$IMGFUSE" info d/disk.001
  [ "$status" -eq 2 ]
  [ "$output" = "imgfuse: d/disk.001: piece 'd/disk.002' refused: it lies outside the image's directory and the --backing-dir directories" ]
  rm d/disk.002
  ln -s disk.001 d/disk.002
  run "$IMGFUSE" info d/disk.001
  [ "$status" -eq 2 ]
  [ "$output" = "imgfuse: d/disk.001: piece 'd/disk.002' refused: it is the same file as an earlier piece (the series loops)" ]
}
