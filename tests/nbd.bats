#!/usr/bin/env bats
# SPDX-License-Identifier: MIT
# nbd.bats - images on NBD servers (the nbd protocol driver, through libnbd): nbdkit servers started here on
# unix sockets under the test's temp dir or on free ports of 127.0.0.1, and stopped in teardown. qcow2,
# vmdk and vhdx images exported by nbdkit's file plugin read like `qemu-img convert -O raw` of the local
# file, over TLS too (nbds://); a raw export's SEEK_DATA map and `imgfuse map` are the server's
# base:allocation, as qemu-img reads it; a remote image's relative backing name resolves on its server; a
# local qcow2 overlay over a remote base (--backing URL) takes writes that qemu-img checks and reads back,
# and so do --overlay and --snapshot of a remote image;
# fio verifies 4 jobs on a --rw mount of nbdkit's memory plugin; a server killed or stopped during reads
# gives the reader EIO within --timeout, `ls` works meanwhile and reads succeed once it is back; nbdkit's
# error filter's errors reach the reader and writes acknowledged before stay; a URL written inside an image
# is refused (the server sees no connection) unless --unsafe-backing; several requests are in flight on one
# connection (8 reads of a 500 ms server at once take about 500 ms).

load helpers

setup() { setup_tmp; cd "$TMP"; }
teardown() { teardown_servers; }

# start_nbdkit NAME ARGS...: nbdkit ARGS on the unix socket $TMP/NAME.sock (pid in $TMP/NAME.pid); it forks
# once it listens. Echoes nothing; the URL is "nbd+unix:///EXPORT?socket=$TMP/NAME.sock".
start_nbdkit() {
  local name=$1; shift
  nbdkit -U "$TMP/$name.sock" -P "$TMP/$name.pid" "$@"
  wait_pid_file "$name"
}

# wait_pid_file NAME: until nbdkit's forked server has written $TMP/NAME.pid.
wait_pid_file() {
  local i
  for i in $(seq 1 100); do [ -s "$TMP/$1.pid" ] && return 0; sleep 0.05; done
  echo "nbdkit $1 wrote no pid file" >&2; return 1
}

# start_nbdkit_tcp NAME PORT ARGS...: the same on 127.0.0.1:PORT.
start_nbdkit_tcp() {
  local name=$1 port=$2; shift 2
  nbdkit -i 127.0.0.1 -p "$port" -P "$TMP/$name.pid" "$@"
  wait_pid_file "$name"
}

unix_url() { echo "nbd+unix:///${2:-}?socket=$TMP/$1.sock"; }

@test "qcow2, vmdk and vhdx images on nbd (unix socket and TCP) read like qemu-img convert of the local file" {
  format_trio
  local f
  for f in d.qcow2 d.vmdk d.vhdx; do
    start_nbdkit "${f#d.}" -r file "$f"
    reads_like "$f" "$(unix_url "${f#d.}")"
  done
  local port; port=$(free_port)
  start_nbdkit_tcp tcp "$port" -r file d.qcow2
  reads_like d.qcow2 "nbd://127.0.0.1:$port"
  run "$IMGFUSE" info "nbd://127.0.0.1:$port/"
  [ "$status" -eq 0 ]
  [[ "$output" == *"format: qcow2"* ]]
}

@test "a raw export's SEEK_DATA map and imgfuse map come from the server's base:allocation (as qemu-img's)" {
  truncate -s 32M r.raw
  qemu-io -f raw -c 'write -P 0x33 4M 1M' -c 'write -P 0x44 20M 64k' r.raw >/dev/null
  start_nbdkit r -r file r.raw
  local url; url=$(unix_url r)
  mount_img -f raw "$url"
  same_bytes "$MNT/disk.raw" r.raw
  ours=$(python3 "$BATS_TEST_DIRNAME/seekmap.py" "$MNT/disk.raw")
  unmount_img
  theirs=$(qemu_data_extents raw "$url")
  echo "ours: $ours"; echo "qemu-img: $theirs"
  [ "$ours" = "$theirs" ]
  [ "$ours" = "$(printf '4194304 5242880\n20971520 21037056')" ]
  # imgfuse map --output=json: exactly what qemu-img map says of the same export
  "$IMGFUSE" map --output=json "$url" > ours.json
  qemu-img map -f raw --output=json "$url" > theirs.json
  diff ours.json theirs.json
}

@test "a remote image's relative backing name resolves on the same server" {
  mkdir exp
  qemu-img create -q -f qcow2 exp/base.qcow2 16M
  qio exp/base.qcow2 'write -P 0x55 0 8M'
  qemu-img create -q -f qcow2 -b base.qcow2 -F qcow2 exp/top.qcow2
  qio exp/top.qcow2 'write -P 0x66 1M 1M'
  start_nbdkit dir -r file dir=exp
  mount_img "$(unix_url dir top.qcow2)"
  same_bytes "$MNT/disk.raw" "$(raw_of exp/top.qcow2)"
  grep -q "nbd+unix:///base.qcow2?socket=$TMP/dir.sock" "$MNT/info"
  unmount_img
}

@test "nbds:// (TLS with a pre-shared key): reads like the local file; the server refuses plain nbd://" {
  qemu-img create -q -f qcow2 d.qcow2 16M
  qio d.qcow2 'write -P 0x3c 64k 2M'
  echo "alice:$(head -c 32 /dev/urandom | od -An -tx1 | tr -d ' \n')" > keys.psk
  chmod 600 keys.psk
  local port; port=$(free_port)
  start_nbdkit_tcp tls "$port" -r --tls=require --tls-psk="$TMP/keys.psk" file d.qcow2
  reads_like d.qcow2 "nbds://alice@127.0.0.1:$port/?tls-psk-file=$TMP/keys.psk"
  run "$IMGFUSE" info "nbd://127.0.0.1:$port/"
  [ "$status" -eq 2 ]
  [[ "$output" == *"cannot connect to the NBD server: "*"TLS"* ]]
}

@test "a local qcow2 overlay over a remote base (--backing URL) takes writes; qemu-img check is clean" {
  qemu-img create -q -f qcow2 base.qcow2 32M
  qio base.qcow2 'write -P 0x77 0 32M'
  qemu-img create -q -f qcow2 -b base.qcow2 -F qcow2 ov.qcow2
  start_nbdkit base -r file base.qcow2
  overlay_takes_writes "$(unix_url base)"
}

@test "--overlay and --snapshot of a remote image: writes stay local, the export is untouched, the overlay is reused" {
  qemu-img create -q -f qcow2 base.qcow2 16M
  qio base.qcow2 'write -P 0x42 0 4M'
  local before; before=$(sha256sum < base.qcow2)
  start_nbdkit base -r file base.qcow2
  local url; url=$(unix_url base)
  mount_img --overlay "$TMP/ov.qcow2" "$url"
  dd if=/dev/urandom of=w bs=64k count=3 2>/dev/null
  dd if=w of="$MNT/disk.raw" bs=64k seek=2 conv=notrunc,fsync 2>/dev/null
  cp "$MNT/disk.raw" shown.raw
  unmount_img
  [ "$(qemu-img info --output=json ov.qcow2 | python3 -c 'import json,sys; print(json.load(sys.stdin)["backing-filename"])')" = "$url" ]
  mount_img --overlay "$TMP/ov.qcow2" "$url"
  same_bytes "$MNT/disk.raw" shown.raw
  unmount_img
  mount_img --snapshot "$url"
  dd if=w of="$MNT/disk.raw" bs=64k seek=9 conv=notrunc,fsync 2>/dev/null
  unmount_img
  [ "$(sha256sum < base.qcow2)" = "$before" ]
}

@test "fio with 4 jobs and crc32c verification on an nbd --rw mount (nbdkit memory plugin)" {
  start_nbdkit mem --filter=log memory 128M logfile="$TMP/server.log"
  mount_img --rw -f raw "$(unix_url mem)"
  fio_crc32c --rw=randrw --bsrange=512-128k --size=16M --numjobs=4 --offset_increment=32M --direct=1 --randseed=7
  cp "$MNT/disk.raw" shown.raw
  unmount_img
  qemu-img convert -f raw -O raw "$(unix_url mem)" server.raw
  same_bytes server.raw shown.raw
  grep -q "connection=2 " server.log  # several requests in flight: the pool's connections
}

@test "a server killed during reads: EIO within --timeout, ls works, reads succeed once it is back" {
  truncate -s 64M r.raw
  qemu-io -f raw -c 'write -P 0x5a 0 64M' r.raw >/dev/null
  local port; port=$(free_port)
  start_nbdkit_tcp srv "$port" -r --filter=delay file r.raw rdelay=200ms
  mount_img --direct-io --timeout 3 -f raw "nbd://127.0.0.1:$port"
  killed_server_fails_reads srv
  # a server that hangs (stopped) costs the reader --timeout, not more; back, reads work again (the driver
  # connects anew)
  start_nbdkit_tcp srv "$port" -r file r.raw
  hung_server_fails_reads srv 3 r.raw
  unmount_img
}

@test "nbdkit's error filter: EIO reaches the reader; writes acknowledged before an error are kept" {
  truncate -s 8M r.raw
  start_nbdkit err --filter=error file r.raw error=EIO error-pread-rate=1 error-pread-file="$TMP/fail-read" \
    error-pwrite-rate=1 error-pwrite-file="$TMP/fail-write"
  mount_img --rw --direct-io -f raw "$(unix_url err)"
  dd if=/dev/urandom of=a bs=64k count=2 2>/dev/null
  dd if=a of="$MNT/disk.raw" bs=64k seek=1 oflag=direct conv=notrunc 2>/dev/null
  touch fail-write
  run dd if=a of="$MNT/disk.raw" bs=64k seek=10 oflag=direct conv=notrunc
  [ "$status" -ne 0 ]
  [[ "$output" == *"Input/output error"* ]]
  rm fail-write
  touch fail-read
  run dd if="$MNT/disk.raw" of=/dev/null bs=64k count=1 iflag=direct
  [ "$status" -ne 0 ]
  [[ "$output" == *"Input/output error"* ]]
  rm fail-read
  dd if="$MNT/disk.raw" of=back bs=64k skip=1 count=2 iflag=direct 2>/dev/null
  same_bytes back a
  unmount_img
  cmp -n 131072 -i 65536:0 r.raw a
  cmp -n 131072 -i 655360:0 r.raw /dev/zero
}

@test "a URL written inside an image is refused (no connection made) unless --unsafe-backing" {
  qemu-img create -q -f qcow2 base.qcow2 8M
  qio base.qcow2 'write -P 0x99 0 1M'
  local port; port=$(free_port)
  start_nbdkit_tcp b "$port" -r --filter=log file base.qcow2 logfile="$TMP/server.log"
  qemu-img create -q -f qcow2 -u -b "nbd://127.0.0.1:$port" -F qcow2 h.qcow2 8M
  refused_open h.qcow2 "backing file 'nbd://127.0.0.1:$port' refused: a remote location named inside an image is never followed; use --backing-dir DIR or --backing FILE (or --unsafe-backing)"
  run "$IMGFUSE" info h.qcow2
  [ "$status" -eq 2 ]
  run grep -c "connection=" server.log
  [ "$output" = 0 ]
  reads_like base.qcow2 --unsafe-backing h.qcow2
  grep -q "connection=1" server.log
  # imgfuse create -b URL (the user's choice) takes the size from the server; the image still needs
  # --unsafe-backing to follow the URL it records
  "$IMGFUSE" create -f qcow2 -b "nbd://127.0.0.1:$port" -F qcow2 c.qcow2
  [ "$(qemu-img info --output=json c.qcow2 | python3 -c 'import json,sys; print(json.load(sys.stdin)["virtual-size"])')" = 8388608 ]
  refused_open c.qcow2 "a remote location named inside an image is never followed"
}

@test "URLs: a server that is not there is one line, exit 2; a password is refused unshown; other schemes still refused" {
  local port; port=$(free_port)
  run "$IMGFUSE" info "nbd://127.0.0.1:$port/x"
  [ "$status" -eq 2 ]
  [ "${#lines[@]}" -eq 1 ]
  [[ "${lines[0]}" == "imgfuse: nbd://127.0.0.1:$port/x: cannot connect to the NBD server: "*"Connection refused" ]]
  run "$IMGFUSE" "ftp://127.0.0.1:$port/d.qcow2" "$MNT"
  [ "$status" -eq 2 ]
  [ "$output" = "imgfuse: ftp://127.0.0.1:$port/d.qcow2: network protocols are not supported yet (ftp); give the path of a local image file" ]
  # a password in the URL: refused before anything, and never shown
  for cmd in info map hash; do
    run "$IMGFUSE" $cmd "nbd://bob:hunter2@127.0.0.1:$port/x"
    [ "$status" -ne 0 ]
    [ "$output" = "imgfuse: nbd://bob:***@127.0.0.1:$port/x: a password in the URL is not supported (the nbd driver takes none; TLS keys go in a file: tls-psk-file=FILE)" ]
  done
  run "$IMGFUSE" --audit-log "$TMP/audit.log" "nbd://bob:hunter2@127.0.0.1:$port/x" "$MNT"
  [ "$status" -eq 2 ]
  [[ "$output" != *hunter2* ]]
  run grep -q hunter2 "$TMP/audit.log"
  [ "$status" -ne 0 ]
  run "$IMGFUSE" --timeout 0 -f raw "nbd://127.0.0.1:$port/x" "$MNT"
  [ "$status" -eq 2 ]
  [[ "$output" == *"nbd option 'timeout'"* ]]
}

@test "several requests in flight on one connection: 8 slow reads at once take one delay, not eight" {
  # a writable export without multi-conn: the driver uses one connection; every read takes 500 ms
  start_nbdkit slow --filter=log --filter=multi-conn --filter=delay memory 64M multi-conn-mode=disable \
    delay-read=500ms logfile="$TMP/server.log"
  mount_img --rw -f raw "$(unix_url slow)"
  local t0 i pids=()
  t0=$(now_ms)
  for i in 1 2 3 4 5 6 7 8; do
    dd if="$MNT/disk.raw" of=/dev/null bs=4k count=1 skip=$((i * 1000)) iflag=direct status=none &
    pids+=($!)
  done
  for i in "${pids[@]}"; do wait "$i"; done
  local took=$(( $(now_ms) - t0 ))
  echo "8 reads of 500 ms each took $took ms" >&3
  [ "$took" -lt 2000 ]
  unmount_img
  grep -q "connection=1 Read" server.log
  ! grep -q "connection=2 " server.log
}
