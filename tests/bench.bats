#!/usr/bin/env bats
# SPDX-License-Identifier: MIT
# bench.bats - a smoke run of scripts/bench's format rows (issues 19-21) on 16 MiB images, so that they
# cannot rot: every image is made and checked against the mixed disk, imgfuse and each peer
# (qemu-storage-daemon, vhdimount, vmdkmount, ewfmount, xmount) mount it with the right bytes, and the
# table has a number for each of them, sequential and random; the same for the qcow2-over-NBD rows
# (--protocol nbd, issue 23). The speeds of such a run mean nothing.

load helpers

setup() { setup_tmp; SRC=$(cd "$BATS_TEST_DIRNAME/.." && pwd); }
teardown() { teardown_tmp; }

# row WORKLOAD-DESCRIPTION IMAGE TOOL: the value of that row of results.txt (empty when absent or n/a)
row() {
  awk -v w="$1" -v i="$2" -v t="$3" '
    index($0, w) == 1 { rest = substr($0, length(w) + 1); n = split(rest, f, "  +")
      k = 1; while (k <= n && f[k] == "") k++
      if (f[k] == i && f[k + 1] == t && f[k + 2] ~ /^[0-9.]+$/) print f[k + 2] }' "$TMP/bench/latest/results.txt"
}

@test "scripts/bench --size 16M: the VHDX, VMDK, VPC, VDI, cloop, DMG and E01 rows, imgfuse and every peer" {
  BENCH_NO_DROP=1 BENCH_DIR=$TMP/bench IMGFUSE=$IMGFUSE run timeout 600 "$SRC/scripts/bench" --quick --runtime 1 \
    --size 16M --no-install --no-build --images "vhdx vmdk vpc vdi cloop dmg e01" \
    --tools "imgfuse qsd vhdimount vmdkmount ewfmount xmount" --workloads "seqread randread1"
  echo "$output"
  [ "$status" -eq 0 ]
  cat "$TMP/bench/latest/results.txt"
  # the images hold the mixed disk: a quarter random, a quarter text, a half zeros in each group
  [ "$(stat -c %s "$TMP/bench/images-16M/mix.src")" = 16777216 ]
  [ "$(head -c 1048576 "$TMP/bench/images-16M/mix.src" | gzip -c | wc -c)" -gt 1000000 ]
  [ "$(tail -c 8388608 "$TMP/bench/images-16M/mix.src" | tr -d '\0' | wc -c)" -lt 8388608 ]
  for kind in vhdx vmdk vpc vdi cloop dmg e01; do
    case $kind in
      vhdx|vpc) peers="qemu-storage-daemon vhdimount" ;;
      vmdk) peers="qemu-storage-daemon vmdkmount" ;;
      *) peers="qemu-storage-daemon" ;;
    esac
    for w in "seq read 1 MiB" "rand read 4 KiB x1"; do
      v=$(row "$w" "$kind" imgfuse); echo "$w $kind imgfuse: $v"; [ -n "$v" ]
      if [ "$kind" = e01 ]; then
        v=$(row "$w" e01 ewfmount); echo "$w e01 ewfmount: $v"; [ -n "$v" ]
        v=$(row "$w" e01 "xmount (libewf)"); echo "$w e01 xmount: $v"; [ -n "$v" ]
      else
        for p in $peers; do v=$(row "$w" "$kind" "$p"); echo "$w $kind $p: $v"; [ -n "$v" ]; done
      fi
    done
  done
  ! grep -q 'wrong data' "$TMP/bench/latest/results.txt"
}

@test "scripts/bench-convert --size 16M: the convert rows of issue 22, each result equal to its source" {
  BENCH_DIR=$TMP/bench IMGFUSE=$IMGFUSE run timeout 600 "$SRC/scripts/bench-convert" --size 16M --runs 1 --no-build
  echo "$output"
  [ "$status" -eq 0 ]
  for r in "allocated qcow2 -> raw" "raw -> compressed qcow2 (-c)" "allocated vmdk -> qcow2"; do
    grep -E "^$(printf '%s' "$r" | sed 's/[()]/\\&/g') +[0-9.]+ +[0-9.]+ +[0-9.]+x$" "$TMP/bench/convert-results.txt"
  done
}

@test "scripts/bench --protocol nbd --size 16M: the qcow2 over NBD rows of imgfuse, qemu-storage-daemon and nbdfuse" {
  BENCH_NO_DROP=1 BENCH_DIR=$TMP/bench IMGFUSE=$IMGFUSE run timeout 600 "$SRC/scripts/bench" --quick --runtime 1 \
    --size 16M --no-install --no-build --protocol nbd --tools "imgfuse qsd nbdfuse" --workloads "seqread randread1 randread4"
  echo "$output"
  [ "$status" -eq 0 ]
  cat "$TMP/bench/latest/results.txt"
  for w in "seq read 1 MiB" "rand read 4 KiB x1" "rand read 4 KiB x4"; do
    for t in imgfuse qemu-storage-daemon qemu-nbd+nbdfuse; do
      v=$(row "$w" nbd "$t"); echo "$w nbd $t: $v"; [ -n "$v" ]
    done
  done
  # imgfuse and qemu-storage-daemon read the qcow2 file's bytes over NBD and decode it themselves
  ls "$TMP"/bench/results-*/logs/qemu-nbd-imgfuse-ro-nbd.log "$TMP"/bench/results-*/logs/qemu-nbd-qsd-ro-nbd.log
  ! grep -q 'wrong data' "$TMP/bench/latest/results.txt"
}
