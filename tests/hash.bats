#!/usr/bin/env bats
# SPDX-License-Identifier: MIT
# tests/hash.bats - `imgfuse hash` on huge disks (issue 16 item 9): a virtual size above the limit is
# refused with one line (exit 2) unless --max-size or --force; a forced run shows progress with -p and
# stops cleanly on SIGINT/SIGTERM (one line, exit 1); holes are hashed from a zero buffer, and the digest
# of a sparse disk equals one computed independently.
# Issue 18: several digests in one pass (--algo md5,sha1,sha256), several images, -q.
load helpers

setup() { setup_tmp; cd "$TMP"; }
teardown() { teardown_tmp; }

# zero_8e: a vmdk descriptor of one ZERO extent of 2^54 - 1 sectors (8 EiB), as tests/make-hostile writes.
zero_8e() {
  printf '# Disk DescriptorFile\nversion=1\nCID=1\nparentCID=ffffffff\ncreateType="custom"\nRW 18014398509481983 ZERO\n' > huge.vmdk
}

# stops_on SIGNAL: starts a forced hash of huge.vmdk (--algo $HASH_ALGO if set), sends SIGNAL once it has
# hashed its first chunk (its first progress line, within 10 s); it must end within 20 s.
stops_on() {
  "$IMGFUSE" hash -p --force ${HASH_ALGO:+--algo "$HASH_ALGO"} -f vmdk huge.vmdk > out.txt 2> err.txt &
  local pid=$! i
  for i in $(seq 1 500); do grep -q '^imgfuse: hash: ' err.txt && break; sleep 0.02; done
  kill -"$1" "$pid"
  for i in $(seq 1 200); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
  if kill -0 "$pid" 2>/dev/null; then kill -9 "$pid"; echo "hash did not stop on $1"; return 1; fi
  local rc=0
  wait "$pid" || rc=$?
  cat err.txt
  echo "exit status $rc"
  [ "$rc" -eq 1 ]
  [ ! -s out.txt ]
  [ "$(grep -vc '^imgfuse: hash: ' err.txt)" -eq 1 ]
  grep -qE "^imgfuse: huge.vmdk: hash stopped by SIG$1 after [0-9.]+ [KMGT]iB of 8.0 EiB: no digest\$" err.txt
}

@test "hash of an 8 EiB vmdk is refused at once: exit 2, one line with the size and the way round" {
  zero_8e
  run timeout 20 "$IMGFUSE" hash -f vmdk huge.vmdk
  echo "$output"
  [ "$status" -eq 2 ]
  [ "${#lines[@]}" -eq 1 ]
  [ "$output" = "imgfuse: huge.vmdk: virtual size 9223372036854775296 bytes (8.0 EiB) is above the limit of 16.0 TiB for hash: give --max-size SIZE or --force" ]
}

@test "hash --force of an 8 EiB vmdk shows progress with -p and stops on SIGINT and on SIGTERM with one line, exit 1" {
  zero_8e
  stops_on INT
  grep -qE '^imgfuse: hash: +0% \([0-9.]+ [KMGT]iB of 8.0 EiB\)$' err.txt
  stops_on TERM
}

@test "hash of a sparse 4 GiB qcow2 with a little data: progress with -p, digest equals python's over the known content" {
  qemu-img create -q -f qcow2 s.qcow2 4G
  qemu-io -f qcow2 -c "write -P 0x11 0 1M" -c "write -P 0x22 3G 64k" -c "write -z 3221291008 64k" \
    -c "write -P 0x33 4294963200 4k" s.qcow2 > /dev/null
  run "$IMGFUSE" hash -p s.qcow2
  echo "$output"
  [ "$status" -eq 0 ]
  [[ "${lines[-2]}" == "imgfuse: hash: 100% (4.0 GiB of 4.0 GiB)" ]]
  want=$(python3 - <<'EOF'
import hashlib
h = hashlib.sha256()
z = bytes(64 << 20)
def zeros(n):
    while n:
        k = min(n, len(z)); h.update(z[:k]); n -= k
h.update(b"\x11" * (1 << 20))
zeros((3 << 30) - (1 << 20))
h.update(b"\x22" * 65536)
zeros((4 << 30) - 4096 - (3 << 30) - 65536)
h.update(b"\x33" * 4096)
print(h.hexdigest())
EOF
)
  [ "${lines[-1]}" = "$want  s.qcow2" ]
  run "$IMGFUSE" hash --max-size 1G s.qcow2
  [ "$status" -eq 2 ]
  [ "$output" = "imgfuse: s.qcow2: virtual size 4294967296 bytes (4.0 GiB) is above the limit of 1.0 GiB for hash: give --max-size SIZE or --force" ]
  run "$IMGFUSE" hash --max-size 4G s.qcow2
  [ "$status" -eq 0 ]
  [ "$output" = "$want  s.qcow2" ]
  run "$IMGFUSE" hash --max-size 0 s.qcow2
  [ "$status" -eq 2 ]
  [ "$output" = "imgfuse: --max-size: invalid size '0'" ]
}

# sums_of RAW NAME: what md5sum, sha1sum and sha256sum print for RAW, named NAME, in that order.
sums_of() {
  local t
  for t in md5sum sha1sum sha256sum; do echo "$($t < "$1" | cut -d' ' -f1)  $2"; done
}

@test "hash --algo md5,sha1,sha256: one line per digest, equal to the host tools over qemu-img's raw conversion" {
  qemu-img create -q -f qcow2 base.qcow2 8M
  qio base.qcow2 "write -P 0x61 0 3M" "write -P 0x62 6M 512k"
  qemu-img create -q -f qcow2 -b base.qcow2 -F qcow2 top.qcow2
  qio top.qcow2 "write -P 0x63 1M 64k" "write -z 6M 64k" "write -P 0x64 8388096 512"
  qemu-img create -q -f vmdk d.vmdk 5M
  fmt_io vmdk d.vmdk "write -P 0x65 64k 1M"
  for img in top.qcow2 d.vmdk; do
    run "$IMGFUSE" hash --algo md5,sha1,sha256 "$img"
    echo "$output"
    [ "$status" -eq 0 ]
    [ "$output" = "$(sums_of "$(raw_of "$img")" "$img")" ]
  done
  # SIGINT and SIGTERM stop a run of three digests (two of them on threads of their own) as they stop one
  zero_8e
  HASH_ALGO=md5,sha1,sha256 stops_on INT
  HASH_ALGO=sha256,md5 stops_on TERM
  # the order of the list is the order of the lines; one algorithm alone is the old output
  run "$IMGFUSE" hash --algo=sha256,md5 top.qcow2
  [ "$status" -eq 0 ]
  [ "${lines[0]}" = "$(sums_of "$(raw_of top.qcow2)" top.qcow2 | sed -n 3p)" ]
  [ "${lines[1]}" = "$(sums_of "$(raw_of top.qcow2)" top.qcow2 | sed -n 1p)" ]
  [ "${#lines[@]}" -eq 2 ]
  run "$IMGFUSE" hash --algo sha1 top.qcow2
  [ "$output" = "$(sums_of "$(raw_of top.qcow2)" top.qcow2 | sed -n 2p)" ]
  # a bad list is refused with one line, exit 2, before any image is opened
  for bad in md5,md5 md5, ,sha1 sha256,crc32 MD5; do
    run "$IMGFUSE" hash --algo "$bad" missing.qcow2
    echo "$bad -> $status: $output"
    [ "$status" -eq 2 ]
    [ "${#lines[@]}" -eq 1 ]
    [[ "$output" == "imgfuse: --algo: invalid value '$bad' ("* ]]
  done
}

@test "hash of several images: lines in the order given; one that fails gets its line and the rest are hashed" {
  head -c 3000001 /dev/urandom > a.raw
  qemu-img convert -O qcow2 a.raw a.qcow2
  qemu-img create -q -f qcow2 t.qcow2 4M
  qio t.qcow2 "write -P 0x55 0 4M"
  truncate -s 1M t.qcow2          # its data clusters now lie past the end of the file: a read error
  run "$IMGFUSE" hash --algo md5,sha256 a.raw a.qcow2
  echo "$output"
  [ "$status" -eq 0 ]
  [ "$output" = "$(sums_of a.raw a.raw | sed -n '1p;3p'; sums_of "$(raw_of a.qcow2)" a.qcow2 | sed -n '1p;3p')" ]
  # a runtime failure in the middle: exit 1, the images after it are still hashed
  "$IMGFUSE" hash a.raw t.qcow2 a.qcow2 > out.txt 2> err.txt && rc=0 || rc=$?
  cat out.txt err.txt
  [ "$rc" -eq 1 ]
  [ "$(cat out.txt)" = "$(sums_of a.raw a.raw | sed -n 3p; sums_of "$(raw_of a.qcow2)" a.qcow2 | sed -n 3p)" ]
  [ "$(tail -n 1 err.txt)" = "imgfuse: t.qcow2: cannot hash: Input/output error" ]
  # an image that cannot be opened: exit 2 (as for one image), the others still hashed
  run "$IMGFUSE" hash --algo sha1 missing.raw a.raw
  echo "$output"
  [ "$status" -eq 2 ]
  [ "${lines[0]}" = "imgfuse: missing.raw: No such file or directory" ]
  [ "${lines[1]}" = "$(sums_of a.raw a.raw | sed -n 2p)" ]
  [ "${#lines[@]}" -eq 2 ]
  # -p names the image in each progress line when there are several
  run "$IMGFUSE" hash -p a.raw a.qcow2
  echo "$output"
  [ "$status" -eq 0 ]
  [ "$(grep -c '^imgfuse: hash: a\.raw: 100% (2\.9 MiB of 2\.9 MiB)$' <<< "$output")" -eq 1 ]
  [ "$(grep -c '^imgfuse: hash: a\.qcow2: 100% (2\.9 MiB of 2\.9 MiB)$' <<< "$output")" -eq 1 ]
}

@test "hash -q prints the digests and nothing else, even with -p and on a terminal; errors stay one line" {
  truncate -s 64M q.raw
  printf 'x' | dd of=q.raw bs=1 seek=1000 conv=notrunc status=none
  want=$(sums_of q.raw q.raw)
  "$IMGFUSE" hash -q -p --algo md5,sha1,sha256 q.raw > out.txt 2> err.txt
  [ "$(cat out.txt)" = "$want" ]
  [ ! -s err.txt ]
  "$IMGFUSE" hash --quiet --progress --algo md5,sha1,sha256 q.raw > out.txt 2> err.txt
  [ "$(cat out.txt)" = "$want" ]
  [ ! -s err.txt ]
  # on a terminal, hash draws its bar unless -q
  script -qec "$IMGFUSE hash q.raw" /dev/null > tty.out
  grep -q '100%' tty.out
  script -qec "$IMGFUSE hash -q --algo md5,sha1,sha256 q.raw" /dev/null > tty.out
  [ "$(tr -d '\r' < tty.out)" = "$want" ]
  # errors are still printed, one line each
  "$IMGFUSE" hash -q missing.raw q.raw > out.txt 2> err.txt && rc=0 || rc=$?
  [ "$rc" -eq 2 ]
  [ "$(cat err.txt)" = "imgfuse: missing.raw: No such file or directory" ]
  [ "$(cat out.txt)" = "$(sums_of q.raw q.raw | sed -n 3p)" ]
}

@test "the audit log names imgfuse's version: hash --audit-log appends a line per image with its digests, a mount its line" {
  head -c 1048576 /dev/urandom > a.raw
  qemu-img convert -O qcow2 a.raw a.qcow2
  version=$("$IMGFUSE" --version | head -n 1 | cut -d' ' -f2)
  [[ "$version" =~ ^[0-9]+\.[0-9]+ ]]
  run "$IMGFUSE" hash -q --audit-log "$TMP/audit.log" --algo md5,sha1,sha256 a.qcow2 missing.raw
  [ "$status" -eq 2 ]
  mount_img --audit-log "$TMP/audit.log" a.qcow2 "$MNT"
  cat "$MNT/disk.raw" > /dev/null
  unmount_img
  [ "$(wc -l < "$TMP/audit.log")" -eq 3 ]
  python3 - "$TMP/audit.log" "$version" "$TMP/a.qcow2" a.raw <<'PY'
import hashlib, json, os, sys
log, version, qcow2, raw = sys.argv[1:]
h, miss, mnt = [json.loads(l) for l in open(log)]
data = open(raw, "rb").read()
for l in (h, miss, mnt):
    assert l["imgfuse_version"] == version, l
    assert l["uid"] == os.getuid() and l["user"], l
assert h["command"] == "hash" and h["image"] == "a.qcow2" and h["exit_status"] == 0, h
assert h["virtual_size"] == len(data), h
assert h["digests"] == {a: hashlib.new(a, data).hexdigest() for a in ("md5", "sha1", "sha256")}, h
assert [i["file"] for i in h["images"]] == [qcow2] and h["images"][0]["unchanged"] is True, h
assert h["start_time"] <= h["end_time"], h
assert miss["image"] == "missing.raw" and miss["exit_status"] == 2 and miss["digests"] == {}, miss
assert miss["images"] == [] and miss["virtual_size"] == -1, miss
assert "command" not in mnt and mnt["mode"] == "read-only" and mnt["bytes_read"] >= len(data), mnt
PY
}
