#!/usr/bin/env bats
# SPDX-License-Identifier: MIT
# compare.bats - `imgfuse compare` against `qemu-img compare` on the same pairs: identical content in
# different formats, a difference in data, one side's data over the other's hole, images of different
# sizes (the longer part zero or not, with and without -s), backing chains, -q, and errors; each pair must
# give qemu-img's exit code and message.

load helpers

setup() { setup_tmp; cd "$TMP"; }
teardown() { teardown_tmp; }

# same_as_qemu [OPTIONS] A B: imgfuse compare and qemu-img compare exit alike and print the same lines.
same_as_qemu() {
  run "$IMGFUSE" compare "$@"
  local ours=$status out=$output
  run qemu-img compare "$@"
  [ "$ours" -eq "$status" ] && [ "$out" = "$output" ] ||
    { echo "compare $*: imgfuse $ours <$out>, qemu-img $status <$output>" >&2; return 1; }
}

@test "compare: identical content in qcow2, raw, vmdk and vdi is identical (exit 0)" {
  qemu-img create -q -f qcow2 a.qcow2 4M
  qemu-io -c "write -P 5 4096 100k" -c "write -P 6 3M 64k" a.qcow2 >/dev/null
  for f in raw vmdk vdi; do qemu-img convert -O "$f" a.qcow2 "a.$f"; done
  same_as_qemu a.qcow2 a.raw
  [ "$output" = "Images are identical." ]
  same_as_qemu a.vmdk a.vdi
  same_as_qemu -f qcow2 -F raw a.qcow2 a.raw
}

@test "compare: a difference in data, or data over a hole, is 'Content mismatch at offset N!' (exit 1)" {
  qemu-img create -q -f qcow2 a.qcow2 4M
  qemu-img create -q -f qcow2 b.qcow2 4M
  qemu-io -c "write -P 1 1000 1" a.qcow2 >/dev/null
  same_as_qemu a.qcow2 b.qcow2
  [ "$status" -eq 1 ]
  [ "$output" = "Content mismatch at offset 512!" ]
  same_as_qemu b.qcow2 a.qcow2
  qemu-io -c "write -P 1 1000 1" -c "write -P 2 70000 1" b.qcow2 >/dev/null
  same_as_qemu a.qcow2 b.qcow2
  [ "$output" = "Content mismatch at offset 69632!" ]
  qemu-img convert -O raw b.qcow2 b.raw
  same_as_qemu a.qcow2 b.raw
  qemu-io -c "write -z 0 64k" -c "write -P 1 1000 1" a.qcow2 >/dev/null
  same_as_qemu a.qcow2 b.raw
}

@test "compare: zeros written as data equal a hole; a raw file of zeros equals an empty qcow2" {
  qemu-img create -q -f qcow2 a.qcow2 2M
  qemu-img create -q -f raw z.raw 2M
  qemu-io -f raw -c "write -P 0 0 2M" z.raw >/dev/null
  same_as_qemu a.qcow2 z.raw
  [ "$status" -eq 0 ]
}

@test "compare: different sizes: the longer part must read as zeros; -s refuses any size difference" {
  qemu-img create -q -f qcow2 a.qcow2 1M
  qemu-img create -q -f qcow2 big.qcow2 2M
  qemu-io -c "write -P 1 1000 1" a.qcow2 >/dev/null
  qemu-io -c "write -P 1 1000 1" big.qcow2 >/dev/null
  same_as_qemu a.qcow2 big.qcow2
  [ "$status" -eq 0 ]
  [ "${lines[0]}" = "Warning: Image size mismatch!" ]
  same_as_qemu -s a.qcow2 big.qcow2
  [ "$output" = "Strict mode: Image size mismatch!" ]
  qemu-io -c "write -P 3 1500000 1" big.qcow2 >/dev/null
  same_as_qemu a.qcow2 big.qcow2
  [ "$status" -eq 1 ]
  same_as_qemu big.qcow2 a.qcow2
}

@test "compare: a backing chain is compared as the guest sees it" {
  qemu-img create -q -f qcow2 base.qcow2 4M
  qemu-io -c "write -P 7 0 1M" base.qcow2 >/dev/null
  qemu-img create -q -f qcow2 -b base.qcow2 -F qcow2 top.qcow2
  qemu-io -c "write -P 8 2M 4k" top.qcow2 >/dev/null
  qemu-img convert -O raw top.qcow2 flat.raw
  same_as_qemu top.qcow2 flat.raw
  [ "$status" -eq 0 ]
  same_as_qemu top.qcow2 base.qcow2
  [ "$output" = "Content mismatch at offset 2097152!" ]
}

@test "compare: -q prints nothing; a missing image is an error (exit 2, one line)" {
  qemu-img create -q -f qcow2 a.qcow2 1M
  qemu-img create -q -f qcow2 b.qcow2 1M
  qemu-io -c "write -P 1 0 1" a.qcow2 >/dev/null
  run "$IMGFUSE" compare -q a.qcow2 b.qcow2
  [ "$status" -eq 1 ]
  [ -z "$output" ]
  run "$IMGFUSE" compare a.qcow2 missing.qcow2
  [ "$status" -eq 2 ]
  [ "${#lines[@]}" -eq 1 ]
  [[ "$output" == "imgfuse: missing.qcow2: "* ]]
  run qemu-img compare a.qcow2 missing.qcow2
  [ "$status" -eq 2 ]
  run "$IMGFUSE" compare a.qcow2
  [ "$status" -eq 2 ]
}

@test "compare: a hole-heavy 64 GiB pair is compared by block status, not read (under 10 s)" {
  qemu-img create -q -f qcow2 a.qcow2 64G
  qemu-img create -q -f qcow2 b.qcow2 64G
  qemu-io -c "write -P 4 40G 64k" a.qcow2 >/dev/null
  qemu-io -c "write -P 4 40G 64k" b.qcow2 >/dev/null
  start=$(date +%s)
  run timeout 30 "$IMGFUSE" compare a.qcow2 b.qcow2
  [ "$status" -eq 0 ]
  [ $(( $(date +%s) - start )) -lt 10 ]
}
