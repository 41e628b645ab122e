#!/usr/bin/env bats
# SPDX-License-Identifier: MIT
# rbd.bats - images in a Ceph cluster (the rbd protocol driver, through librbd): one single-node cluster
# (tests/tools/ceph-cluster: ceph-mon, ceph-mgr, ceph-osd with bluestore on a file, radosgw) started in
# setup_file and stopped in teardown_file. qcow2, vmdk and vhdx images imported with `rbd import` read like
# `qemu-img convert -O raw` of the local file, and qemu-img's own rbd driver reads the same; a raw image takes
# writes, fsync and discard on a --rw mount that `rbd export` shows; a local qcow2 overlay over a base in the
# cluster (--backing rbd:...) takes writes that qemu-img checks and reads back; a qcow2 image in the cluster
# finds its backing image by its relative name in the same pool; fio verifies 4 jobs on a --rw mount; RBD
# snapshots appear under snapshots/NAME/ read-only and read like `rbd export pool/img@snap`; the OSD stopped
# during reads gives the reader EIO within --timeout, `ls` works, and reads work again once it is back; with the
# monitor down a mount's reads go on and a new mount fails within --timeout; a key given in the name appears nowhere (info, info.json,
# the log, the audit log, /proc/mounts, error lines); ./rbd:x is a local file.

load helpers

setup_file() { ceph_start; }
teardown_file() { ceph_stop; }

setup() {
  setup_tmp; cd "$TMP"
  export CEPH_CONF=$CEPH_DIR/ceph.conf
  POOL=rbd
  IMG=t$BATS_TEST_NUMBER
}

teardown() {
  # the cluster's daemons are back for the next test, whatever this one stopped
  "$BATS_TEST_DIRNAME/tools/ceph-cluster" start-osd "$CEPH_DIR" 2>/dev/null || true
  "$BATS_TEST_DIRNAME/tools/ceph-cluster" start-mon "$CEPH_DIR" 2>/dev/null || true
  teardown_tmp
}

@test "qcow2, vmdk and vhdx images on rbd read like qemu-img convert of the local file; qemu-img's rbd agrees" {
  format_trio
  local f
  for f in d.qcow2 d.vmdk d.vhdx; do
    rbd import --no-progress "$f" "$POOL/$IMG-${f#d.}"
    mount_img "rbd:$POOL/$IMG-${f#d.}"
    grep -q "format: ${f#d.}" "$MNT/info"
    same_bytes "$MNT/disk.raw" "$(raw_of "$f")"
    cp "$MNT/disk.raw" shown.raw
    unmount_img
    qemu-img convert -O raw "rbd:$POOL/$IMG-${f#d.}" qemu.raw
    same_bytes qemu.raw shown.raw
  done
}

@test "a raw image on rbd --rw: writes, fsync and discard reach the cluster (rbd export)" {
  rbd create --size 32M "$POOL/$IMG"
  head -c 32M /dev/zero > expect.raw
  mount_img --rw -f raw "rbd:$POOL/$IMG"
  head -c 3M /dev/urandom > a
  dd if=a of="$MNT/disk.raw" bs=1M seek=4 conv=notrunc,fsync 2>/dev/null
  dd if=a of=expect.raw bs=1M seek=4 conv=notrunc 2>/dev/null
  fallocate -p -o $((5 << 20)) -l $((1 << 20)) "$MNT/disk.raw"
  fallocate -p -o $((5 << 20)) -l $((1 << 20)) expect.raw
  python3 -c 'import os,sys; fd=os.open(sys.argv[1], os.O_WRONLY); os.pwrite(fd, b"x" * 5000, 30000001); os.fsync(fd)' "$MNT/disk.raw"
  python3 -c 'import os,sys; fd=os.open(sys.argv[1], os.O_WRONLY); os.pwrite(fd, b"x" * 5000, 30000001)' expect.raw
  same_bytes "$MNT/disk.raw" expect.raw
  # fsync returned: the cluster has the bytes while the mount is still up
  rbd export --no-progress "$POOL/$IMG" live.raw
  same_bytes live.raw expect.raw
  unmount_img
  rbd export --no-progress "$POOL/$IMG" after.raw
  same_bytes after.raw expect.raw
}

@test "a local qcow2 overlay over a base on rbd (--backing rbd:...): writes, qemu-img check, same bytes after unmount" {
  qemu-img create -q -f qcow2 base.qcow2 64M
  qio base.qcow2 'write -P 0x33 0 8M' 'write -P 0x44 50M 1M'
  rbd import --no-progress base.qcow2 "$POOL/$IMG-base"
  qemu-img create -q -f qcow2 -u -b "rbd:$POOL/$IMG-base" -F qcow2 ov.qcow2 64M
  mount_img --rw --backing "rbd:$POOL/$IMG-base" --backing-format qcow2 ov.qcow2 "$MNT"
  grep -q "rbd:$POOL/$IMG-base" "$MNT/info"
  head -c 1M /dev/urandom > a
  dd if=a of="$MNT/disk.raw" bs=64k seek=10 conv=notrunc,fsync 2>/dev/null
  cp "$MNT/disk.raw" shown.raw
  unmount_img
  qemu-img check -q ov.qcow2
  cp "$(raw_of base.qcow2)" expect.raw
  dd if=a of=expect.raw bs=64k seek=10 conv=notrunc 2>/dev/null
  same_bytes shown.raw expect.raw
  qemu-img convert -O raw ov.qcow2 qemu.raw
  same_bytes qemu.raw expect.raw
  # the base in the cluster is untouched
  rbd export --no-progress "$POOL/$IMG-base" base-now.qcow2
  same_bytes base-now.qcow2 base.qcow2
}

# rbd_chain: base.qcow2 (16 MiB, 2 MiB of data) imported as $POOL/$IMG-base and top.qcow2 (64 KiB more) as
# $POOL/$IMG-top, which names its backing image by the relative name $IMG-base; the local top.qcow2 names
# base.qcow2 again, so that raw_of top.qcow2 is what the chain in the cluster holds.
rbd_chain() {
  qemu-img create -q -f qcow2 base.qcow2 16M
  qio base.qcow2 'write -P 0x55 0 2M'
  qemu-img create -q -f qcow2 top.qcow2 16M
  qio top.qcow2 'write -P 0x66 1M 64k'
  qemu-img rebase -q -u -b "$IMG-base" -F qcow2 top.qcow2
  rbd import --no-progress base.qcow2 "$POOL/$IMG-base"
  rbd import --no-progress top.qcow2 "$POOL/$IMG-top"
  qemu-img rebase -q -u -b base.qcow2 -F qcow2 top.qcow2
}

@test "a qcow2 image on rbd finds its backing image by relative name in the same pool; a URL inside is refused" {
  rbd_chain
  mount_img "rbd:$POOL/$IMG-top"
  grep -q "layers: 2" "$MNT/info"
  same_bytes "$MNT/disk.raw" "$(raw_of top.qcow2)"
  unmount_img
  # a backing name that is itself an rbd: location inside an image is never followed
  qemu-img create -q -f qcow2 -u -b "rbd:$POOL/$IMG-base" -F qcow2 evil.qcow2 16M
  run "$IMGFUSE" evil.qcow2 "$MNT"
  [ "$status" -eq 2 ]
  [[ "$output" == *"backing file 'rbd:$POOL/$IMG-base' refused: a remote location named inside an image is never followed"* ]]
}

# rbd_diff_extents SPEC: the data extents `rbd diff SPEC` reports, adjacent ones merged, as "start end" lines.
rbd_diff_extents() {
  rbd diff "$1" --format json | json_extents offset length exists true
}

# map_data_extents: the data extents of `imgfuse map --output=json` on stdin, merged, as "start end" lines.
map_data_extents() { json_extents start length data; }

@test "block status: SEEK_DATA, imgfuse map and convert see the extents rbd diff reports (head and snapshot)" {
  rbd create --size 64M "$POOL/$IMG"
  qemu-io -f raw -c 'write -P 0x33 4M 1M' -c 'write -P 0x44 20M 64k' -c 'write -P 0x55 33M 64k' \
    -c 'write -P 0x66 63M 1M' "rbd:$POOL/$IMG" > /dev/null
  local theirs; theirs=$(rbd_diff_extents "$POOL/$IMG")
  # (an object librbd created at its head reports from its start: 32M.. and 60M.. here, not 33M.. and 63M..)
  echo "rbd diff: $theirs"
  [ "$(echo "$theirs" | wc -l)" -eq 4 ] && [ "$(echo "$theirs" | head -2)" = "$(printf '4194304 5242880\n20971520 21037056')" ]
  mount_img -f raw "rbd:$POOL/$IMG"
  [ "$(python3 "$BATS_TEST_DIRNAME/seekmap.py" "$MNT/disk.raw")" = "$theirs" ]
  cp "$MNT/disk.raw" shown.raw
  unmount_img
  [ "$("$IMGFUSE" map --output=json "rbd:$POOL/$IMG" | map_data_extents)" = "$theirs" ]
  # convert allocates only the written data (the holes are skipped, the zeros of written objects detected)
  "$IMGFUSE" convert -q -O qcow2 "rbd:$POOL/$IMG" c.qcow2
  qemu-img check -q c.qcow2
  [ "$(qemu_data_extents qcow2 c.qcow2)" = "$(printf '4194304 5242880\n20971520 21037056\n34603008 34668544\n66060288 67108864')" ]
  qemu-img convert -O raw c.qcow2 c.raw
  same_bytes c.raw shown.raw
  # a snapshot opened by name: its own extents, not the head's
  rbd snap create --no-progress "$POOL/$IMG@s"
  qemu-io -f raw -c 'write -P 0x77 40M 128k' "rbd:$POOL/$IMG" > /dev/null
  [ "$(rbd_diff_extents "$POOL/$IMG@s")" = "$theirs" ]
  [ "$("$IMGFUSE" map --output=json "rbd:$POOL/$IMG@s" | map_data_extents)" = "$theirs" ]
  theirs=$(rbd_diff_extents "$POOL/$IMG")
  [[ "$theirs" == *"41943040 42074112"* ]]
  [ "$("$IMGFUSE" map --output=json "rbd:$POOL/$IMG" | map_data_extents)" = "$theirs" ]
  # without fast-diff (no object map): every object is asked about, the same answer; and 4 KiB objects
  rbd create --size 64M --image-feature layering "$POOL/$IMG-plain"
  rbd create --size 64M --object-size 4K "$POOL/$IMG-small"
  for f in plain small; do
    qemu-io -f raw -c 'write -P 0x33 1M 64k' -c 'write -P 0x44 10M 6k' -c 'write -P 0x55 40M 1M' \
      "rbd:$POOL/$IMG-$f" > /dev/null
    theirs=$(rbd_diff_extents "$POOL/$IMG-$f")
    [ "$(echo "$theirs" | wc -l)" -eq 3 ]
    [ "$("$IMGFUSE" map --output=json "rbd:$POOL/$IMG-$f" | map_data_extents)" = "$theirs" ]
  done
}

@test "fio with 4 jobs and crc32c verification on an rbd --rw mount" {
  rbd create --size 128M "$POOL/$IMG"
  mount_img --rw -f raw "rbd:$POOL/$IMG"
  fio_crc32c --rw=randrw --bsrange=512-128k --size=16M --numjobs=4 --offset_increment=32M --direct=1 --randseed=7
  cp "$MNT/disk.raw" shown.raw
  unmount_img
  rbd export --no-progress "$POOL/$IMG" after.raw
  same_bytes after.raw shown.raw
}

@test "RBD snapshots appear under snapshots/NAME/ read-only and read like rbd export pool/img@snap" {
  rbd create --size 16M "$POOL/$IMG"
  mount_img --rw -f raw "rbd:$POOL/$IMG"
  head -c 2M /dev/urandom > a
  dd if=a of="$MNT/disk.raw" bs=1M seek=1 conv=notrunc,fsync 2>/dev/null
  unmount_img
  rbd snap create --no-progress "$POOL/$IMG@one"
  mount_img --rw -f raw "rbd:$POOL/$IMG"
  dd if=/dev/urandom of="$MNT/disk.raw" bs=1M seek=2 count=1 conv=notrunc,fsync 2>/dev/null
  [ "$(ls "$MNT/snapshots")" = one ]
  rbd export --no-progress "$POOL/$IMG@one" one.raw
  same_bytes "$MNT/snapshots/one/disk.raw" one.raw
  ! cmp -s "$MNT/disk.raw" one.raw || false
  run dd if=a of="$MNT/snapshots/one/disk.raw" bs=1M count=1 conv=notrunc
  [ "$status" -ne 0 ]
  # mkdir snapshots/NAME makes an RBD snapshot
  mkdir "$MNT/snapshots/two"
  cp "$MNT/disk.raw" head.raw
  unmount_img
  rbd snap ls "$POOL/$IMG" | grep -qw two
  rbd export --no-progress "$POOL/$IMG@two" two.raw
  same_bytes two.raw head.raw
  # a snapshot named in the image name: read-only; --rw is refused
  mount_img -f raw "rbd:$POOL/$IMG@one"
  same_bytes "$MNT/disk.raw" one.raw
  unmount_img
  run "$IMGFUSE" --rw -f raw "rbd:$POOL/$IMG@one" "$MNT"
  [ "$status" -eq 2 ]
  [ "$output" = "imgfuse: rbd:$POOL/$IMG@one: snapshot 'one' is read-only" ]
}

@test "the OSD stopped during reads: EIO within --timeout, ls works, reads work again once it is back" {
  rbd create --size 64M "$POOL/$IMG"
  mount_img --rw -f raw "rbd:$POOL/$IMG"
  head -c 64M /dev/urandom > r.raw
  dd if=r.raw of="$MNT/disk.raw" bs=4M conv=notrunc,fsync 2>/dev/null
  unmount_img
  mount_img --direct-io --timeout 4 -f raw "rbd:$POOL/$IMG"
  "$BATS_TEST_DIRNAME/tools/ceph-cluster" stop-osd "$CEPH_DIR"
  local t0; t0=$(now_ms)
  run dd if="$MNT/disk.raw" of=/dev/null bs=1M count=4 skip=20 iflag=direct
  local took=$(( $(now_ms) - t0 ))
  echo "OSD down: $status after $took ms: $output"
  [ "$status" -ne 0 ]
  [[ "$output" == *"Input/output error"* ]]
  [ "$took" -ge 3000 ] && [ "$took" -lt 9000 ]
  # block status (SEEK_DATA) has the same deadline
  t0=$(now_ms)
  run python3 "$BATS_TEST_DIRNAME/seekmap.py" "$MNT/disk.raw"
  took=$(( $(now_ms) - t0 ))
  echo "OSD down, SEEK_DATA: $status after $took ms: $output"
  [ "$status" -ne 0 ] && [[ "$output" == *"Input/output error"* ]]
  [ "$took" -ge 3000 ] && [ "$took" -lt 9000 ]
  ls "$MNT" | grep -q disk.raw
  [ "$(stat -c %s "$MNT/disk.raw")" -eq 67108864 ]
  "$BATS_TEST_DIRNAME/tools/ceph-cluster" start-osd "$CEPH_DIR"
  local i
  for i in $(seq 1 60); do
    dd if="$MNT/disk.raw" of=/dev/null bs=64k count=1 iflag=direct 2>/dev/null && break
    sleep 1
  done
  dd if="$MNT/disk.raw" of=back.raw bs=1M iflag=direct 2>/dev/null
  same_bytes back.raw r.raw
  unmount_img
}

@test "the monitor down: reads of a mount go on (the OSD serves them), a new mount fails within --timeout with one line" {
  rbd create --size 4M "$POOL/$IMG"
  mount_img --rw --direct-io --timeout 3 -f raw "rbd:$POOL/$IMG"
  head -c 4M /dev/urandom > r.raw
  dd if=r.raw of="$MNT/disk.raw" bs=1M conv=notrunc,fsync 2>/dev/null
  "$BATS_TEST_DIRNAME/tools/ceph-cluster" stop-mon "$CEPH_DIR"
  local t0; t0=$(now_ms)
  same_bytes "$MNT/disk.raw" r.raw
  [ $(( $(now_ms) - t0 )) -lt 5000 ]
  unmount_img
  t0=$(now_ms)
  run "$IMGFUSE" --timeout 3 -f raw "rbd:$POOL/$IMG" "$MNT"
  local took=$(( $(now_ms) - t0 ))
  echo "mon down: $status after $took ms: $output"
  [ "$status" -eq 2 ]
  [ "${#lines[@]}" -eq 1 ]
  [[ "$output" == "imgfuse: rbd:$POOL/$IMG: cannot connect to the Ceph cluster: "* ]]
  [ "$took" -lt 9000 ]
  "$BATS_TEST_DIRNAME/tools/ceph-cluster" start-mon "$CEPH_DIR"
}

@test "a key given in the name appears nowhere: info, info.json, log, audit log, /proc/mounts, error lines" {
  local key
  key=$(ceph auth get-or-create-key client.imgfuse-t mon 'profile rbd' osd 'profile rbd pool=rbd')
  rbd create --size 4M "$POOL/$IMG"
  # a conf without a keyring line: the key in the name is all there is
  grep -v '^keyring' "$CEPH_CONF" > nokeyring.conf
  local name="rbd:$POOL/$IMG:conf=$TMP/nokeyring.conf:id=imgfuse-t:key=$key"
  mount_img --debug --audit-log audit.log -f raw "$name"
  [ "$(stat -c %s "$MNT/disk.raw")" -eq 4194304 ]
  dd if="$MNT/disk.raw" of=/dev/null bs=1M 2>/dev/null
  grep -q "key=\*\*\*" "$MNT/info"
  ! grep -qF "$key" "$MNT/info" || false
  ! grep -qF "$key" "$MNT/info.json" || false
  ! grep -qF "$key" /proc/mounts || false
  ! tr '\0' ' ' < "/proc/$DAEMON_PID/cmdline" | grep -qF "$key" || false   # ps shows key=***
  unmount_img
  ! grep -qF "$key" daemon.log || false
  [ -s audit.log ]
  ! grep -qF "$key" audit.log || false
  run "$IMGFUSE" info "$name"
  [ "$status" -eq 0 ]
  [[ "$output" == *"key=***"* ]] && [[ "$output" != *"$key"* ]]
  # errors: a missing image, a wrong key, an unknown option
  run "$IMGFUSE" -f raw "rbd:$POOL/nothere:conf=$TMP/nokeyring.conf:id=imgfuse-t:key=$key" "$MNT"
  echo "$output"
  [ "$status" -eq 2 ] && [[ "$output" != *"$key"* ]]
  [ "$output" = "imgfuse: rbd:$POOL/nothere:conf=$TMP/nokeyring.conf:id=imgfuse-t:key=***: image 'nothere': No such file or directory" ]
  run "$IMGFUSE" --timeout 3 -f raw "rbd:$POOL/$IMG:conf=$TMP/nokeyring.conf:id=imgfuse-t:key=AQBAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA==" "$MNT"
  echo "$output"
  [ "$status" -eq 2 ] && [[ "$output" == *"key=***: cannot connect to the Ceph cluster"* ]] && [[ "$output" != *AQBAAAA* ]]
  run "$IMGFUSE" -f raw "rbd:$POOL/$IMG:key=$key:bogus=1" "$MNT"
  [ "$status" -eq 2 ] && [[ "$output" != *"$key"* ]]
  [[ "$output" == *"rbd option 'bogus' in the name is not supported"* ]]
  ceph auth del client.imgfuse-t
}

@test "a key in the name opens the image's relative backing image in the cluster too, shown nowhere" {
  local key
  key=$(ceph auth get-or-create-key client.imgfuse-b mon 'profile rbd' osd 'profile rbd pool=rbd')
  grep -v '^keyring' "$CEPH_CONF" > nokeyring.conf
  rbd_chain
  # the conf has no keyring: the key in the name is all there is, for both images
  local name="rbd:$POOL/$IMG-top:conf=$TMP/nokeyring.conf:id=imgfuse-b:key=$key"
  mount_img --debug "$name"
  grep -q "layers: 2" "$MNT/info"
  grep -qF "rbd:$POOL/$IMG-base:conf=$TMP/nokeyring.conf:id=imgfuse-b:key=***" "$MNT/info"
  same_bytes "$MNT/disk.raw" "$(raw_of top.qcow2)"
  ! grep -qF "$key" "$MNT/info" || false
  ! grep -qF "$key" "$MNT/info.json" || false
  unmount_img
  ! grep -qF "$key" daemon.log || false
  run "$IMGFUSE" info "$name"
  echo "$output"
  [ "$status" -eq 0 ] && [[ "$output" == *"$IMG-base:conf=$TMP/nokeyring.conf:id=imgfuse-b:key=***"* ]]
  [[ "$output" != *"$key"* ]]
  ceph auth del client.imgfuse-b
}

@test "rbd names: ./rbd:x is a local file; --timeout out of range is refused; a missing pool is one line" {
  # librbd is loaded when used: the binary does not link Ceph's libraries
  ! ldd "$IMGFUSE" | grep -E 'librbd|librados' || false
  qemu-img create -q -f qcow2 ./rbd:x 1M
  mount_img ./rbd:x "$MNT"
  grep -q "format: qcow2" "$MNT/info"
  unmount_img
  run "$IMGFUSE" --timeout 0 -f raw "rbd:$POOL/$IMG" "$MNT"
  [ "$status" -eq 2 ]
  [ "$output" = "imgfuse: rbd:$POOL/$IMG: rbd option 'timeout': 0 is not between 1 and 3600 seconds" ]
  run "$IMGFUSE" -f raw "rbd:nopool/$IMG" "$MNT"
  [ "$status" -eq 2 ]
  [ "$output" = "imgfuse: rbd:nopool/$IMG: pool 'nopool': No such file or directory" ]
  run "$IMGFUSE" -f raw "rbd:justaname" "$MNT"
  [ "$status" -eq 2 ]
  [ "$output" = "imgfuse: rbd:justaname: not an rbd name: rbd:POOL[/NAMESPACE]/IMAGE[@SNAPSHOT][:KEY=VALUE...]" ]
}
