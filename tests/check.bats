#!/usr/bin/env bats
# SPDX-License-Identifier: MIT
# check.bats - `imgfuse check` against `qemu-img check` on the same images: clean images of every format
# with a checker print what qemu-img prints (text and JSON); crafted leaks and corruptions
# (tests/check-damage.py: a refcount of 0 on an L2 table, an L2 entry on the refcount table, overlapping
# allocations, BAT entries past the end, in-use flags, appended clusters) give qemu-img's exit code; after
# `-r all` qemu-img check is clean and the guest-visible bytes are those before the repair; formats without
# a checker or a repair exit 63 like qemu-img; -r is refused with --force-share, --read-only and on a
# mounted image, and a check without -r opens the image O_RDONLY.

load helpers

setup() { setup_tmp; cd "$TMP"; }
teardown() { teardown_tmp; }

DAMAGE=$BATS_TEST_DIRNAME/check-damage.py
AGREE=$BATS_TEST_DIRNAME/tools/json-agree

# make_img FMT FILE: a 4 MiB image with guest data in [0, 1M) and [2M, 3M).
make_img() {
  qemu-img create -q -f "$1" "$2" 4M
  qemu-io -f "$1" -c "write -P 9 0 1M" -c "write -P 3 2M 1M" "$2" >/dev/null
}

# keys FILE: the sorted top-level keys of a JSON object.
keys() { python3 -c 'import json,sys; print(" ".join(sorted(json.load(open(sys.argv[1])))))' "$1"; }

# damaged_matches_qemu FMT MODE: the exit code of imgfuse check equals qemu-img check's on the damaged
# image; prints it.
damaged_matches_qemu() {
  make_img "$1" "x.$1"
  python3 "$DAMAGE" "$1" "x.$1" "$2"
  run "$IMGFUSE" check -f "$1" "x.$1"
  local ours=$status
  run qemu-img check -f "$1" "x.$1"
  [ "$ours" -eq "$status" ] || { echo "$1 $2: imgfuse $ours, qemu-img $status: $output" >&2; return 1; }
  echo "$ours"
}

# repaired_like_qemu FMT MODE: after `imgfuse check -r all` qemu-img check is clean and the guest bytes
# (qemu-img convert) are those of the damaged image.
repaired_like_qemu() {
  make_img "$1" "x.$1"
  python3 "$DAMAGE" "$1" "x.$1" "$2"
  qemu-img convert -f "$1" -O raw "x.$1" before.raw
  run "$IMGFUSE" check -r all -f "$1" "x.$1"
  [ "$status" -eq 0 ] || { echo "$1 $2: check -r all exited $status: $output" >&2; return 1; }
  [[ "$output" == *"The following inconsistencies were found and repaired:"* ]]
  [[ "$output" == *"No errors were found on the image."* ]]
  run qemu-img check -f "$1" "x.$1"
  [ "$status" -eq 0 ] || { echo "$1 $2: qemu-img check after the repair: $status $output" >&2; return 1; }
  qemu-img convert -f "$1" -O raw "x.$1" after.raw
  cmp before.raw after.raw
}

@test "check: clean images print what qemu-img check prints, text and JSON (qcow2 qed parallels vdi vmdk vhdx)" {
  for f in qcow2 qed parallels vdi vmdk vhdx; do
    make_img "$f" "c.$f"
    run "$IMGFUSE" check "c.$f"
    [ "$status" -eq 0 ]
    ours=$output
    run qemu-img check "c.$f"
    [ "$status" -eq 0 ]
    [ "$ours" = "$output" ] || { echo "$f: imgfuse <$ours> qemu-img <$output>" >&2; false; }
    "$IMGFUSE" check --output=json "c.$f" > ours.json
    qemu-img check --output=json "c.$f" > qemu.json
    "$AGREE" --exact qemu.json ours.json
  done
}

@test "check: leaks exit 3 with qemu-img's text and JSON; -r leaks repairs them (qcow2 qed parallels)" {
  for f in qcow2 qed parallels; do
    [ "$(damaged_matches_qemu "$f" leak)" -eq 3 ]
    rc=0; ours=$("$IMGFUSE" check "x.$f" 2>/dev/null) || rc=$?
    [ "$rc" -eq 3 ]
    theirs=$(qemu-img check "x.$f" 2>/dev/null) || true
    [ "$ours" = "$theirs" ] || { echo "$f: imgfuse <$ours> qemu-img <$theirs>" >&2; false; }
    [[ "$ours" == *"1 leaked clusters were found on the image."* ]]
    "$IMGFUSE" check --output=json "x.$f" > ours.json || [ $? -eq 3 ]
    qemu-img check --output=json "x.$f" > qemu.json || [ $? -eq 3 ]
    "$AGREE" --exact qemu.json ours.json
    qemu-img convert -O raw "x.$f" before.raw
    run "$IMGFUSE" check -r leaks "x.$f"
    [ "$status" -eq 0 ]
    [[ "$output" == *"    1 leaked clusters"* ]]
    qemu-img check "x.$f"
    qemu-img convert -O raw "x.$f" after.raw
    cmp before.raw after.raw
  done
}

@test "check: qcow2 corruptions (refcount 0 on an L2 table, an L2 entry on the refcount table, an overlapping allocation) exit 2 as in qemu-img" {
  make_img qcow2 x.qcow2
  python3 "$BATS_TEST_DIRNAME/qcow2-corrupt.py" x.qcow2 set-l2-refcount 0
  run "$IMGFUSE" check x.qcow2
  [ "$status" -eq 2 ]
  [[ "$output" == *"errors were found on the image."* ]]
  run qemu-img check x.qcow2
  [ "$status" -eq 2 ]
  [ "$(damaged_matches_qemu qcow2 reftable-ref)" -eq 2 ]
  [ "$(damaged_matches_qemu qcow2 alias)" -eq 2 ]
}

@test "check -r all: qcow2 repaired, qemu-img check clean, guest bytes unchanged" {
  make_img qcow2 x.qcow2
  python3 "$BATS_TEST_DIRNAME/qcow2-corrupt.py" x.qcow2 set-l2-refcount 0
  qemu-img convert -O raw x.qcow2 before.raw
  run "$IMGFUSE" check -r all x.qcow2
  [ "$status" -eq 0 ]
  qemu-img check x.qcow2
  qemu-img convert -O raw x.qcow2 after.raw
  cmp before.raw after.raw
  repaired_like_qemu qcow2 reftable-ref
  repaired_like_qemu qcow2 alias
  repaired_like_qemu qcow2 leak
}

@test "check -r all: the corrupt and dirty bits of a qcow2 with consistent refcounts are cleared, as qemu-img does" {
  make_img qcow2 x.qcow2
  python3 -c 'import sys; f=open(sys.argv[1],"r+b"); f.seek(79); f.write(bytes([3]))' x.qcow2
  run "$IMGFUSE" info x.qcow2
  [[ "$output" == *"corrupt"* ]]
  run "$IMGFUSE" check -r all x.qcow2
  [ "$status" -eq 0 ]
  [ "$(od -An -tx1 -j79 -N1 x.qcow2 | tr -d ' ')" = 00 ]
  qemu-io -c "write -P 1 0 4k" x.qcow2 >/dev/null
  qemu-img check x.qcow2
}

@test "check -r leaks: a qcow2 corruption is left alone (exit 2, file unchanged), as -r all's business" {
  make_img qcow2 x.qcow2
  python3 "$DAMAGE" qcow2 x.qcow2 alias
  cp x.qcow2 copy.qcow2
  run "$IMGFUSE" check -r leaks x.qcow2
  [ "$status" -eq 2 ]
  [[ "$output" == *"errors were found on the image."* ]]
  [[ "$output" != *"repaired"* ]]
  cmp x.qcow2 copy.qcow2
  run qemu-img check -r leaks copy.qcow2
  [ "$status" -eq 2 ]
}

@test "check -r all --output=json: the keys qemu-img check -r all prints (leaks-fixed, corruptions-fixed)" {
  for m in leak alias; do
    make_img qcow2 x.qcow2
    python3 "$DAMAGE" qcow2 x.qcow2 "$m"
    cp x.qcow2 q.qcow2
    "$IMGFUSE" check -r all --output=json x.qcow2 > ours.json
    qemu-img check -r all --output=json q.qcow2 > qemu.json
    [ "$(keys ours.json)" = "$(keys qemu.json)" ] || { echo "$m: <$(keys ours.json)> <$(keys qemu.json)>" >&2; false; }
    grep -q '"filename": "x.qcow2"' ours.json
  done
}

@test "check: qed corruptions (an L2 entry on the L1 table, an overlapping allocation) exit 2 as in qemu-img; -r all cannot repair them" {
  for m in l2-on-l1 alias; do
    [ "$(damaged_matches_qemu qed "$m")" -eq 2 ]
    cp x.qed q.qed
    run "$IMGFUSE" check -r all x.qed
    [ "$status" -eq 2 ]
    [[ "$output" == *"errors were found on the image."* ]]
    [[ "$output" != *"repaired"* ]]
    run qemu-img check -r all q.qed
    [ "$status" -eq 2 ]
  done
}

@test "check: a qed L2 entry past the end exits 2; -r all clears it and leaves what qemu-img's -r all leaves (exit 3, the same text)" {
  [ "$(damaged_matches_qemu qed past-eof)" -eq 2 ]
  cp x.qed q.qed
  rc=0; ours=$("$IMGFUSE" check -r all x.qed 2>/dev/null) || rc=$?
  [ "$rc" -eq 3 ]
  [[ "$ours" == *"    1 corruptions"* ]]
  rc=0; theirs=$(qemu-img check -r all q.qed 2>/dev/null) || rc=$?
  [ "$rc" -eq 3 ]
  [ "$ours" = "$theirs" ] || { echo "imgfuse <$ours> qemu-img <$theirs>" >&2; false; }
  run qemu-img check x.qed
  [ "$status" -eq 3 ]
}

@test "check: parallels in-use flag and BAT entry past the end exit 2 as in qemu-img; -r all repairs them" {
  for m in in-use past-eof; do
    [ "$(damaged_matches_qemu parallels "$m")" -eq 2 ]
    repaired_like_qemu parallels "$m"
  done
}

@test "check: parallels clusters shared by two BAT entries are a corruption (qemu-img 7.2 sees only the leak)" {
  make_img parallels x.parallels
  python3 "$DAMAGE" parallels x.parallels alias
  run "$IMGFUSE" check x.parallels
  [ "$status" -eq 2 ]
  [[ "$output" == *"two BAT entries share the cluster at 0x"* ]]
}

@test "check: vdi (a host block named twice, a wrong allocated count) exits 2 as qemu-img; -r exits 63 and writes nothing" {
  for m in alias count; do
    [ "$(damaged_matches_qemu vdi "$m")" -eq 2 ]
    cp x.vdi copy.vdi
    run "$IMGFUSE" check -r all x.vdi
    [ "$status" -eq 63 ]
    [ "$output" = "imgfuse: x.vdi: format 'vdi' cannot repair images (check it without -r)" ]
    cmp x.vdi copy.vdi
    run qemu-img check -r all copy.vdi
    [ "$status" -eq 63 ]
  done
  make_img vdi c.vdi
  run "$IMGFUSE" check -r leaks c.vdi
  [ "$status" -eq 63 ]
  run qemu-img check -r leaks c.vdi
  [ "$status" -eq 63 ]
}

@test "check: vhdx BAT entry past the end exits 2 as qemu-img; a vmdk grain past the end stops the check, exit 1 as qemu-img; -r as qemu-img" {
  [ "$(damaged_matches_qemu vhdx past-eof)" -eq 2 ]
  make_img vmdk x.vmdk
  python3 "$DAMAGE" vmdk x.vmdk past-eof
  run "$IMGFUSE" check x.vmdk
  echo "$output"
  [ "$status" -eq 1 ]
  [[ "$output" == *"past the end of the file): the check stopped"* ]]
  run qemu-img check x.vmdk
  [ "$status" -eq 1 ]
  [[ "$output" == *"points after EOF"* ]]
  # no repair, as in qemu-img: -r is 63 for vmdk, taken and a no-op for vhdx
  cp x.vmdk copy.vmdk
  run "$IMGFUSE" check -r all x.vmdk
  [ "$status" -eq 63 ]
  cmp x.vmdk copy.vmdk
  cp x.vhdx copy.vhdx
  run "$IMGFUSE" check -r all x.vhdx
  [ "$status" -eq 2 ]
  cmp x.vhdx copy.vhdx
  for f in vmdk vhdx; do
    make_img $f c.$f
    run "$IMGFUSE" check -r all c.$f
    ours=$status
    run qemu-img check -r all c.$f
    [ "$ours" -eq "$status" ]
  done
}

@test "check: vpc (qemu-img has no checker): clean exits 0, overlapping blocks exit 2" {
  make_img vpc c.vpc
  run "$IMGFUSE" check -f vpc c.vpc
  [ "$status" -eq 0 ]
  [[ "$output" == "No errors were found on the image."* ]]
  make_img vpc x.vpc
  python3 "$DAMAGE" vpc x.vpc alias
  run "$IMGFUSE" check -f vpc x.vpc
  [ "$status" -eq 2 ]
  [[ "$output" == *"overlap"* ]]
}

@test "check: a format without a checker exits 63 like qemu-img" {
  qemu-img create -q -f raw r.raw 1M
  run "$IMGFUSE" check -f raw r.raw
  [ "$status" -eq 63 ]
  [ "$output" = "imgfuse: r.raw: format 'raw' does not support checks" ]
  run qemu-img check -f raw r.raw
  [ "$status" -eq 63 ]
}

@test "check: -r is refused with --force-share and with --read-only (exit 1, file unchanged)" {
  make_img qcow2 x.qcow2
  python3 "$DAMAGE" qcow2 x.qcow2 leak
  cp x.qcow2 copy.qcow2
  run "$IMGFUSE" check -r all -U x.qcow2
  [ "$status" -eq 1 ]
  [ "$output" = "imgfuse: -r: cannot be combined with --force-share: a repair needs the image to itself" ]
  run "$IMGFUSE" check -r leaks --read-only x.qcow2
  [ "$status" -eq 1 ]
  [ "$output" = "imgfuse: -r: refused: --read-only asks that nothing be written to the image" ]
  cmp x.qcow2 copy.qcow2
  run "$IMGFUSE" check --read-only x.qcow2
  [ "$status" -eq 3 ]
}

@test "check: a mounted image (read-only or --rw) is refused unless read-only with --force-share; -r always" {
  make_img qcow2 x.qcow2
  msg="imgfuse: x.qcow2: image is in use by another process (QEMU lock): a mounted or running image is checked only with --force-share, read-only, without -r"
  for mode in "" --rw; do
    mount_img $mode x.qcow2 "$MNT"
    cp x.qcow2 copy.qcow2
    run "$IMGFUSE" check -r all x.qcow2
    [ "$status" -eq 1 ]
    [ "$output" = "$msg" ]
    run "$IMGFUSE" check x.qcow2
    [ "$status" -eq 1 ]
    [ "$output" = "$msg" ]
    run "$IMGFUSE" check -U x.qcow2
    [ "$status" -eq 0 ]
    cmp x.qcow2 copy.qcow2
    unmount_img "$MNT"
  done
  run "$IMGFUSE" check x.qcow2
  [ "$status" -eq 0 ]
}

@test "check: without -r every file is opened O_RDONLY" {
  make_img qcow2 x.qcow2
  python3 "$DAMAGE" qcow2 x.qcow2 leak
  # LeakSanitizer cannot run under ptrace: off for this one run of an ASan build
  ASAN_OPTIONS=${ASAN_OPTIONS:+$ASAN_OPTIONS:}detect_leaks=0 run strace -f -e trace=open,openat -o trace.log \
    "$IMGFUSE" check x.qcow2
  [ "$status" -eq 3 ]
  grep -q 'x.qcow2", O_RDONLY' trace.log
  ! grep -E 'x.qcow2", O_(RDWR|WRONLY)' trace.log
}

@test "check: usage errors exit 1 with one line" {
  run "$IMGFUSE" check -r some x.qcow2
  [ "$status" -eq 1 ]
  [ "$output" = "imgfuse: -r: must be 'leaks' or 'all', not 'some'" ]
  run "$IMGFUSE" check --output=xml x.qcow2
  [ "$status" -eq 1 ]
  run "$IMGFUSE" check
  [ "$status" -eq 1 ]
  run "$IMGFUSE" check missing.qcow2
  [ "$status" -eq 1 ]
  [[ "$output" == "imgfuse: missing.qcow2: "* ]]
}

@test "check, compare: bash completion offers the commands, -r's choices and -F's formats (from --help)" {
  source "$BATS_TEST_DIRNAME/../completions/imgfuse.bash"
  comp() { COMP_WORDS=("$IMGFUSE" "$@"); COMP_CWORD=$#; COMPREPLY=(); _imgfuse; printf '%s\n' "${COMPREPLY[@]}" | sort | xargs; }
  [ "$(comp che)" = check ]
  [ "$(comp comp)" = compare ]
  [ "$(comp check -r '')" = "all leaks" ]
  [ "$(comp check --output=)" = "--output=human --output=json" ]
  [[ " $(comp compare -F '') " == *" qcow2 "* ]]
  [[ " $(comp compare -) " == *" --strict "* ]]
}

@test "check and check -r all on the hostile corpus: qemu-img's exit codes only, no crash, hang or memory blow-up" {
  python3 "$BATS_TEST_DIRNAME/make-hostile" "$TMP/h" qcow2 qed vpc vhdx vdi vmdk parallels >/dev/null
  limit=() max_kb=$((256 << 10))
  if [ -n "${IMGFUSE_ASAN:-}" ]; then max_kb=$((1024 << 10)); else limit=(prlimit --as=$((4096 << 20)) --); fi
  n=0 bad=0 ran=0
  for f in "$TMP"/h/*.img; do
    fmt=$(basename "$f"); fmt=${fmt%%-*}
    cp --sparse=always "$f" "$TMP/work.img"
    for r in "" "-r all"; do
      rc=0
      /usr/bin/time -f %M -o "$TMP/rss" timeout 60 "${limit[@]}" "$IMGFUSE" check $r -f "$fmt" "$TMP/work.img" \
        >/dev/null 2>"$TMP/err" || rc=$?
      kb=$(tail -1 "$TMP/rss")
      case $rc in 0|3) ran=$((ran + 1)) ;; 1|2|63) ;; *) echo "$f check $r: exit $rc $(tail -3 "$TMP/err")"; bad=$((bad + 1)) ;; esac
      [ "$kb" -le "$max_kb" ] || { echo "$f check $r: peak $kb KiB"; bad=$((bad + 1)); }
      ! grep -qE 'ERROR: (Address|Leak)Sanitizer|runtime error:' "$TMP/err" || { cat "$TMP/err"; bad=$((bad + 1)); }
      n=$((n + 1))
    done
  done
  echo "$n checks, $ran clean or leaks only, $bad bad"
  [ "$n" -gt 2000 ]
  [ "$ran" -gt 100 ]   # most hostile images open, and their check runs to an answer
  [ "$bad" -eq 0 ]
}
