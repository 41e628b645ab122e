#!/usr/bin/env bats
# SPDX-License-Identifier: MIT
# tests/hostile.bats - hostile images (issue 8): the generated corpus of tests/make-hostile (hundreds of
# images attacking every header field, table, name, chain and compressed cluster) and the regression
# images of tests/data/hostile/ each mount and read to the end, or are refused with exit 2 and one line;
# no crash, no hang, peak resident memory under 128 MiB (images under 2 MiB on disk) or 512 MiB. The
# per-image loop is tests/tools/read-all-hostile.
load helpers

setup_file() {
  export HOSTILE="$BATS_FILE_TMPDIR/hostile"
  python3 "$BATS_TEST_DIRNAME/make-hostile" "$HOSTILE" >/dev/null
}
setup() { setup_tmp; }
teardown() { teardown_tmp; }

READ_ALL="$BATS_TEST_DIRNAME/tools/read-all-hostile"

# refused IMAGE [imgfuse options]: the mount fails with exit 2 and exactly one "imgfuse: " line.
refused() {
  local img=$1; shift
  run timeout -k 5 60 "$IMGFUSE" --foreground "$@" "$img" "$MNT"
  echo "$output"
  [ "$status" -eq 2 ]
  [ "${#lines[@]}" -eq 1 ]
  [[ "${lines[0]}" == "imgfuse: "* ]]
}

@test "hostile corpus: every generated image mounts and reads, or is refused with one line" {
  run python3 "$READ_ALL" --jobs 2 "$HOSTILE"
  echo "$output"
  [ "$status" -eq 0 ]
  [[ "${lines[-1]}" =~ ^read-all-hostile:\ ([0-9]+)\ images:\ ([0-9]+)\ mounted.*,\ ([0-9]+)\ refused.*\ 0\ failed ]]
  [ "${BASH_REMATCH[1]}" -ge 500 ] && [ "${BASH_REMATCH[2]}" -ge 100 ] && [ "${BASH_REMATCH[3]}" -ge 100 ]
}

@test "hostile corpus mounted writable: writes, fsyncs and reads end without crash, hang or memory blow-up" {
  run python3 "$READ_ALL" --rw --jobs 2 --skip '^qcow2-[0-9]+-(hdr|incompat|compat|autoclear|size|cluster-bits)-' "$HOSTILE"
  echo "$output"
  [ "$status" -eq 0 ]
  [[ "${lines[-1]}" =~ ^read-all-hostile:\ ([0-9]+)\ images:\ ([0-9]+)\ mounted.*\ 0\ failed ]]
  [ "${BASH_REMATCH[1]}" -ge 250 ] && [ "${BASH_REMATCH[2]}" -ge 100 ]
}

@test "hostile regression images (tests/data/hostile) mount and read, or are refused with one line" {
  run python3 "$READ_ALL" "$BATS_TEST_DIRNAME"/data/hostile/*/
  echo "$output"
  [ "$status" -eq 0 ]
  [[ "${lines[-1]}" == *" 0 failed"* ]]
}

@test "the generated valid base images read exactly as qemu-img reads them" {
  for f in "$HOSTILE"/qcow2-00[0-4]-valid-*.img; do
    mount_img -f qcow2 "$f" "$MNT"
    same_bytes "$MNT/disk.raw" "$(raw_of "$f")"
    unmount_img
  done
}

@test "the generated valid vmdk images (sparse, zeroed grains, stream-optimized) read exactly as qemu-img reads them" {
  for f in "$HOSTILE"/vmdk-00[0-2]-valid-*.img; do
    mount_img -f vmdk "$f" "$MNT"
    same_bytes "$MNT/disk.raw" "$(raw_of "$f")"
    unmount_img
  done
}

@test "a backing name with a newline is refused on one line (regression)" {
  refused "$BATS_TEST_DIRNAME/data/hostile/qcow2/backing-name-newline.img" -f qcow2
  [[ "$output" == *"backing file 'a?b' not found"* ]]
}

@test "backing loops and chains deeper than 256 layers are refused by name" {
  refused "$(ls "$HOSTILE"/qcow2-*-backing-loop-self.img)" -f qcow2
  [[ "$output" == *"already in the chain: loop"* ]]
  refused "$(ls "$HOSTILE"/qcow2-*-backing-loop-spelled-differently.img)" -f qcow2
  [[ "$output" == *"loop"* ]]
  refused "$(ls "$HOSTILE"/qcow2-*-backing-chain-300.img)" -f qcow2
  [[ "$output" == *"longer than 256 layers"* ]]
  local deep
  deep=$(ls "$HOSTILE"/qcow2-*-backing-chain-200.img)
  mount_img -f qcow2 "$deep" "$MNT"
  same_bytes "$MNT/disk.raw" "$(raw_of "$deep")"
}

@test "metadata tables beyond the memory budget are refused with the limit named" {
  refused "$(ls "$HOSTILE"/qcow2-*-huge-disk-l1-over-cb16.img)" -f qcow2
  [[ "$output" == *"L1 table is too large"* ]]
  refused "$(ls "$HOSTILE"/qcow2-*-hdr-refcount_table_clusters-0x801.img)" -f qcow2
  [[ "$output" == *"refcount table is too large"* ]]
  refused "$(ls "$HOSTILE"/qcow2-*-snapshot-count-65537.img)" -f qcow2
  [[ "$output" == *"too many snapshots"* ]]
}

@test "compressed clusters that do not inflate to exactly one cluster read as EIO, the rest reads" {
  local good
  good=$(raw_of "$HOSTILE/qcow2-000-valid-base.img")
  for what in short one-byte-short garbage truncated-stream zstd-short zstd-window-2g zstd-garbage; do
    mount_img -f qcow2 "$(ls "$HOSTILE"/qcow2-*-compressed-$what.img)" "$MNT"
    run dd if="$MNT/disk.raw" bs=4096 skip=10 count=1 of=/dev/null status=none
    [ "$status" -ne 0 ]
    [[ "$output" == *"Input/output error"* ]]
    cmp -n 40960 "$MNT/disk.raw" "$good"
    cmp -i 45056 "$MNT/disk.raw" "$good"
    unmount_img
  done
}

@test "a header cluster packed with tiny extensions opens in linear time (regression)" {
  for img in ext-packed-unknown-2m ext-packed-feature-tables-2m; do
    run timeout 60 "$IMGFUSE" info "$BATS_TEST_DIRNAME/data/hostile/qcow2/$img.img"
    echo "$output" | head -5
    [ "$status" -eq 0 ]
    [[ "$output" == *"virtual_size: 0"* ]]
  done
}

@test "an external data file named outside the image's directory, or in /proc or /dev, is refused" {
  for what in etc-passwd dotdot proc dev-zero; do
    refused "$(ls "$HOSTILE"/qcow2-*-datafile-$what.img)" -f qcow2
    [[ "$output" == *"external data file"*"refused"* ]]
  done
  # named explicitly on the command line, or with --unsafe-backing, the user's choice is followed
  mount_img -f qcow2 --data-file "$HOSTILE/aux/base.raw" "$(ls "$HOSTILE"/qcow2-*-datafile-etc-passwd.img)" "$MNT"
  cmp -n 4096 "$MNT/disk.raw" <(tail -c +$((5 * 4096 + 1)) "$HOSTILE/aux/base.raw")
  unmount_img
  mount_img -f qcow2 "$(ls "$HOSTILE"/qcow2-*-datafile-ok-raw.img)" "$MNT"
  cmp -n 4096 "$MNT/disk.raw" <(tail -c +$((5 * 4096 + 1)) "$HOSTILE/aux/base.raw")
}

@test "refcounts claiming billions of clusters in use: --rw is refused at once, reads still work (regression)" {
  cp "$BATS_TEST_DIRNAME/data/hostile/qcow2/reftable-all-one-full-refblock.img" "$TMP/rc.qcow2"
  # Every refcount table entry names the same block: since issue 16.2 the writable open finds the
  # overlapping refcount blocks and refuses, before the allocator could scan the claimed clusters.
  run timeout 60 "$IMGFUSE" --foreground --rw -f qcow2 "$TMP/rc.qcow2" "$MNT"
  echo "$output"
  [ "$status" -eq 2 ]
  [ "${#lines[@]}" -eq 1 ]
  [[ "${lines[0]}" == "imgfuse: $TMP/rc.qcow2: metadata overlap: a refcount block at 0x"*" overlaps a refcount block at 0x"* ]]
  mount_img -f qcow2 "$TMP/rc.qcow2" "$MNT"
  # guest cluster 0 still reads its data (make-hostile's pattern 1)
  cmp -n 65536 "$MNT/disk.raw" <(python3 -c "
import sys; sys.stdout.buffer.write(bytes(((i * 131 + 17 + (i >> 9)) & 0xFF) for i in range(65536)))")
  unmount_img
}

@test "VHDX: a BAT over the memory budget, a region outside the file and log bombs are refused by name or read within budget" {
  refused "$(ls "$HOSTILE"/vhdx-*-huge-bat-64t.img)" -f vhdx
  [[ "$output" == *"the BAT would need 67125247 entries, more than the 4194304 this driver holds in memory" ]]
  refused "$(ls "$HOSTILE"/vhdx-*-rt-bat-past-end.img)" -f vhdx
  [[ "$output" == *"BAT region (offset 1099511627776, 1048576 bytes) is not 1 MiB aligned, lies outside the file"* ]]
  refused "$(ls "$HOSTILE"/vhdx-*-log-bomb-75k-zero-pieces.img)" -f vhdx
  [[ "$output" == *"replaying the log needs more than 64 MiB or 65536 pieces in memory" ]]
  refused "$(ls "$HOSTILE"/vhdx-*-log-count-huge.img)" -f vhdx
  [[ "$output" == *"the header names a log (LogGuid set) but the log holds no valid sequence of entries" ]]
  # 32256 zero pieces replayed, a BAT just under the cap (32 MiB), overlapping log entries: each mounts and
  # reads to the end (SEEK_DATA-guided for the 4 TiB disk) under 64 MiB of resident memory (96 in the
  # ASan build, whose redzones and 16 MiB quarantine come on top of the driver's 32 MiB BAT)
  local rss=64
  [ -z "${IMGFUSE_ASAN:-}" ] || rss=96
  run python3 "$READ_ALL" --small-rss-mb "$rss" --rss-mb "$rss" "$HOSTILE"/vhdx-*-log-bomb-32k-zero-pieces.img \
    "$HOSTILE"/vhdx-*-big-bat-near-cap.img "$HOSTILE"/vhdx-*-log-overlapping-entries.img
  echo "$output"
  [ "$status" -eq 0 ]
  [[ "${lines[-1]}" == "read-all-hostile: 3 images: 3 mounted and read, 0 refused with one line, 0 failed"* ]]
}

@test "qcow (version 1) and parallels: tables past the end, huge L1 and BAT counts, wrong-size compressed clusters" {
  refused "$(ls "$HOSTILE"/qcow-*-l1-size-2-31.img)" -f qcow
  [[ "$output" == *"L1 table is too large: 2147483648 entries, more than the 32 MiB limit"* ]]
  refused "$(ls "$HOSTILE"/parallels-*-bat-count-2-31.img)" -f parallels
  [[ "$output" == *"BAT of 2147483648 entries is larger than the 16777216 entries (64 MiB) limit"* ]]
  # at the limits they open, within the memory budget (read-all-hostile measures the peak)
  run python3 "$READ_ALL" "$(ls "$HOSTILE"/qcow-*-l1-size-at-limit-32m.img)" "$(ls "$HOSTILE"/parallels-*-bat-count-at-limit-16m.img)"
  echo "$output"
  [ "$status" -eq 0 ]
  [[ "${lines[-1]}" == *": 2 images: 2 mounted"*" 0 failed"* ]]
  # an L2 table, a data cluster, a compressed cluster or a BAT entry past the end of the file, and a
  # compressed cluster that inflates short or not at all: EIO for the clusters it maps (the whole 64 KiB
  # disk for the qcow L1 entry, else cluster 0 or 1 of the qcow images, 2 of the parallels images), the
  # next cluster reads
  local img fmt bad
  for img in qcow-*-l1-entry-past-eof qcow-*-l2-entry-past-eof qcow-*-compressed-entry-past-eof \
             qcow-*-compressed-short qcow-*-compressed-garbage qcow-*-compressed-truncated-stream \
             parallels-*-ext-bat-entry-past-eof parallels-*-old-bat-entry-past-eof; do
    img=$(ls "$HOSTILE"/$img.img); fmt=${img##*/}; fmt=${fmt%%-*}
    case $img in
      *l1-entry*) bad=0 ;;
      *qcow-*l2-entry*) bad=0 ;;
      *qcow-*) bad=1 ;;
      *) bad=2 ;;
    esac
    mount_img -f "$fmt" "$img" "$MNT"
    run dd if="$MNT/disk.raw" bs=4096 skip=$bad count=1 of=/dev/null status=none
    [ "$status" -ne 0 ]
    [[ "$output" == *"Input/output error"* ]]
    [[ $img == *l1-entry* ]] || dd if="$MNT/disk.raw" bs=4096 skip=$((bad + 1)) count=1 of=/dev/null status=none
    unmount_img
  done
}

@test "hostile ewf: looping section chains and 2^32-1 chunks end (one line or a read) under a memory limit" {
  ls "$HOSTILE"/ewf-*-next-self.img "$HOSTILE"/ewf-*-entries-ffffffff.img "$HOSTILE"/ewf-*-chunk-count-ffffffff.img > "$TMP/list"
  [ "$(wc -l < "$TMP/list")" -ge 10 ]
  # the memory limit: address space, or resident memory under ASan (which reserves terabytes of address space)
  local limit=(prlimit --as=$((1024 << 20)) --)
  [ -z "${IMGFUSE_ASAN:-}" ] || limit=(env ASAN_OPTIONS="${ASAN_OPTIONS:-}:hard_rss_limit_mb=1024:print_suppressions=0")
  while read -r img; do
    run timeout -k 5 60 "${limit[@]}" "$IMGFUSE" hash -q -f ewf "$img"
    echo "$(basename "$img") -> $status: $output"
    [ "$status" -le 2 ]
    [ "$status" -eq 0 ] || grep -q "^imgfuse: $img: " <<<"$output"
  done < "$TMP/list"
  refused "$HOSTILE/$(basename "$(grep -m1 entries-ffffffff "$TMP/list")")" -f ewf
}
