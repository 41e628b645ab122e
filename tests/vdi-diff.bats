#!/usr/bin/env bats
# SPDX-License-Identifier: MIT
# vdi-diff.bats - VirtualBox differencing VDI images (type 4) and `imgfuse create -f vdi`. Differencing
# images written by tests/vdi-make-diff.py from the header layout (QEMU refuses them) and by
# `imgfuse create -b` read back as the expected bytes: the parent found by its UUID among the .vdi files of
# the image's directory or a --backing-dir, or named with --backing (another UUID refused, a modified
# parent warned about); writes copy the parent's block up, fio --verify with 4 jobs on every writable one;
# the images create makes are read by qemu-img as VDI of that size and check clean.

load helpers

setup() { setup_tmp; cd "$TMP"; }
teardown() { teardown_tmp; }

MiB=1048576
MAKE_DIFF="$BATS_TEST_DIRNAME/vdi-make-diff.py"

# base_vdi NAME MIB: a dynamic VDI of MIB MiB made by qemu-img with data in some blocks (the first one and
# a half, the middle, the last 4 KiB), and NAME.raw its raw view.
base_vdi() {
  qemu-img create -q -f vdi "$1" "$2M"
  fmt_io vdi "$1" 'write -P 0x11 0 1536k' "write -P 0x22 $(($2 / 2))M 100000" "write -P 0x33 $(($2 * MiB - 4096)) 4k"
  qemu-img convert -f vdi -O raw "$1" "$1.raw"
}

# uuid_at FILE OFFSET: the 16 bytes of a header UUID, as hex.
uuid_at() { dd if="$1" bs=1 skip=$(($2)) count=16 status=none | od -An -tx1 | tr -d ' \n'; }

# shown_equals MOUNT_OPTS... IMAGE EXPECTED: the mount of IMAGE reads as the file EXPECTED, size and bytes.
shown_equals() {
  local expect=${!#} args=("${@:1:$#-1}")
  mount_img "${args[@]}" "$MNT"
  [ "$(stat -c %s "$MNT/disk.raw")" -eq "$(stat -c %s "$expect")" ]
  same_bytes "$MNT/disk.raw" "$expect"
  unmount_img
}

# fio_verify FILE: four jobs writing and verifying random blocks, each in its own 2 MiB of FILE.
fio_verify() {
  fio --name=v --filename="$1" --rw=randrw --bsrange=512-256k --size=2M --offset_increment=2M --numjobs=4 \
    --verify=crc32c --verify_fatal=1 --ioengine=psync --randseed=19 --group_reporting > fio.log 2>&1 ||
    { cat fio.log; return 1; }
}

# ---------------------------------------------------------------- reading

@test "a differencing VDI reads as its parent with its own blocks and zero entries over it; the parent is found by UUID" {
  base_vdi base.vdi 6
  python3 "$MAKE_DIFF" --parent-raw base.vdi.raw --expect diff.expect base.vdi diff.vdi \
    1000:5000:0x44 ZERO:3 $((5 * MiB + 100)):10:0x55
  # decoys in the same directory: another VDI with another UUID, and junk named .vdi
  qemu-img create -q -f vdi other.vdi 6M
  head -c 4096 /dev/urandom > junk.vdi
  shown_equals diff.vdi diff.expect
  run "$IMGFUSE" info diff.vdi
  [ "$status" -eq 0 ]
  [[ "$output" == *"image_type: differencing"* ]]
  [[ "$output" == *"backing_resolved: $(realpath base.vdi)"* ]]
  [[ "$output" == *"backing_note: found by its identity {"*"} among the .vdi files (1 looked at)"* ]]
  # the untouched block 1 reads the parent's bytes, block 3 zeros although the parent has data there
  mount_img diff.vdi "$MNT"
  cmp -n $MiB -i $MiB:$MiB "$MNT/disk.raw" base.vdi.raw
  cmp -n $MiB -i $((3 * MiB)):0 "$MNT/disk.raw" /dev/zero
  unmount_img
}

@test "a chain of two differencing images over a dynamic base reads as expected; --no-backing shows the top alone" {
  base_vdi base.vdi 6
  python3 "$MAKE_DIFF" --parent-raw base.vdi.raw --expect d1.expect base.vdi d1.vdi 0:4096:0x61 $((2 * MiB)):$MiB:0x62
  python3 "$MAKE_DIFF" --parent-raw d1.expect --expect d2.expect d1.vdi d2.vdi 2048:4096:0x71 ZERO:5
  shown_equals d2.vdi d2.expect
  run "$IMGFUSE" info d2.vdi
  [[ "$output" == *"layers: 3"* ]]
  # without the parents: the top's own block 0 (copied up from d1 when written), zeros elsewhere
  head -c $MiB d2.expect > alone.expect
  truncate -s $((6 * MiB)) alone.expect
  shown_equals --no-backing d2.vdi alone.expect
}

@test "a parent in a --backing-dir is found there; without it the open fails with one line" {
  mkdir store imgs
  base_vdi store/base.vdi 4
  python3 "$MAKE_DIFF" --parent-raw store/base.vdi.raw --expect diff.expect store/base.vdi imgs/diff.vdi 0:512:0x7a
  refused_open imgs/diff.vdi "parent {"
  run "$IMGFUSE" info imgs/diff.vdi
  [ "$status" -eq 2 ]
  [[ "$output" =~ ^imgfuse:\ imgs/diff\.vdi:\ parent\ \{[0-9a-f-]{36}\}\ not\ found:\ no\ \.vdi\ file\ in\ the\ image\'s\ directory\ or\ a\ --backing-dir\ has\ it\ \(0\ looked\ at\)\;\ use\ --backing-dir\ DIR\ or\ --backing\ FILE$ ]]
  shown_equals --backing-dir store imgs/diff.vdi diff.expect
  shown_equals --backing store/base.vdi imgs/diff.vdi diff.expect
}

@test "--backing naming a VDI of another UUID is refused with one line; a modified parent is read with a warning" {
  base_vdi base.vdi 4
  qemu-img create -q -f vdi wrong.vdi 4M
  python3 "$MAKE_DIFF" --parent-raw base.vdi.raw --expect diff.expect base.vdi diff.vdi 0:512:0x7a
  run "$IMGFUSE" info --backing wrong.vdi diff.vdi
  echo "$output"
  [ "$status" -eq 2 ]
  [ "${#lines[@]}" -eq 1 ]
  [[ "${lines[0]}" =~ ^imgfuse:\ diff\.vdi:\ parent\ wrong\.vdi\ has\ UUID\ \{[0-9a-f-]{36}\},\ but\ this\ differencing\ image\ was\ made\ from\ \{[0-9a-f-]{36}\}$ ]]
  refused_open diff.vdi "but this differencing image was made from" --backing wrong.vdi
  # a parent of another format cannot be checked: used, with one warning line
  head -c $((4 * MiB)) /dev/zero | tr '\0' Z > p.raw
  run "$IMGFUSE" info --backing p.raw --backing-format raw diff.vdi
  [ "$status" -eq 0 ]
  [[ "${lines[0]}" == "imgfuse: diff.vdi: warning: parent p.raw is a raw image: its UUID cannot be checked" ]]
  mount_img --backing p.raw --backing-format raw diff.vdi "$MNT"
  cmp -n $MiB -i $MiB:$MiB "$MNT/disk.raw" p.raw
  unmount_img
  # the parent's uuidModify no longer matches uuidParentModify: read, with one warning line
  python3 "$MAKE_DIFF" --parent-modify 01234567-89ab-cdef-0123-456789abcdef --parent-raw base.vdi.raw \
    base.vdi moved.vdi 0:512:0x7a
  run "$IMGFUSE" info moved.vdi
  [ "$status" -eq 0 ]
  [[ "$output" == *"moved.vdi: warning: parent $(realpath base.vdi) was modified after this differencing image was made (its uuidModify is {"*"}, this image expects {01234567-89ab-cdef-0123-456789abcdef}); reading it as it is now"* ]]
  shown_equals moved.vdi diff.expect
}

@test "hostile parents: a symlink out of the allowed directories is not followed, a self link and a loop are refused" {
  mkdir outside imgs
  base_vdi outside/base.vdi 2
  python3 "$MAKE_DIFF" --parent-raw outside/base.vdi.raw outside/base.vdi imgs/diff.vdi 0:512:0x7a
  ln -s ../outside/base.vdi imgs/link.vdi
  run "$IMGFUSE" info imgs/diff.vdi
  [ "$status" -eq 2 ]
  [[ "$output" == *"not found: no .vdi file in the image's directory or a --backing-dir has it (0 looked at)"* ]]
  # an image whose parent UUID is its own
  u=01234567-89ab-cdef-0123-456789abcdef
  python3 "$MAKE_DIFF" --uuid $u --link $u outside/base.vdi self.vdi
  refused_open self.vdi "differencing VDI image names itself as its parent (uuidLinkage = uuidCreate)"
  # a and b each other's parent: the chain never closes
  a=11111111-2222-3333-4444-555555555555 b=66666666-7777-8888-9999-000000000000
  python3 "$MAKE_DIFF" --uuid $a --link $b outside/base.vdi a.vdi
  python3 "$MAKE_DIFF" --uuid $b --link $a outside/base.vdi b.vdi
  run "$IMGFUSE" info a.vdi
  [ "$status" -eq 2 ]
  [ "${#lines[@]}" -eq 1 ]
  [[ "$output" == "imgfuse: $TMP/b.vdi: parent {$a} not found: no .vdi file in the image's directory or a --backing-dir has it (1 looked at); use --backing-dir DIR or --backing FILE" ]]
}

@test "forensic: every candidate and the chain are opened O_RDONLY, nothing is written" {
  base_vdi base.vdi 4
  python3 "$MAKE_DIFF" --parent-raw base.vdi.raw --expect diff.expect base.vdi diff.vdi 0:512:0x7a
  qemu-img create -q -f vdi a-other.vdi 4M     # sorts first: looked at, not taken
  sums=$(sha256sum ./*.vdi)
  ASAN_OPTIONS="${ASAN_OPTIONS:-}:detect_leaks=0" strace -f -qq -e trace=open,openat -o trace.log "$IMGFUSE" info diff.vdi > /dev/null
  grep -E '\.vdi"' trace.log
  ! grep -E '\.vdi".*O_(RDWR|WRONLY)' trace.log || false
  grep -q 'a-other\.vdi", O_RDONLY' trace.log
  shown_equals diff.vdi diff.expect
  [ "$(sha256sum ./*.vdi)" = "$sums" ]
}

# ---------------------------------------------------------------- writing

@test "--rw on a differencing image: writes copy the parent's block up, zeroing hides the parent, the parent is untouched" {
  base_vdi base.vdi 6
  python3 "$MAKE_DIFF" --parent-raw base.vdi.raw --expect expect.raw base.vdi diff.vdi 0:512:0x7a
  parent_sum=$(sha256sum base.vdi)
  modify_before=$(uuid_at diff.vdi 0x198)
  mount_img --rw diff.vdi "$MNT"
  printf 'copied up' | dd of="$MNT/disk.raw" bs=1 seek=$((MiB + 4000)) conv=notrunc status=none
  printf 'copied up' | dd of=expect.raw bs=1 seek=$((MiB + 4000)) conv=notrunc status=none
  fallocate -p -o $((3 * MiB)) -l $MiB "$MNT/disk.raw"        # a whole block: a zero entry
  fallocate -z -o $((5 * MiB + 100)) -l 200 "$MNT/disk.raw"    # part of a block: copied up, then zeroed
  dd if=/dev/zero of=expect.raw bs=1 seek=$((3 * MiB)) count=$MiB conv=notrunc status=none
  dd if=/dev/zero of=expect.raw bs=1 seek=$((5 * MiB + 100)) count=200 conv=notrunc status=none
  same_bytes "$MNT/disk.raw" expect.raw
  unmount_img
  [ "$(sha256sum base.vdi)" = "$parent_sum" ]
  [ "$(uuid_at diff.vdi 0x198)" != "$modify_before" ]   # a new uuidModify for the session that wrote
  shown_equals diff.vdi expect.raw
  run "$IMGFUSE" info diff.vdi
  [[ "$output" == *"blocks_allocated: 3"* ]]            # block 0, and blocks 1 and 5 copied up
  # a read-only mount changes nothing, not even uuidModify
  sum=$(sha256sum diff.vdi)
  shown_equals diff.vdi expect.raw
  [ "$(sha256sum diff.vdi)" = "$sum" ]
}

@test "fio --verify with 4 jobs on a writable differencing image; it re-reads as the mount showed" {
  base_vdi base.vdi 8
  python3 "$MAKE_DIFF" --parent-raw base.vdi.raw base.vdi diff.vdi $((2 * MiB)):4096:0x5d
  mount_img --rw diff.vdi "$MNT"
  fio_verify "$MNT/disk.raw"
  cp "$MNT/disk.raw" shown.raw
  unmount_img
  shown_equals diff.vdi shown.raw
  # and one made by imgfuse create -b over the same parent
  "$IMGFUSE" create -f vdi -b base.vdi -F vdi made.vdi
  mount_img --rw made.vdi "$MNT"
  fio_verify "$MNT/disk.raw"
  cp "$MNT/disk.raw" shown2.raw
  unmount_img
  shown_equals made.vdi shown2.raw
}

@test "a writable differencing image needs its parent; --backing is refused on a dynamic VDI" {
  base_vdi base.vdi 2
  python3 "$MAKE_DIFF" base.vdi diff.vdi 0:512:0x7a
  refused_open diff.vdi "a differencing VDI image is writable only with its parent (not with --no-backing): new blocks start as the parent's" --rw --no-backing
  refused_open base.vdi "a dynamic VDI image has no parent: --backing applies to differencing images only" --backing diff.vdi
}

# ---------------------------------------------------------------- create

@test "imgfuse create -f vdi makes dynamic and static images qemu-img reads as VDI of that size and checks clean" {
  "$IMGFUSE" create -f vdi dyn.vdi 5000000
  "$IMGFUSE" create -f vdi -o static=on fix.vdi 3M
  "$IMGFUSE" create -f vdi -o static=off off.vdi 1M
  "$IMGFUSE" create -f vdi empty.vdi 0
  for f in dyn.vdi:5000192:dynamic fix.vdi:3145728:static off.vdi:1048576:dynamic empty.vdi:0:dynamic; do
    IFS=: read -r img size type <<< "$f"
    [ "$(qemu-img info --output=json "$img" | python3 -c 'import json,sys; d=json.load(sys.stdin); print(d["format"], d["virtual-size"])')" = "vdi $size" ]
    check_clean "$img"
    run "$IMGFUSE" info "$img"
    [[ "$output" == *"image_type: $type"* ]]
    mount_equals_qemu vdi "$img"
  done
  run "$IMGFUSE" info fix.vdi
  [[ "$output" == *"blocks_allocated: 3"* ]]
  run "$IMGFUSE" create -f vdi -o static=maybe x.vdi 1M
  [ "$status" -eq 2 ]
  [ "$output" = "imgfuse: x.vdi: vdi option 'static' must be on or off, not 'maybe'" ]
  run "$IMGFUSE" create -f vdi -o preallocation=full x.vdi 1M
  [ "$status" -eq 2 ]
  [ "$output" = "imgfuse: x.vdi: unknown vdi creation option 'preallocation'" ]
  [ ! -e x.vdi ]
  run "$IMGFUSE" create -f vdi -o help
  [[ "$output" == *"static=on|off"* ]]
}

@test "fio --verify with 4 jobs on created dynamic and static images; qemu-img check clean and convert equal to the mount" {
  "$IMGFUSE" create -f vdi dyn.vdi 8M
  "$IMGFUSE" create -f vdi -o static=on fix.vdi 8M
  for img in dyn.vdi fix.vdi; do
    mount_img --rw "$img" "$MNT"
    fio_verify "$MNT/disk.raw"
    cp "$MNT/disk.raw" shown.raw
    unmount_img
    check_clean "$img"
    qemu-img convert -f vdi -O raw "$img" after.raw
    same_bytes after.raw shown.raw
  done
}

@test "imgfuse create -b makes a differencing VDI: it records the parent's UUIDs and reads as the parent" {
  base_vdi base.vdi 6
  "$IMGFUSE" create -f vdi -b base.vdi -F vdi child.vdi
  [ "$(uuid_at child.vdi 0x1a8)" = "$(uuid_at base.vdi 0x188)" ]   # uuidLinkage = parent's uuidCreate
  [ "$(uuid_at child.vdi 0x1b8)" = "$(uuid_at base.vdi 0x198)" ]   # uuidParentModify = parent's uuidModify
  [ "$(python3 -c 'import struct,sys; print(struct.unpack_from("<I", open(sys.argv[1],"rb").read(512), 0x4c)[0])' child.vdi)" -eq 4 ]
  shown_equals child.vdi base.vdi.raw
  # a differencing image of a differencing image
  "$IMGFUSE" create -f vdi -b child.vdi -F vdi grandchild.vdi 6M
  shown_equals grandchild.vdi base.vdi.raw
  # refusals: another size, another parent format, static with -b
  run "$IMGFUSE" create -f vdi -b base.vdi -F vdi bad.vdi 1M
  [ "$status" -eq 2 ]
  [ "$output" = "imgfuse: bad.vdi: a differencing VDI image has its parent's size (6291456 bytes), not 1048576" ]
  qemu-img create -q -f qcow2 q.qcow2 6M
  run "$IMGFUSE" create -f vdi -b q.qcow2 -F qcow2 bad.vdi
  [ "$status" -eq 2 ]
  [ "$output" = "imgfuse: bad.vdi: the parent of a differencing VDI image is a VDI image (-F vdi), not qcow2" ]
  run "$IMGFUSE" create -f vdi -o static=on -b base.vdi -F vdi bad.vdi
  [ "$status" -eq 2 ]
  [ "$output" = "imgfuse: bad.vdi: a differencing VDI image cannot be static (static=on with -b)" ]
  [ ! -e bad.vdi ]
}

# ---------------------------------------------------------------- hostile

@test "hostile differencing images (tests/make-hostile vdi): each reads or is refused with one line, read-only and --rw" {
  python3 "$BATS_TEST_DIRNAME/make-hostile" h vdi > /dev/null
  sums=$(sha256sum h/vdi-parent-*.vdi)
  [ "$(ls h/vdi-parent-*.vdi | wc -l)" -eq 8 ]
  run python3 "$BATS_TEST_DIRNAME/tools/read-all-hostile" --format vdi --jobs 2 --small-rss-mb 128 h/vdi-*-diff-*.img
  echo "$output"
  [ "$status" -eq 0 ]
  [[ "${lines[-1]}" =~ ^read-all-hostile:\ 23\ images:\ 10\ mounted\ and\ read,\ 13\ refused\ with\ one\ line,\ 0\ failed ]]
  run python3 "$BATS_TEST_DIRNAME/tools/read-all-hostile" --rw --format vdi --jobs 2 --small-rss-mb 128 h/vdi-*-diff-*.img
  echo "$output"
  [ "$status" -eq 0 ]
  [[ "${lines[-1]}" =~ ^read-all-hostile:\ 23\ images:\ 10\ mounted.*\ 0\ failed ]]
  # the parents are never written, not even by the writable mounts of their children
  [ "$(sha256sum h/vdi-parent-*.vdi)" = "$sums" ]
}

@test "the parent search looks at no more than 1024 candidate names and says so" {
  base_vdi base.vdi 2
  mkdir many
  python3 "$MAKE_DIFF" --link 01234567-89ab-cdef-0123-456789abcdef base.vdi many/diff.vdi
  (cd many && for i in $(seq 1 1100); do : > "c$i.vdi"; done)
  run "$IMGFUSE" info many/diff.vdi
  [ "$status" -eq 2 ]
  [[ "$output" =~ not\ found:\ no\ \.vdi\ file\ in\ the\ image\'s\ directory\ or\ a\ --backing-dir\ has\ it\ \(102[34]\ looked\ at,\ of\ the\ first\ 1024\ names\)\;\ use\ --backing-dir\ DIR\ or\ --backing\ FILE$ ]]
}
