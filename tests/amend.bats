#!/usr/bin/env bats
# SPDX-License-Identifier: MIT
# amend.bats - `imgfuse amend -o compat=...,lazy_refcounts=... IMAGE` (qcow2) against `qemu-img amend` on a
# copy of the same image: the same compat level and lazy-refcounts flag afterwards (qemu-img info), the
# same guest bytes (qemu-img compare), qemu-img check clean; a downgrade refused with one line naming the
# compat=1.1 feature in use, other keys refused by name, the image untouched by a refusal.

load helpers

setup() { setup_tmp; cd "$TMP"; }
teardown() { teardown_tmp; }

# make_img COMPAT [qemu-io commands...]: a.qcow2 with data, snapshot-free, and its copy q.qcow2.
make_img() {
  local compat=$1
  shift
  qemu-img create -q -f qcow2 -o compat="$compat" a.qcow2 32M
  fmt_io qcow2 a.qcow2 'write -P 0xab 0 1M' 'write -P 0x11 5M 64k' 'write -P 7 30M 4097' "$@"
  cp a.qcow2 q.qcow2
}

# field IMAGE KEY: a key of qemu-img info's format-specific data ("compat", "lazy-refcounts").
field() {
  qemu-img info --output=json -U "$1" |
    python3 -c 'import json, sys; print(json.load(sys.stdin)["format-specific"]["data"].get(sys.argv[1]))' "$2"
}

# same_as_qemu: a.qcow2 equals qemu-img's q.qcow2 in content, compat and lazy refcounts; both check clean.
same_as_qemu() {
  run qemu-img compare -U a.qcow2 q.qcow2
  echo "$output"
  [ "$status" -eq 0 ]
  [ "$(field a.qcow2 compat)" = "$(field q.qcow2 compat)" ]
  [ "$(field a.qcow2 lazy-refcounts)" = "$(field q.qcow2 lazy-refcounts)" ]
  check_clean a.qcow2
  check_clean q.qcow2
}

@test "amend: compat=0.10 downgrades a version 3 image as qemu-img amend does" {
  make_img 1.1
  run "$IMGFUSE" amend -o compat=0.10 a.qcow2
  [ "$status" -eq 0 ]
  [ "$output" = "" ]
  qemu-img amend -o compat=0.10 q.qcow2
  [ "$(field a.qcow2 compat)" = "0.10" ]
  same_as_qemu
}

@test "amend: compat=1.1 upgrades a version 2 image with a backing file, which still resolves" {
  qemu-img create -q -f qcow2 -o compat=0.10 base.qcow2 32M
  fmt_io qcow2 base.qcow2 'write -P 9 0 8M'
  qemu-img create -q -f qcow2 -o compat=0.10 -b base.qcow2 -F qcow2 a.qcow2
  fmt_io qcow2 a.qcow2 'write -P 0xab 1M 1M'
  cp a.qcow2 q.qcow2
  run "$IMGFUSE" amend -o compat=1.1 a.qcow2
  [ "$status" -eq 0 ]
  qemu-img amend -o compat=1.1 q.qcow2
  [ "$(field a.qcow2 compat)" = "1.1" ]
  same_as_qemu
  [ "$(qemu-img info --output=json a.qcow2 | python3 -c 'import json,sys; print(json.load(sys.stdin)["backing-filename-format"])')" = qcow2 ]
}

@test "amend: lazy_refcounts on and off, as qemu-img amend" {
  make_img 1.1
  "$IMGFUSE" amend -o lazy_refcounts=on a.qcow2
  qemu-img amend -o lazy_refcounts=on q.qcow2
  [ "$(field a.qcow2 lazy-refcounts)" = "True" ]
  same_as_qemu
  # a write with lazy refcounts leaves the dirty bit set; turning them off writes the refcounts back
  fmt_io qcow2 a.qcow2 'write -P 3 12M 1M'
  fmt_io qcow2 q.qcow2 'write -P 3 12M 1M'
  "$IMGFUSE" amend -o lazy_refcounts=off a.qcow2
  qemu-img amend -o lazy_refcounts=off q.qcow2
  [ "$(field a.qcow2 lazy-refcounts)" = "False" ]
  same_as_qemu
  # both in one go, from version 2
  rm a.qcow2 q.qcow2
  make_img 0.10
  "$IMGFUSE" amend -o compat=1.1,lazy_refcounts=on a.qcow2
  qemu-img amend -o compat=1.1,lazy_refcounts=on q.qcow2
  same_as_qemu
}

@test "amend: a downgrade is refused, naming the compat=1.1 feature in use; the image is untouched" {
  make_img 1.1 'write -z 8M 64k'
  cp a.qcow2 before.qcow2
  run "$IMGFUSE" amend -o compat=0.10 a.qcow2
  [ "$status" -eq 1 ]
  [ "$output" = "imgfuse: a.qcow2: cannot downgrade to compat=0.10: the image uses zero clusters (a compat=1.1 feature)" ]
  cmp a.qcow2 before.qcow2
  rm a.qcow2 q.qcow2
  qemu-img create -q -f qcow2 -o refcount_bits=8 a.qcow2 1M
  run "$IMGFUSE" amend -o compat=0.10 a.qcow2
  [ "$status" -eq 1 ]
  [ "$output" = "imgfuse: a.qcow2: cannot downgrade to compat=0.10: the image uses refcount_bits other than 16 (a compat=1.1 feature)" ]
  rm a.qcow2
  qemu-img create -q -f qcow2 -o extended_l2=on,cluster_size=64k a.qcow2 1M
  run "$IMGFUSE" amend -o compat=0.10 a.qcow2
  [ "$output" = "imgfuse: a.qcow2: cannot downgrade to compat=0.10: the image uses extended L2 entries (extended_l2) (a compat=1.1 feature)" ]
}

@test "amend: other keys and bad values refused by name; lazy_refcounts needs compat=1.1" {
  make_img 0.10
  cp a.qcow2 before.qcow2
  run "$IMGFUSE" amend -o cluster_size=4k a.qcow2
  [ "$status" -eq 1 ]
  [ "$output" = "imgfuse: a.qcow2: qcow2 option 'cluster_size' cannot be amended (only compat and lazy_refcounts)" ]
  run "$IMGFUSE" amend -o compat=2.0 a.qcow2
  [ "$status" -eq 1 ]
  [ "$output" = "imgfuse: a.qcow2: compat must be 0.10 or 1.1, not '2.0'" ]
  run "$IMGFUSE" amend -o lazy_refcounts=on a.qcow2
  [ "$status" -eq 1 ]
  [ "$output" = "imgfuse: a.qcow2: lazy_refcounts=on needs compat=1.1" ]
  cmp a.qcow2 before.qcow2
  run "$IMGFUSE" amend a.qcow2
  [ "$status" -eq 2 ]
  [ "$output" = "imgfuse: usage: imgfuse amend [-f FMT] [-q] -o OPTIONS IMAGE" ]
  qemu-img convert -O raw a.qcow2 a.raw
  run "$IMGFUSE" amend -f raw -o compat=1.1 a.raw
  [ "$status" -eq 1 ]
  [ "$output" = "imgfuse: a.raw: format 'raw' has no options to amend" ]
}
