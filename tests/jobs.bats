#!/usr/bin/env bats
# SPDX-License-Identifier: MIT
# jobs.bats - the offline chain operations `imgfuse commit`, `stream` and `rebase` against the same
# operation done by qemu-img on a copy of the same chain: every layer afterwards equal by `qemu-img
# compare` (guest bytes), `qemu-img check` clean, the recorded backing names as qemu-img records them,
# the emptied top really empty; refusals with one line.

load helpers

setup() { setup_tmp; cd "$TMP"; }
teardown() { teardown_tmp; }

# make_chain: t.qcow2 -> m.qcow2 -> b.qcow2 (data, zero clusters over data, unaligned pieces), with a
# copy of it in q/ for qemu-img, and before.raw, the chain's disk.
make_chain() {
  qemu-img create -q -f qcow2 b.qcow2 32M
  fmt_io qcow2 b.qcow2 'write -P 1 0 8M' 'write -P 5 30M 2M'
  qemu-img create -q -f qcow2 -b b.qcow2 -F qcow2 m.qcow2
  fmt_io qcow2 m.qcow2 'write -P 2 4M 8M' 'write -z 1M 64k' 'write -P 6 20000 3000'
  qemu-img create -q -f qcow2 -b m.qcow2 -F qcow2 t.qcow2
  fmt_io qcow2 t.qcow2 'write -P 3 10M 1M' 'write -z 30M 64k' 'write -P 4 5M 4k' 'write -P 7 31M 777'
  mkdir q
  cp b.qcow2 m.qcow2 t.qcow2 q/
  qemu-img convert -O raw t.qcow2 before.raw
}

# same_layers NAME...: each layer equals qemu-img's result (guest bytes) and checks clean.
same_layers() {
  local x
  for x in "$@"; do
    run qemu-img compare -U "$x" "q/$x"
    echo "$x: $output"
    [ "$status" -eq 0 ]
    check_clean "$x"
  done
}

# backing_of IMAGE: the backing file name IMAGE records ("" when none).
backing_of() {
  qemu-img info --output=json -U "$1" | python3 -c 'import json, sys; print(json.load(sys.stdin).get("backing-filename", ""))'
}

# top_holds_nothing IMAGE: qemu-img map finds no range of IMAGE's own (depth 0).
top_holds_nothing() {
  ! qemu-img map --output=json -U "$1" | grep -q '"depth": 0, "present": true'
}

@test "commit: into the backing file, the image emptied, as qemu-img commit" {
  make_chain
  run "$IMGFUSE" commit t.qcow2
  [ "$status" -eq 0 ]
  [ "$output" = "Image committed." ]
  (cd q && qemu-img commit -q t.qcow2)
  same_layers b.qcow2 m.qcow2 t.qcow2
  top_holds_nothing t.qcow2
  qemu-img convert -O raw t.qcow2 after.raw
  same_bytes after.raw before.raw
  # the backing file of the committed layer now shows the whole disk
  qemu-img convert -O raw m.qcow2 m.raw
  same_bytes m.raw before.raw
}

@test "commit -b: into a deeper base (implies -d), as qemu-img commit -b; -d leaves the image" {
  make_chain
  "$IMGFUSE" commit -q -b b.qcow2 t.qcow2
  (cd q && qemu-img commit -q -b b.qcow2 t.qcow2)
  same_layers b.qcow2 t.qcow2
  qemu-img convert -O raw b.qcow2 b.raw
  same_bytes b.raw before.raw
  # the top was not emptied
  ! top_holds_nothing t.qcow2 || false
  rm -rf q ./*.qcow2
  make_chain
  "$IMGFUSE" commit -q -d t.qcow2
  (cd q && qemu-img commit -q -d t.qcow2)
  same_layers m.qcow2 t.qcow2
  ! top_holds_nothing t.qcow2
}

@test "commit: a base smaller than the image grows to its size" {
  qemu-img create -q -f qcow2 small.qcow2 8M
  fmt_io qcow2 small.qcow2 'write -P 1 0 8M'
  qemu-img create -q -f qcow2 -b small.qcow2 -F qcow2 -o size=16M big.qcow2
  fmt_io qcow2 big.qcow2 'write -P 2 12M 1M'
  mkdir q && cp small.qcow2 big.qcow2 q/
  "$IMGFUSE" commit -q big.qcow2
  (cd q && qemu-img commit -q big.qcow2)
  same_layers small.qcow2 big.qcow2
}

@test "stream: the chain's data copied up, the image names BASE or nothing, as qemu-img rebase does" {
  make_chain
  "$IMGFUSE" stream -b b.qcow2 t.qcow2
  (cd q && qemu-img rebase -q -b b.qcow2 -F qcow2 t.qcow2)
  same_layers t.qcow2
  [ "$(backing_of t.qcow2)" = b.qcow2 ]
  qemu-img convert -O raw t.qcow2 after.raw
  same_bytes after.raw before.raw
  # the zeros m.qcow2 put over b.qcow2's data are zeros in t.qcow2 now
  qemu-img convert -O raw --backing-chain t.qcow2 x.raw 2>/dev/null || true
  "$IMGFUSE" stream t.qcow2
  [ "$(backing_of t.qcow2)" = "" ]
  qemu-img convert -O raw t.qcow2 flat.raw
  same_bytes flat.raw before.raw
  check_clean t.qcow2
}

@test "rebase: safe mode keeps the disk; -u only rewrites the name; -b '' drops the backing file" {
  make_chain
  qemu-img create -q -f qcow2 n.qcow2 32M
  fmt_io qcow2 n.qcow2 'write -P 9 2M 20M'
  cp n.qcow2 q/
  run "$IMGFUSE" rebase -b n.qcow2 -F qcow2 t.qcow2
  [ "$status" -eq 0 ]
  (cd q && qemu-img rebase -q -b n.qcow2 -F qcow2 t.qcow2)
  same_layers t.qcow2
  [ "$(backing_of t.qcow2)" = n.qcow2 ]
  qemu-img convert -O raw t.qcow2 after.raw
  same_bytes after.raw before.raw
  # -u: the name only; the old backing file need not exist
  mv m.qcow2 gone.qcow2
  cp t.qcow2 u.qcow2
  "$IMGFUSE" rebase -u -b b.qcow2 -F qcow2 u.qcow2
  [ "$(backing_of u.qcow2)" = b.qcow2 ]
  qemu-img info -U u.qcow2 | grep -q "^backing file format: qcow2"
  check_clean u.qcow2
  # "": no backing file; the disk is kept by copying everything in
  "$IMGFUSE" rebase -b "" t.qcow2
  [ "$(backing_of t.qcow2)" = "" ]
  qemu-img convert -O raw t.qcow2 flat.raw
  same_bytes flat.raw before.raw
}

@test "commit, stream, rebase: refusals are one line and change nothing" {
  make_chain
  md5=$(md5sum b.qcow2 m.qcow2 t.qcow2)
  run "$IMGFUSE" commit b.qcow2
  [ "$status" -eq 2 ]
  [ "$output" = "imgfuse: b.qcow2: has no backing file to commit into" ]
  run "$IMGFUSE" commit -b other.qcow2 t.qcow2
  [ "$status" -eq 2 ]
  [ "$output" = "imgfuse: other.qcow2: is not a backing file of t.qcow2" ]
  run "$IMGFUSE" stream -b t.qcow2 t.qcow2
  [ "$status" -eq 2 ]
  [ "$output" = "imgfuse: t.qcow2: is not a backing file of t.qcow2" ]
  run "$IMGFUSE" rebase -b n.qcow2 t.qcow2
  [ "$status" -eq 2 ]
  [ "$output" = "imgfuse: t.qcow2: backing file specified without backing format; add -F FMT" ]
  run "$IMGFUSE" rebase t.qcow2
  [ "$status" -eq 2 ]
  [[ "$output" == "imgfuse: usage: imgfuse rebase "* ]]
  run "$IMGFUSE" rebase -b nosuch.qcow2 -F qcow2 t.qcow2
  [ "$status" -eq 2 ]
  [[ "$output" == "imgfuse: "*"nosuch.qcow2: "* ]]
  [ "$(md5sum b.qcow2 m.qcow2 t.qcow2)" = "$md5" ]
  qemu-img create -q -f vmdk -b b.qcow2 -F qcow2 v.vmdk 2>/dev/null || qemu-img create -q -f qed -b b.qcow2 -F qcow2 v.vmdk
  run "$IMGFUSE" rebase -u -b m.qcow2 -F qcow2 v.vmdk
  [ "$status" -eq 2 ]
  [[ "$output" == "imgfuse: v.vmdk: format '"*"' cannot record a new backing file" ]]
}

@test "commit: an image in use is refused (QEMU lock; a --rw imgfuse mount runs it live: live-jobs.bats)" {
  make_chain
  mount_img t.qcow2 "$MNT"
  run "$IMGFUSE" commit t.qcow2
  [ "$status" -eq 2 ]
  [[ "$output" == "imgfuse: t.qcow2: "*"in use by another process"* ]]
  unmount_img
}
