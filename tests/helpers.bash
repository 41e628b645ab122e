# SPDX-License-Identifier: MIT
# tests/helpers.bash - shared by every bats suite: a private temp dir per test, mounting imgfuse in the
# foreground as a background job (so a test can wait for the daemon to finish writing back after
# unmount), and comparison helpers against qemu-img.
: "${IMGFUSE:=$BATS_TEST_DIRNAME/../imgfuse}"

setup_tmp() {
  TMP=$(mktemp -d /tmp/imgfuse-test.XXXXXX)
  MNT=$TMP/mnt
  mkdir -p "$MNT"
}

# mount_img [imgfuse options...] IMAGE [MOUNTPOINT]: mounts in the background and waits until mounted.
# The mountpoint defaults to $MNT when the last argument is not an existing directory or file.
# Fails (and prints the daemon's log) if the daemon exits first.
mount_img() {
  local mp="${!#}"
  if [ $# -lt 2 ] || { [ ! -d "$mp" ] && [ ! -f "$mp" ]; } || [ "$mp" = "${1}" ]; then
    set -- "$@" "$MNT"; mp=$MNT
  fi
  "$IMGFUSE" --foreground "$@" >"$TMP/daemon.log" 2>&1 3>&- &
  DAEMON_PID=$!
  MOUNTED=$mp
  local i
  for i in $(seq 1 1000); do  # 10 s in steps of 10 ms
    if mountpoint -q "$mp" 2>/dev/null || grep -q " $(realpath "$mp") fuse" /proc/mounts; then return 0; fi
    if ! kill -0 "$DAEMON_PID" 2>/dev/null; then
      cat "$TMP/daemon.log" >&2; DAEMON_PID=; return 1
    fi
    sleep 0.01
  done
  echo "mount of $mp timed out" >&2; cat "$TMP/daemon.log" >&2
  return 1
}

# unmount_img [MOUNTPOINT]: unmounts and waits for the daemon to exit; returns the daemon's status.
unmount_img() {
  local mp=${1:-$MOUNTED}
  fusermount3 -u "$mp" 2>/dev/null || umount "$mp" 2>/dev/null || umount -l "$mp" 2>/dev/null
  local rc=0
  if [ -n "${DAEMON_PID:-}" ]; then
    local i
    for i in $(seq 1 3000); do kill -0 "$DAEMON_PID" 2>/dev/null || break; sleep 0.01; done  # 30 s
    if kill -0 "$DAEMON_PID" 2>/dev/null; then echo "daemon did not exit" >&2; kill -9 "$DAEMON_PID"; rc=1; fi
    wait "$DAEMON_PID" 2>/dev/null || rc=$?
    DAEMON_PID=
  fi
  wait_unmount_helper "$(realpath "$mp")" || rc=1
  if [ -n "${IMGFUSE_ASAN:-}" ] && grep -qE 'ERROR: (Address|Leak)Sanitizer|runtime error:' "$TMP/daemon.log" 2>/dev/null; then
    cat "$TMP/daemon.log" >&2; rc=86
  fi
  return $rc
}

# wait_unmount_helper MOUNTPOINT: waits until the auto_unmount helper of a daemon that died (a
# fusermount3 process watching MOUNTPOINT) has exited. Left running, it could unmount the next mount
# made at the same path once it gets around to its work on a loaded machine.
# imgfuse's own watcher (comm imgf-unmount, fuse/unwatch.c) does that job for its mounts: one whose
# daemon is gone (its parent is no longer an imgfuse process) is about to look at the mount point. A
# daemon run from a copy of the binary under another name (imgfuse-new, ...: benchmarks on a shared
# machine) is still an imgfuse process: its watcher is not an orphan, and waiting for it would cost every
# unmount 30 s and then fail.
# A watcher keeps the working directory of the daemon it was forked from: one that stands in another
# test's directory (/tmp/imgfuse-test.*, not ours) belongs to another run on a shared machine and is
# not waited for; ours (in $TMP) and daemonized ones (in /) are.
orphan_unmount_watchers() {
  local pid st pp comm cwd pids
  # only the watchers themselves are looked at: a bash loop over every process costs 150 ms under bats
  pids=$(pgrep -d, -x imgf-unmount) || return 0
  ps -o pid=,stat=,ppid=,comm= -p "$pids" | while read -r pid st pp comm; do
    [ "$comm" = imgf-unmount ] && [ "${st#Z}" = "$st" ] && [[ "$(cat "/proc/$pp/comm" 2>/dev/null)" != imgfuse* ]] || continue
    cwd=$(readlink "/proc/$pid/cwd" 2>/dev/null) || cwd=
    case $cwd in
      "$TMP"|"$TMP"/*) ;;
      /tmp/imgfuse-test.*) continue ;;
    esac
    echo "$pp"
  done
}
wait_unmount_helper() {
  local i
  for i in $(seq 1 600); do
    if ! pgrep -f "^fusermount3 .*auto_unmount.* -- $1\$" >/dev/null && [ -z "$(orphan_unmount_watchers)" ]; then
      return 0
    fi
    sleep 0.05
  done
  echo "auto_unmount helper for $1 still running" >&2
  return 1
}

# process_gone PID: the process has exited. A daemonized imgfuse's parent is PID 1, which in some
# containers reaps late, so an exited daemon may linger as a zombie: that counts as gone (kill -0 does not).
process_gone() {
  [ ! -e "/proc/$1" ] || grep -q '^State:[[:space:]]*Z' "/proc/$1/status" 2>/dev/null
}

# kill_daemon [SIGNAL]: kills the daemon (default -9), waits for it, makes sure nothing stays mounted
# and the auto_unmount helper is gone, so the next mount_img at the same path is safe.
kill_daemon() {
  local sig=${1:-9}
  kill -"${sig#-}" "$DAEMON_PID" || true
  wait "$DAEMON_PID" 2>/dev/null || true
  DAEMON_PID=
  fusermount3 -u "$MOUNTED" 2>/dev/null || umount -l "$MOUNTED" 2>/dev/null || true
  wait_unmount_helper "$(realpath "$MOUNTED")"
}

teardown_tmp() {
  if [ -n "${MOUNTED:-}" ] && mountpoint -q "$MOUNTED" 2>/dev/null; then unmount_img "$MOUNTED" || true; fi
  for m in $(grep -o " ${TMP:-/nonexistent}[^ ]*" /proc/mounts 2>/dev/null); do fusermount3 -u "$m" 2>/dev/null || umount -l "$m" 2>/dev/null; done
  [ -n "${DAEMON_PID:-}" ] && kill -9 "$DAEMON_PID" 2>/dev/null
  [ -n "${TMP:-}" ] && rm -rf "$TMP"
  true
}

# raw_of IMAGE: path of qemu-img's raw conversion of IMAGE (made once per test).
raw_of() {
  local out="$TMP/$(basename "$1").oracle.raw"
  [ -f "$out" ] || qemu-img convert -O raw "$@" "$out"
  echo "$out"
}

# same_bytes A B: cmp with a readable failure message.
same_bytes() {
  cmp "$1" "$2" || { echo "differ: $1 vs $2" >&2; return 1; }
}

# fmt_io FORMAT IMAGE CMD...: runs each qemu-io command on IMAGE opened as FORMAT (output discarded).
fmt_io() {
  local fmt=$1 img=$2; shift 2
  local args=() c
  for c in "$@"; do args+=(-c "$c"); done
  qemu-io -f "$fmt" "${args[@]}" "$img" >/dev/null
}

# qio IMAGE CMD...: qemu-io commands on a qcow2 IMAGE.
qio() { fmt_io qcow2 "$@"; }

# json_extents START LENGTH KEY [VALUE]: reads a JSON list of extents on stdin (qemu-img map, imgfuse map,
# rbd diff) and prints, sorted and with adjacent ones merged, the "start end" ranges of the entries whose
# KEY is true (or, with VALUE, equals VALUE as a string); START and LENGTH name the offset and size keys.
json_extents() {
  python3 -c '
import json, sys
start, length, key = sys.argv[1:4]
want = sys.argv[4] if len(sys.argv) > 4 else None
ext = []
for e in sorted(json.load(sys.stdin), key=lambda e: e[start]):
    if (str(e[key]) != want) if want is not None else not e[key]:
        continue
    s, t = e[start], e[start] + e[length]
    if ext and ext[-1][1] == s:
        ext[-1][1] = t
    else:
        ext.append([s, t])
for s, t in ext:
    print(s, t)' "$@"
}

# qemu_data_extents FORMAT IMAGE: the "start end" ranges qemu-img map calls data, adjacent ones merged.
qemu_data_extents() {
  qemu-img map -f "$1" --output=json "$2" | json_extents start length data
}

# refused_open IMAGE PATTERN [options...]: mounting IMAGE fails with exit 2, one line naming IMAGE and
# PATTERN, and nothing mounted.
refused_open() {
  local img=$1 pattern=$2; shift 2
  # a bound, so that an image which mounts instead of being refused fails the test rather than hanging it
  run timeout -k 5 120 "$IMGFUSE" --foreground "$@" "$img" "$MNT"
  echo "status $status: $output"
  [ "$status" -eq 2 ]
  [ "${#lines[@]}" -eq 1 ]
  [[ "${lines[0]}" == "imgfuse: $img: "*"$pattern"* ]]
  not_mounted "$MNT"
}

# patch_le FILE OFFSET WIDTH VALUE: overwrites a little-endian field of WIDTH bytes (4 or 8) in place.
patch_le() {
  python3 - "$@" <<'EOF'
import struct, sys
path, off, width, val = sys.argv[1], int(sys.argv[2], 0), int(sys.argv[3]), int(sys.argv[4], 0)
with open(path, "r+b") as f:
    f.seek(off)
    f.write(struct.pack("<I" if width == 4 else "<Q", val))
EOF
}

# check_clean [qemu-img check options...] IMAGE: qemu-img check reports neither errors nor leaks.
check_clean() {
  run qemu-img check "$@"
  echo "$output"
  [ "$status" -eq 0 ]
  [[ "$output" == *"No errors were found"* ]]
  [[ "$output" != *"leaked"* ]]
}

# --- the mount's lifecycle (unmount watcher, imgfuse unmount) ---

# test_user: the name of an unprivileged user for tests (created once, without a home directory).
test_user() {
  id -u imgfuse-user >/dev/null 2>&1 || useradd -M -s /usr/sbin/nologin imgfuse-user >/dev/null 2>&1 || id -u imgfuse-user >/dev/null
  echo imgfuse-user
}

# wait_gone MOUNTPOINT: until MOUNTPOINT is no longer a mount point (10 s at most); then it must be a
# plain, reachable directory or file again (no ENOTCONN).
wait_gone() {
  local i
  for i in $(seq 1 200); do mountpoint -q "$1" 2>/dev/null || break; sleep 0.05; done
  ! mountpoint -q "$1" 2>/dev/null && stat "$1" >/dev/null
}

# --- mount checks shared by the suites ---

# nothing_mounted [PREFIX]: no mount point in /proc/mounts begins with PREFIX ($TMP by default).
nothing_mounted() {
  ! grep -q " ${1:-$TMP}" /proc/mounts
}

# not_mounted MOUNTPOINT: MOUNTPOINT itself is not in /proc/mounts.
not_mounted() {
  ! grep -q " $1 " /proc/mounts
}

# wait_mounted MOUNTPOINT [TRIES] [INTERVAL]: until MOUNTPOINT is a mount point (TRIES checks INTERVAL
# seconds apart, by default 200 and 0.05); fails if it never becomes one.
wait_mounted() {
  local i
  for i in $(seq 1 "${2:-200}"); do mountpoint -q "$1" && return 0; sleep "${3:-0.05}"; done
  mountpoint -q "$1"
}

# layer_map_equals_qemu JSON MAP: the text of a MNT/layers/N-NAME/map file (a "START LENGTH data|zero"
# line per run of that layer) equals what `qemu-img map --output=json` (in JSON) says that one layer
# holds: its depth-0 present extents, neighbours of one kind merged.
layer_map_equals_qemu() {
  python3 - "$1" "$2" <<'EOF'
import json, sys
want = []
for e in json.load(open(sys.argv[1])):
    if e["depth"] != 0 or not e["present"]:
        continue
    kind = "data" if e["data"] else "zero"
    if want and want[-1][2] == kind and want[-1][0] + want[-1][1] == e["start"]:
        want[-1][1] += e["length"]
    else:
        want.append([e["start"], e["length"], kind])
got = [[int(a), int(b), c] for a, b, c in (l.split() for l in open(sys.argv[2]))]
assert got == want, (got[:5], want[:5])
EOF
}

# make_luks FILE: a real LUKS1 container. qemu-img times its PBKDF on this CPU and gives up with
# "Unable to get accurate CPU usage" when the machine is busy, so it is given a few tries.
make_luks() {  # used by probe-known-formats and new-user-mistakes
  qemu_create_retry "$1" -f luks --object secret,id=s0,data=pw -o key-secret=s0,iter-time=500 "$1" 1M
}

# mount_equals_qemu FMT IMAGE [mount options]: size, bytes and SEEK_DATA map of disk.raw equal QEMU's
# view of IMAGE read as FMT (qemu-img convert, qemu-img map's data extents). Used by the qed, qcow and
# parallels suites.
mount_equals_qemu() {
  local fmt=$1 img=$2; shift 2
  local oracle="$TMP/$(basename "$img").oracle.raw"
  qemu-img convert -f "$fmt" -O raw "$img" "$oracle"
  mount_img "$@" "$img" "$MNT"
  [ "$(stat -c %s "$MNT/disk.raw")" -eq "$(stat -c %s "$oracle")" ]
  same_bytes "$MNT/disk.raw" "$oracle"
  local ours theirs
  ours=$(python3 "$BATS_TEST_DIRNAME/seekmap.py" "$MNT/disk.raw")
  theirs=$(qemu_data_extents "$fmt" "$img")
  unmount_img
  if [ "$ours" != "$theirs" ]; then
    echo "map differs for $img"; echo "imgfuse:"; echo "$ours"; echo "qemu-img:"; echo "$theirs"
    return 1
  fi
}

# --- kill -9 rounds (the qcow2 and VHDX write suites) ---

# crash_writer RAW LOG SEED: random 4 KiB block writes with periodic fsync; logs "W block value" before
# each write and "S" after each fsync returned.
crash_writer() {
  python3 - "$@" <<'PYW'
import os, random, sys
path, log, seed = sys.argv[1], sys.argv[2], int(sys.argv[3])
rnd = random.Random(seed)
fd = os.open(path, os.O_RDWR)
lf = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
while True:
    for _ in range(rnd.randrange(1, 16)):
        blk, val = rnd.randrange(0, 4096), rnd.randrange(1, 256)
        os.write(lf, b"W %d %d\n" % (blk, val))
        os.pwrite(fd, bytes([val]) * 4096, blk * 4096)
    os.fsync(fd)
    os.write(lf, b"S\n")
PYW
}

# crash_verify RAW LOG: every block written before the last completed fsync holds its last synced
# value or a value written after that fsync; each block is written whole.
crash_verify() {
  python3 - "$@" <<'PYC'
import sys
data = open(sys.argv[1], "rb").read()
synced, pending, after = {}, {}, {}
for line in open(sys.argv[2]):
    p = line.split()
    if p == ["S"]:
        synced.update(pending)
        pending, after = {}, {}
    elif len(p) == 3:
        blk, val = int(p[1]), int(p[2])
        pending[blk] = val
        after.setdefault(blk, set()).add(val)
for blk, val in synced.items():
    got = data[blk * 4096]
    assert got in {val} | after.get(blk, set()), (blk, got, val)
    assert data[blk * 4096:(blk + 1) * 4096] == bytes([got]) * 4096, blk
print("verified", len(synced), "synced blocks")
PYC
}

# --- shared by the create and VHD/VHDX suites (one copy of what they each repeated) ---

# vhdi_equals IMAGE EXPECT: vhdimount (libvhdi) shows EXPECT as IMAGE's disk (the last layer of its chain:
# a differencing child's own view); mounted at ./vm and unmounted again.
vhdi_equals() {
  mkdir -p vm
  vhdimount "$1" vm >/dev/null
  local rc=0
  cmp "vm/$(ls vm | sort -V | tail -1)" "$2" || rc=1
  fusermount3 -u vm
  return $rc
}

# create_refusals FMT FILE: for each line "ARGS|SIZE|MESSAGE" on stdin, `imgfuse create -f FMT ARGS FILE SIZE`
# (ARGS split at blanks, SIZE left out when empty) exits 2 with the one line "imgfuse: FILE: MESSAGE" and
# leaves no FILE behind.
create_refusals() {
  local fmt=$1 file=$2 args size msg
  while IFS='|' read -r args size msg; do
    run "$IMGFUSE" create -f "$fmt" $args "$file" $size
    echo "$args $size: $status $output"
    [ "$status" -eq 2 ]
    [ "$output" = "imgfuse: $file: $msg" ]
    [ ! -e "$file" ]
  done
}

# hash_traced ARGS...: `imgfuse hash ARGS` under strace; every open and openat it made is in ./trace.txt.
# LeakSanitizer cannot run under ptrace (sanitizer builds): leaks are checked by the other tests.
hash_traced() {
  ASAN_OPTIONS="${ASAN_OPTIONS:-}:detect_leaks=0" strace -f -qq -e trace=open,openat -o trace.txt "$IMGFUSE" hash "$@"
}

# never_opened_for_writing REGEX: no open in ./trace.txt of a file matching REGEX (grep -E; end it with '"'
# to match the whole name) asked for O_RDWR, O_WRONLY or O_CREAT. An assertion wherever it is called (a
# `! grep` that is not a test's last command asserts nothing under bats' set -e).
never_opened_for_writing() {
  if grep -E "$1" trace.txt | grep -E 'O_RDWR|O_WRONLY|O_CREAT'; then
    return 1
  fi
}

# write_both EXPECT "OFFSET LENGTH PATTERN"...: each write (qemu-io's `write -P PATTERN OFFSET LENGTH`)
# goes to $MNT/disk.raw and to the file EXPECT alike.
write_both() {
  local expect=$1 w; shift
  for w in "$@"; do
    set -- $w
    qemu-io -f raw -c "write -P $3 $1 $2" "$MNT/disk.raw" >/dev/null
    qemu-io -f raw -c "write -P $3 $1 $2" "$expect" >/dev/null
  done
}

# vhdx_dirty_image NAME [tests/vhdx-make-log.py options]: NAME.vhdx (12 MiB, 1 MiB blocks, three written
# ranges) with a dirty log, NAME.before.raw its content before the log, NAME.expect.raw after its replay.
vhdx_dirty_image() {
  local n=$1; shift
  qemu-img create -q -f vhdx -o block_size=1M "$n.vhdx" 12M
  fmt_io vhdx "$n.vhdx" 'write -P 0x31 0 3M' 'write -P 0x32 5M 1M' 'write -P 0x33 11534336 1000'
  qemu-img convert -f vhdx -O raw "$n.vhdx" "$n.before.raw"
  python3 "$BATS_TEST_DIRNAME/vhdx-make-log.py" "$n.vhdx" "$n.before.raw" "$n.expect.raw" "$@"
}

# zero_both EXPECT "-z|-p OFFSET LENGTH"...: each range of $MNT/disk.raw zeroed (fallocate -z) or punched
# (fallocate -p), and the same range of the file EXPECT written as zeros (qemu-io's `write -z`).
zero_both() {
  local expect=$1 w; shift
  for w in "$@"; do
    set -- $w
    fallocate $1 -o "$2" -l "$3" "$MNT/disk.raw"
    qemu-io -f raw -c "write -z $2 $3" "$expect" >/dev/null
  done
}

# vhd_clean IMAGE: the structure check (tests/vpc-check.py) and libvhdi (vhdiinfo) both accept the image.
vhd_clean() {
  run python3 "$BATS_TEST_DIRNAME/vpc-check.py" "$1"
  echo "$output"
  [ "$status" -eq 0 ]
  run vhdiinfo "$1"
  echo "$output"
  [ "$status" -eq 0 ]
}

# --- servers of the remote-protocol suites (nbd, http, s3, rbd): one copy of what they each wrote ---

# stop_server NAME [SIGNAL]: the server whose pid is in $TMP/NAME.pid is resumed (it may have been stopped),
# sent SIGNAL (default -TERM) and waited for (5 s at most); its pid file is removed.
stop_server() {
  local pid; pid=$(cat "$TMP/$1.pid")
  kill -CONT "$pid" 2>/dev/null || true
  kill "${2:--TERM}" "$pid" 2>/dev/null || true
  local i
  for i in $(seq 1 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.05; done
  rm -f "$TMP/$1.pid"
}

# teardown_servers: the teardown of a suite that starts servers. A mount left behind is unmounted while its
# server is still up (an unmount that fails, an ASan report among them, fails the test), then every server
# with a pid file in $TMP is stopped, then teardown_tmp.
teardown_servers() {
  local rc=0 p
  if [ -n "${MOUNTED:-}" ] && mountpoint -q "$MOUNTED" 2>/dev/null; then unmount_img "$MOUNTED" || rc=$?; fi
  for p in "$TMP"/*.pid; do
    if [ -f "$p" ]; then stop_server "$(basename "$p" .pid)"; fi
  done
  teardown_tmp
  return $rc
}

# free_port: a TCP port of 127.0.0.1 nobody listens on now.
free_port() {
  python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

# now_ms: the wall clock in milliseconds, for timing what a test waits for.
now_ms() { echo $(( $(date +%s%N) / 1000000 )); }

# format_trio [DIR]: DIR/d.qcow2 (64 MiB; data at 1M, 40M and 63M and a zeroed range, written by qemu-io) and
# the same disk converted by qemu-img to DIR/d.vmdk (monolithicSparse) and DIR/d.vhdx. DIR defaults to ".".
format_trio() {
  local d=${1:-.}
  qemu-img create -q -f qcow2 "$d/d.qcow2" 64M
  fmt_io qcow2 "$d/d.qcow2" 'write -P 0x11 1M 3M' 'write -P 0x22 40M 100k' 'write -z 2M 64k' 'write -P 0x33 63M 1M'
  qemu-img convert -O vmdk -o subformat=monolithicSparse "$d/d.qcow2" "$d/d.vmdk"
  qemu-img convert -O vhdx "$d/d.qcow2" "$d/d.vhdx"
}

# reads_like LOCAL [imgfuse options...] IMAGE: IMAGE (a URL, most often) mounted at $MNT has LOCAL's format (as
# qemu-img names it) in info, and disk.raw holds the bytes of `qemu-img convert -O raw LOCAL`; unmounted again.
reads_like() {
  local local_img=$1 fmt; shift
  fmt=$(qemu-img info --output=json "$local_img" | python3 -c 'import json, sys; print(json.load(sys.stdin)["format"])')
  mount_img "$@" "$MNT"
  grep -q "format: $fmt\$" "$MNT/info"
  same_bytes "$MNT/disk.raw" "$(raw_of "$local_img")"
  unmount_img
}

# overlay_takes_writes BASE [imgfuse options...]: ov.qcow2 (a local qcow2 overlay the caller made) mounted --rw
# over BASE (a qcow2, a URL most often) given with --backing takes two writes of random data (w1: 320 KiB at
# 192 KiB, its first 12 KiB at 4000 KiB); after unmount qemu-img check finds it clean and qemu-img convert of
# it (after.raw) equals what the mount showed (shown.raw) and holds w1 at 192 KiB.
overlay_takes_writes() {
  local base=$1; shift
  mount_img --rw "$@" --backing "$base" --backing-format qcow2 ov.qcow2 "$MNT"
  grep -q "given with --backing" "$MNT/info"
  dd if=/dev/urandom of=w1 bs=64k count=5 2>/dev/null
  dd if=w1 of="$MNT/disk.raw" bs=64k seek=3 conv=notrunc,fsync 2>/dev/null
  dd if=w1 of="$MNT/disk.raw" bs=4096 seek=1000 count=3 conv=notrunc,fsync 2>/dev/null
  cp "$MNT/disk.raw" shown.raw
  unmount_img
  check_clean ov.qcow2
  qemu-img convert -O raw ov.qcow2 after.raw
  same_bytes after.raw shown.raw
  cmp -n 327680 -i 0:196608 w1 after.raw
}

# killed_server_fails_reads NAME: a reader of $MNT/disk.raw (a 64 MiB image mounted --direct-io --timeout 3 from
# the server whose pid is in $TMP/NAME.pid, slowed down so that reading takes more than a second) gets EIO
# within 6 s of the server's kill -9; ls and stat of the mount still work.
killed_server_fails_reads() {
  dd if="$MNT/disk.raw" of=/dev/null bs=1M count=60 iflag=direct 2>dd.err &
  local reader=$! t0 rc=0
  sleep 1
  t0=$(now_ms)
  stop_server "$1" -KILL
  wait $reader || rc=$?
  echo "dd: $rc $(cat dd.err) after $(( $(now_ms) - t0 )) ms"
  [ "$rc" -ne 0 ]
  grep -q "Input/output error" dd.err
  [ $(( $(now_ms) - t0 )) -lt 6000 ]
  ls "$MNT" | grep -q disk.raw
  [ "$(stat -c %s "$MNT/disk.raw")" -eq 67108864 ]
}

# hung_server_fails_reads NAME SKIP LOCAL: the server with its pid in $TMP/NAME.pid (started again by the caller)
# is stopped (SIGSTOP): a read of the 64 KiB block SKIP of $MNT/disk.raw (one the mount has not cached) fails
# with EIO after the mount's --timeout of 3 s, not much more; resumed, all of disk.raw reads like the file LOCAL.
hung_server_fails_reads() {
  kill -STOP "$(cat "$TMP/$1.pid")"
  local t0 took; t0=$(now_ms)
  run dd if="$MNT/disk.raw" of=/dev/null bs=64k count=1 skip="$2" iflag=direct
  took=$(( $(now_ms) - t0 ))
  echo "hung server: $status after ${took} ms: $output"
  [ "$status" -ne 0 ]
  [[ "$output" == *"Input/output error"* ]]
  [ "$took" -ge 2500 ] && [ "$took" -lt 8000 ]
  kill -CONT "$(cat "$TMP/$1.pid")"
  dd if="$MNT/disk.raw" of=back.raw bs=1M iflag=direct 2>/dev/null
  same_bytes back.raw "$3"
}

# fio_crc32c FIO-JOB-OPTIONS...: fio over $MNT/disk.raw (psync, crc32c verification that stops at the first
# mismatch, the jobs' results as one) with the given job options (--rw, block sizes, --size, --numjobs,
# --offset_increment, --direct, --randseed); fio's log (./fio.log) is shown when it fails.
fio_crc32c() {
  fio --name=v --filename="$MNT/disk.raw" "$@" --verify=crc32c --ioengine=psync --verify_fatal=1 --group_reporting \
    > fio.log 2>&1 || { cat fio.log; return 1; }
}

# ceph_start: for setup_file: a single-node Ceph cluster (tests/tools/ceph-cluster, radosgw included) in a new
# directory CEPH_DIR (exported). If it does not start, its output without the lines that name keys and the
# tail of its logs are shown.
ceph_start() {
  CEPH_DIR=$(mktemp -d /tmp/imgfuse-ceph.XXXXXX)
  export CEPH_DIR
  CEPH_START_TIMEOUT=${CEPH_START_TIMEOUT:-180} "$BATS_TEST_DIRNAME/tools/ceph-cluster" start "$CEPH_DIR" \
    >"$CEPH_DIR.out" 2>&1 || { grep -v KEY "$CEPH_DIR.out" >&3; tail -5 "$CEPH_DIR"/log/*.log >&3 2>/dev/null; return 1; }
}

# ceph_stop: for teardown_file: the cluster of ceph_start stopped, its directory removed.
ceph_stop() {
  "$BATS_TEST_DIRNAME/tools/ceph-cluster" stop "$CEPH_DIR" >/dev/null 2>&1 || true
  case "${CEPH_DIR:-}" in /tmp/imgfuse-ceph.*) rm -rf -- "$CEPH_DIR" "$CEPH_DIR.out" ;; esac
}

# --- the encrypted-image suites (luks, luks-create, qcow2-crypt, crypt-commands): one copy of what they each wrote ---

# qemu_create_retry FILE QEMU-IMG-CREATE-ARGUMENTS...: `qemu-img create -q ARGUMENTS` (which make FILE), tried up
# to 8 times a second apart with FILE removed after each failure, then once more with its error shown: qemu-img
# times its LUKS PBKDF on this CPU and gives up ("Unable to get accurate CPU usage") when the machine is busy.
qemu_create_retry() {
  local f=$1 i; shift
  for i in 1 2 3 4 5 6 7 8; do
    qemu-img create -q "$@" 2>/dev/null && return 0
    rm -f "$f"; sleep 1
  done
  qemu-img create -q "$@"
}

# one_line STATUS LINE: the last `run` exited STATUS and printed exactly LINE, one line.
one_line() {
  echo "status $status (want $1): $output"
  [ "$status" -eq "$1" ]
  [ "${#lines[@]}" -eq 1 ]
  [ "${lines[0]}" = "$2" ]
}

# fails_with STATUS LINE: one_line STATUS LINE, and nothing is mounted at $MNT.
fails_with() {
  one_line "$@"
  not_mounted "$MNT"
}
