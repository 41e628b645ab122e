#!/usr/bin/env bats
# SPDX-License-Identifier: MIT
# tests/hash.bats - `imgfuse hash` on huge disks (issue 16 item 9): a virtual size above the limit is
# refused with one line (exit 2) unless --max-size or --force; a forced run shows progress with -p and
# stops cleanly on SIGINT/SIGTERM (one line, exit 1); holes are hashed from a zero buffer, and the digest
# of a sparse disk equals one computed independently.
load helpers

setup() { setup_tmp; cd "$TMP"; }
teardown() { teardown_tmp; }

# zero_8e: a vmdk descriptor of one ZERO extent of 2^54 - 1 sectors (8 EiB), as tests/make-hostile writes.
zero_8e() {
  printf '# Disk DescriptorFile\nversion=1\nCID=1\nparentCID=ffffffff\ncreateType="custom"\nRW 18014398509481983 ZERO\n' > huge.vmdk
}

# stops_on SIGNAL: starts a forced hash of huge.vmdk, sends SIGNAL after a second; it must end within 20 s.
stops_on() {
  "$IMGFUSE" hash -p --force -f vmdk huge.vmdk > out.txt 2> err.txt &
  local pid=$! i
  sleep 1
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
