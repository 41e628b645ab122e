#!/usr/bin/env bats
# SPDX-License-Identifier: MIT
# mount-snapshots.bats - MNT/snapshots/NAME/{disk.raw,info,vmstate}: internal snapshots of a qcow2 image
# as read-only views, byte-identical to qemu-img's conversion of each snapshot; names that cannot be
# file names or repeat shown as id-N; vmstate of exactly its size.

load helpers

setup() { setup_tmp; cd "$TMP"; }
teardown() { teardown_tmp; }

@test "every snapshots/NAME/disk.raw equals qemu-img convert -l snapshot.name=NAME" {
  qemu-img create -q -f qcow2 s.qcow2 4M
  qemu-io -c "write -P 0x01 0 1M" s.qcow2 > /dev/null
  qemu-img snapshot -c first s.qcow2
  qemu-io -c "write -P 0x02 512k 1M" -c "write -z 3M 64k" s.qcow2 > /dev/null
  qemu-img snapshot -c second s.qcow2
  qemu-io -c "write -P 0x03 0 64k" -c "discard 1M 64k" s.qcow2 > /dev/null
  qemu-img snapshot -c third s.qcow2
  qemu-io -c "write -P 0x04 2M 2M" s.qcow2 > /dev/null
  mount_img s.qcow2 "$MNT"
  [ "$(ls "$MNT/snapshots" | tr '\n' ' ')" = "first second third " ]
  for name in first second third; do
    qemu-img convert -l snapshot.name=$name -O raw s.qcow2 "$TMP/$name.raw"
    cmp "$MNT/snapshots/$name/disk.raw" "$TMP/$name.raw"
    grep -qx "name: $name" "$MNT/snapshots/$name/info"
    grep -qx "disk_size: 4194304" "$MNT/snapshots/$name/info"
    [ ! -e "$MNT/snapshots/$name/vmstate" ]
  done
  cmp "$MNT/disk.raw" "$(raw_of s.qcow2)"
  grep -qx "id: 2" "$MNT/snapshots/second/info"
  unmount_img
}

@test "a snapshot taken before a resize keeps its own virtual size; backing data shows through" {
  qemu-img create -q -f qcow2 base.qcow2 2M
  qemu-io -c "write -P 0x0b 0 2M" base.qcow2 > /dev/null
  qemu-img create -q -f qcow2 -b base.qcow2 -F qcow2 top.qcow2 2M
  qemu-io -c "write -P 0x0c 64k 64k" top.qcow2 > /dev/null
  qemu-img snapshot -c small top.qcow2
  qemu-img resize -q top.qcow2 6M
  qemu-io -c "write -P 0x0d 5M 64k" top.qcow2 > /dev/null
  mount_img top.qcow2 "$MNT"
  [ "$(stat -c %s "$MNT/snapshots/small/disk.raw")" -eq 2097152 ]
  [ "$(stat -c %s "$MNT/disk.raw")" -eq 6291456 ]
  # qemu-img convert -l gives the current (larger) size: compare the snapshot's own 2 MiB
  qemu-img convert -l snapshot.name=small -O raw top.qcow2 "$TMP/small.raw"
  cmp "$MNT/snapshots/small/disk.raw" <(head -c 2097152 "$TMP/small.raw")
  cmp <(dd if="$MNT/snapshots/small/disk.raw" bs=64k skip=1 count=1 status=none) <(head -c 65536 /dev/zero | tr '\0' '\014')
  cmp <(dd if="$MNT/snapshots/small/disk.raw" bs=64k skip=2 count=1 status=none) <(head -c 65536 /dev/zero | tr '\0' '\013')
  unmount_img
}

@test "duplicate names and names with a slash appear as id-N" {
  qemu-img create -q -f qcow2 n.qcow2 1M
  qemu-img snapshot -c twin n.qcow2
  qemu-io -c "write -P 0x07 0 4k" n.qcow2 > /dev/null
  qemu-img snapshot -c twin n.qcow2
  qemu-img snapshot -c "a/b" n.qcow2
  qemu-img snapshot -c fine n.qcow2
  mount_img n.qcow2 "$MNT"
  [ "$(ls "$MNT/snapshots" | sort | tr '\n' ' ')" = "fine id-1 id-2 id-3 " ]
  grep -qx "name: a/b" "$MNT/snapshots/id-3/info"
  qemu-img convert -l snapshot.id=1 -O raw n.qcow2 "$TMP/1.raw"
  qemu-img convert -l snapshot.id=2 -O raw n.qcow2 "$TMP/2.raw"
  cmp "$MNT/snapshots/id-1/disk.raw" "$TMP/1.raw"
  cmp "$MNT/snapshots/id-2/disk.raw" "$TMP/2.raw"
  unmount_img
}

@test "snapshots/NAME/vmstate has exactly the VM state's size and bytes" {
  # qemu-io writes the VM state where the spec puts it (write -b); qemu-img snapshot -c records size 0,
  # so the test then records the size in the snapshot table entry by hand.
  head -c 300032 /dev/urandom > "$TMP/state"
  qemu-img create -q -f qcow2 vm.qcow2 1M
  qemu-io -c "write -P 0x61 0 1M" -c "write -b -s $TMP/state 0 300032" vm.qcow2 > /dev/null
  qemu-img snapshot -c saved vm.qcow2
  qemu-img snapshot -c plain vm.qcow2
  python3 "$BATS_TEST_DIRNAME/qcow2-vmstate.py" vm.qcow2 saved 1048576 300001
  mount_img vm.qcow2 "$MNT"
  [ "$(stat -c %s "$MNT/snapshots/saved/vmstate")" -eq 300001 ]
  cmp "$MNT/snapshots/saved/vmstate" <(head -c 300001 "$TMP/state")
  [ ! -e "$MNT/snapshots/plain/vmstate" ]
  [ "$(stat -c %s "$MNT/snapshots/saved/disk.raw")" -eq 1048576 ]
  cmp "$MNT/snapshots/saved/disk.raw" <(head -c 1048576 /dev/zero | tr '\0' '\141')
  grep -qx "vm_state_size: 300001" "$MNT/snapshots/saved/info"
  unmount_img
}

@test "a raw image has no snapshots directory; a read-only mount refuses mkdir" {
  truncate -s 1M r.raw
  mount_img r.raw "$MNT"
  [ ! -e "$MNT/snapshots" ]
  unmount_img
  qemu-img create -q -f qcow2 q.qcow2 1M
  mount_img q.qcow2 "$MNT"
  [ -d "$MNT/snapshots" ]
  [ -z "$(ls "$MNT/snapshots")" ]
  run mkdir "$MNT/snapshots/new"
  [ "$status" -ne 0 ]
  [[ "$output" == *"Read-only file system"* ]]
  unmount_img
  [ -z "$(qemu-img snapshot -l q.qcow2)" ]
}

@test "mkdir/rmdir: EEXIST for a taken name, EBUSY while a snapshot's file is open, EPERM outside snapshots/" {
  qemu-img create -q -f qcow2 w.qcow2 2M
  qemu-io -c "write -P 0x31 0 1M" w.qcow2 > /dev/null
  mount_img --rw w.qcow2 "$MNT"
  [ "$(stat -c %a "$MNT/snapshots")" = 755 ]
  mkdir "$MNT/snapshots/keep"
  cp "$MNT/disk.raw" "$TMP/at-mkdir.raw"
  dd if=/dev/urandom of="$MNT/disk.raw" bs=64k count=4 conv=notrunc,fsync status=none
  cmp "$MNT/snapshots/keep/disk.raw" "$TMP/at-mkdir.raw"
  ! cmp -s "$MNT/disk.raw" "$TMP/at-mkdir.raw" || false
  run mkdir "$MNT/snapshots/keep"
  [ "$status" -ne 0 ]
  [[ "$output" == *"File exists"* ]]
  run mkdir "$MNT/elsewhere"
  [ "$status" -ne 0 ]
  [[ "$output" == *"not permitted"* ]]
  exec 7< "$MNT/snapshots/keep/disk.raw"
  run rmdir "$MNT/snapshots/keep"
  exec 7<&-
  [ "$status" -ne 0 ]
  [[ "$output" == *"busy"* ]]
  rmdir "$MNT/snapshots/keep"
  [ ! -e "$MNT/snapshots/keep" ]
  mkdir "$MNT/snapshots/final"
  unmount_img
  [ "$(qemu-img snapshot -l w.qcow2 | awk 'NR > 2 { print $2 }')" = final ]
  qemu-img check -q w.qcow2
}

@test "--overlay mounts: snapshots of the overlay by mkdir/rmdir, the base never written" {
  qemu-img create -q -f qcow2 base.qcow2 4M
  qemu-io -c "write -P 0x41 0 4M" base.qcow2 > /dev/null
  sum=$(sha256sum < base.qcow2); mtime=$(stat -c %Y base.qcow2)
  mount_img --overlay ov.qcow2 base.qcow2 "$MNT"
  dd if=/dev/urandom of="$MNT/disk.raw" bs=64k count=3 seek=5 conv=notrunc,fsync status=none
  mkdir "$MNT/snapshots/first"
  cp "$MNT/disk.raw" "$TMP/at-first.raw"
  dd if=/dev/urandom of="$MNT/disk.raw" bs=64k count=2 seek=5 conv=notrunc,fsync status=none
  mkdir "$MNT/snapshots/second"
  cmp "$MNT/snapshots/first/disk.raw" "$TMP/at-first.raw"
  rmdir "$MNT/snapshots/second"
  cp "$MNT/disk.raw" "$TMP/final.raw"
  unmount_img
  [ "$(qemu-img snapshot -l ov.qcow2 | awk 'NR > 2 { print $2 }')" = first ]
  run qemu-img check ov.qcow2
  [ "$status" -eq 0 ]
  [[ "$output" == *"No errors were found"* ]]
  [[ "$output" != *"leaked"* ]]
  qemu-img convert -l snapshot.name=first -O raw ov.qcow2 snap.raw
  cmp snap.raw "$TMP/at-first.raw"
  qemu-img compare -f qcow2 -F raw ov.qcow2 "$TMP/final.raw"
  [ "$(sha256sum < base.qcow2)" = "$sum" ]
  [ "$(stat -c %Y base.qcow2)" = "$mtime" ]
}

@test "mkdir of a name over 255 bytes fails with ENAMETOOLONG and creates no snapshot, however often retried" {
  qemu-img create -q -f qcow2 s.qcow2 1M
  qemu-img snapshot -c one s.qcow2
  mount_img --rw s.qcow2 "$MNT"
  local long i
  long=$(head -c 256 /dev/zero | tr '\0' n)
  for i in 1 2 3; do
    run mkdir "$MNT/snapshots/$long"
    echo "$output"
    [ "$status" -ne 0 ]
    [[ "$output" == *"File name too long"* ]]
  done
  # a name the tree would show as another snapshot's id-ID is refused too; any other is shown as given
  run mkdir "$MNT/snapshots/id-1"
  [ "$status" -ne 0 ]
  [[ "$output" == *"Invalid argument"* ]]
  mkdir "$MNT/snapshots/$(head -c 255 /dev/zero | tr '\0' m)"
  mkdir "$MNT/snapshots/two"
  [ "$(LC_ALL=C ls "$MNT/snapshots" | sed "s/^mmmm*$/m255/" | tr "\n" " ")" = "m255 one two " ]
  unmount_img
  [ "$("$IMGFUSE" snapshot -l s.qcow2 | awk 'NR > 1 { print $1 }' | tr '\n' ' ')" = "1 2 3 " ]
  [ "$(qemu-img snapshot -l s.qcow2 | awk 'NR > 2 { print $1 }' | tr '\n' ' ')" = "1 2 3 " ]
  ! qemu-img snapshot -l s.qcow2 | grep -q nnnn
}
