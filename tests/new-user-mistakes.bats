#!/usr/bin/env bats
# SPDX-License-Identifier: MIT
# new-user-mistakes.bats - the 33 mistakes of a new user (numbered as in new-user-mistakes.md, the
# front-door issue's reference): for each, the exit code and the exact one-line message, and that a
# failed mount leaves nothing mounted.

load helpers

setup() {
  setup_tmp; cd "$TMP"; QSD=; FULL=
  qemu-img create -q -f qcow2 top.qcow2 64M
  qemu-io -f qcow2 -c 'write -P 0x5a 0 1M' -c 'write -P 0xa5 2M 64k' top.qcow2 >/dev/null
}

teardown() {
  [ -n "$QSD" ] && { kill "$QSD" 2>/dev/null; wait "$QSD" 2>/dev/null; }
  if [ -n "$FULL" ] && mountpoint -q "$FULL"; then
    for m in $(grep -o " $FULL/[^ ]*" /proc/mounts); do fusermount3 -u "$m" 2>/dev/null || umount -l "$m"; done
    umount "$FULL" || umount -l "$FULL"
  fi
  teardown_tmp
}

# fails_with STATUS LINE: the last `run` exited STATUS and printed exactly LINE, and nothing is mounted.
fails_with() {
  echo "status $status (want $1): $output"
  [ "$status" -eq "$1" ]
  [ "${#lines[@]}" -eq 1 ]
  [ "${lines[0]}" = "$2" ]
  ! grep -q " $TMP[^ ]* fuse" /proc/mounts
}

# full_tmpfs: a 4 MiB tmpfs at $TMP/full ($FULL), unmounted by teardown.
full_tmpfs() {
  FULL=$TMP/full
  mkdir -p "$FULL"
  mount -t tmpfs -o size=4M tmpfs "$FULL"
}

# fill FILE: writes zeros to FILE until the file system is full.
fill() {
  dd if=/dev/zero of="$1" bs=64k 2>/dev/null || true
  [ "$(df --output=avail -B1 "$(dirname "$1")" | tail -1)" -lt 65536 ]
}

# as_user SCRIPT: runs the bash SCRIPT in a private mount namespace in which /dev/fuse is $DEVFUSE_MODE
# (0600: the user cannot open it; 0666: it can) and /etc/fuse.conf says $FUSE_CONF, so nothing outside
# the test changes. The script runs "$IMGFUSE" as $USER_NAME through `u`.
as_user() {
  USER_NAME=$(test_user)
  chmod 755 "$TMP"
  rm -f "$TMP/fuse"
  mknod -m "${DEVFUSE_MODE:-0666}" "$TMP/fuse" c 10 229
  printf '%s\n' "${FUSE_CONF:-# nothing}" > "$TMP/fuse.conf"
  cat > "$TMP/user.sh" <<EOS
mount --bind "$TMP/fuse" /dev/fuse || exit 99
mount --bind "$TMP/fuse.conf" /etc/fuse.conf || exit 99
cd "$TMP"
u() { runuser -u "$USER_NAME" -- "\$@"; }
$1
EOS
  run timeout 60 unshare -m --propagation private bash "$TMP/user.sh"
}

@test "1 image missing: one line naming it, exit 2" {
  run "$IMGFUSE" nope.qcow2 "$MNT"
  fails_with 2 "imgfuse: nope.qcow2: No such file or directory"
}

@test "2 mountpoint missing: the message says it is the mountpoint" {
  run "$IMGFUSE" top.qcow2 mnt/nonexistent
  fails_with 2 "imgfuse: mnt/nonexistent: the mountpoint does not exist (create the directory first)"
}

@test "3 mountpoint busy: already a mount point" {
  mount_img top.qcow2 "$MNT"
  run "$IMGFUSE" top.qcow2 mnt
  echo "$output"
  [ "$status" -eq 2 ]
  [ "$output" = "imgfuse: mnt: already a mount point (busy)" ]
  unmount_img
}

@test "4 non-empty mountpoint directory: refused unless --nonempty (or -o nonempty)" {
  mkdir notes; echo keep > notes/case.txt
  run "$IMGFUSE" top.qcow2 notes
  fails_with 2 "imgfuse: notes: the mountpoint is not empty (the mount would hide its files); give --nonempty to mount over them"
  mount_img --nonempty top.qcow2 "$TMP/notes"
  cmp "$TMP/notes/disk.raw" "$(raw_of top.qcow2)"
  unmount_img
  mount_img -o nonempty top.qcow2 "$TMP/notes"
  unmount_img
  [ "$(cat notes/case.txt)" = keep ]
}

@test "5 arguments swapped: IMAGE comes first" {
  run "$IMGFUSE" mnt top.qcow2
  fails_with 2 "imgfuse: mnt: is a directory; IMAGE comes first: imgfuse IMAGE MOUNTPOINT"
  run "$IMGFUSE" mnt "$TMP/file-mountpoint-that-is-missing"
  fails_with 2 "imgfuse: $TMP/file-mountpoint-that-is-missing: the mountpoint does not exist (create the directory first)"
}

@test "6 mountpoint argument forgotten: the usage line" {
  run "$IMGFUSE" top.qcow2
  fails_with 2 "imgfuse: usage: imgfuse [OPTIONS] IMAGE MOUNTPOINT (see imgfuse --help)"
}

@test "7 'imgfuse mount IMAGE MOUNTPOINT' mounts, as the mount command by name" {
  run "$IMGFUSE" mount top.qcow2 "$MNT"
  echo "$output"
  [ "$status" -eq 0 ]
  [ -z "$output" ]
  MOUNTED=$MNT
  cmp "$MNT/disk.raw" "$(raw_of top.qcow2)"
  "$IMGFUSE" unmount "$MNT"
  nothing_mounted
  run "$IMGFUSE" mount top.qcow2
  fails_with 2 "imgfuse: usage: imgfuse [OPTIONS] IMAGE MOUNTPOINT (see imgfuse --help)"
}

@test "8 wrong -f: the driver says precisely what is not there" {
  run "$IMGFUSE" -f vmdk top.qcow2 mnt
  fails_with 2 "imgfuse: top.qcow2: not a VMDK image (neither a sparse extent nor a descriptor file)"
  run "$IMGFUSE" -f vpc top.qcow2 mnt
  fails_with 2 "imgfuse: top.qcow2: no VHD footer (cookie 'conectix') at the end of the file or at offset 0"
}

@test "9 unknown format name" {
  qemu-img create -q -f vpc base.vhd 16M
  run "$IMGFUSE" -f vhd base.vhd mnt
  fails_with 2 "imgfuse: base.vhd: unknown format 'vhd'"
}

@test "10 -f meant as --foreground: did you mean --foreground?" {
  run "$IMGFUSE" -f top.qcow2 mnt
  fails_with 2 "imgfuse: -f: 'top.qcow2' is not a format name; did you mean --foreground? (-f names a format)"
}

@test "11 typo'd option: did you mean" {
  run "$IMGFUSE" --foregound top.qcow2 mnt
  fails_with 2 "imgfuse: --foregound: unknown option (did you mean --foreground?)"
}

@test "12 a prefix of an option is not that option: --r is refused, nothing is mounted read-write" {
  cp top.qcow2 orig.qcow2
  run "$IMGFUSE" --r top.qcow2 mnt
  fails_with 2 "imgfuse: --r: unknown option (did you mean --rw or --read-only?)"
  run "$IMGFUSE" --over=x top.qcow2 mnt
  fails_with 2 "imgfuse: --over: unknown option (did you mean --overlay?)"
  [ ! -e x ]
  cmp top.qcow2 orig.qcow2
}

@test "13 qemu spellings: -r/--read-only and -U/--force-share work, --image-opts and --object other than a secret are refused by name" {
  for opt in -r --read-only -U --force-share; do
    mount_img "$opt" top.qcow2 "$MNT"
    [ "$(stat -c %a "$MNT/disk.raw")" = 444 ]
    grep -q " $MNT fuse.imgfuse ro," /proc/mounts
    unmount_img
  done
  run "$IMGFUSE" -r --rw top.qcow2 mnt
  fails_with 2 "imgfuse: --read-only: cannot be combined with --rw"
  run "$IMGFUSE" --image-opts driver=qcow2,file.filename=top.qcow2 mnt
  fails_with 2 "imgfuse: --image-opts: not supported: IMAGE is a file name; driver options go in -o DRIVER.KEY=VALUE"
  run "$IMGFUSE" --object tls-creds-x509,id=t0,dir=. top.qcow2 mnt
  fails_with 2 "imgfuse: --object: only 'secret,id=ID,file=FILE' (or data=STRING) is supported"
  run "$IMGFUSE" info -U top.qcow2
  [ "$status" -eq 0 ]
  [[ "$output" == *"format: qcow2"* ]]
  run "$IMGFUSE" info --object iothread,id=io0 top.qcow2
  fails_with 2 "imgfuse: --object: only 'secret,id=ID,file=FILE' (or data=STRING) is supported"
}

@test "14 bad FUSE option: libfuse's word, one line" {
  run "$IMGFUSE" -o nosuchopt top.qcow2 mnt
  fails_with 2 "imgfuse: mnt: bad FUSE options: fuse: unknown option(s): \`-o nosuchopt'"
}

@test "15 image in use by qemu-storage-daemon read-write: mount, --rw, info and hash refused; --force-share reads" {
  qemu-img create -q -f qcow2 vm.qcow2 16M
  qemu-storage-daemon --blockdev driver=file,filename=vm.qcow2,node-name=f \
    --blockdev driver=qcow2,file=f,node-name=q >qsd.log 2>&1 3>&- &
  QSD=$!
  local i
  for i in $(seq 1 400); do qemu-img info vm.qcow2 >/dev/null 2>&1 || break; sleep 0.05; done
  ! qemu-img info vm.qcow2 >/dev/null 2>&1 || false
  msg="imgfuse: vm.qcow2: image is in use by another process for writing (QEMU lock); use --force-share to open it read-only"
  run "$IMGFUSE" vm.qcow2 mnt
  fails_with 2 "$msg"
  run "$IMGFUSE" --rw vm.qcow2 mnt
  fails_with 2 "$msg"
  run "$IMGFUSE" info vm.qcow2
  fails_with 2 "$msg"
  run "$IMGFUSE" hash vm.qcow2
  fails_with 2 "$msg"
  # the advice can be followed by every command
  run "$IMGFUSE" info --force-share vm.qcow2
  [ "$status" -eq 0 ]
  run "$IMGFUSE" hash -U vm.qcow2
  [ "$status" -eq 0 ]
  mount_img --force-share vm.qcow2 "$MNT"
  unmount_img
  kill "$QSD"; wait "$QSD" || true; QSD=
}

@test "16 non-root without access to /dev/fuse: the reason, exit 1" {
  head -c 1M /dev/urandom > u.raw
  chown "$(test_user)" "$MNT"
  DEVFUSE_MODE=0600 as_user 'u "$IMGFUSE" u.raw mnt'
  fails_with 1 "imgfuse: mnt: cannot mount: fuse: failed to open /dev/fuse: Permission denied"
}

@test "17 --allow-other (or -o allow_other) as a user without user_allow_other: exit 2, what to add" {
  head -c 1M /dev/urandom > u.raw
  chown "$(test_user)" "$MNT"
  msg="imgfuse: --allow-other: not permitted for this user: add the line 'user_allow_other' to /etc/fuse.conf (or mount as root)"
  as_user 'u "$IMGFUSE" --allow-other u.raw mnt'
  fails_with 2 "$msg"
  as_user 'u "$IMGFUSE" -o allow_other u.raw mnt'
  fails_with 2 "$msg"
  # with the line, the same user mounts for everyone
  FUSE_CONF=user_allow_other as_user 'u "$IMGFUSE" --allow-other u.raw mnt && grep " '"$MNT"' fuse.imgfuse " /proc/self/mounts && cmp mnt/disk.raw u.raw && u "$IMGFUSE" unmount mnt'
  echo "$output"
  [ "$status" -eq 0 ]
  [[ "$output" == *allow_other* ]]
}

@test "18 relative backing name, file not there: where it looked, and --backing" {
  mkdir -p bk/vms
  qemu-img create -q -f qcow2 -u -b base-missing.qcow2 -F qcow2 bk/vms/miss.qcow2 16M
  run "$IMGFUSE" bk/vms/miss.qcow2 mnt
  fails_with 2 "imgfuse: bk/vms/miss.qcow2: backing file 'base-missing.qcow2' not found (looked for bk/vms/base-missing.qcow2); use --backing FILE to name it"
  # the advice works for info as for the mount
  qemu-img create -q -f qcow2 elsewhere.qcow2 16M
  run "$IMGFUSE" info --backing elsewhere.qcow2 bk/vms/miss.qcow2
  [ "$status" -eq 0 ]
  [[ "$output" == *"elsewhere.qcow2"* ]]
  mount_img --backing elsewhere.qcow2 bk/vms/miss.qcow2 "$MNT"
  unmount_img
}

@test "19 backing in a sibling directory: refused with advice that mount and info both take" {
  mkdir -p bk/vms bk/base
  qemu-img create -q -f qcow2 bk/base/base.qcow2 16M
  qemu-io -f qcow2 -c 'write -P 0x11 0 64k' bk/base/base.qcow2 >/dev/null
  (cd bk/vms && qemu-img create -q -f qcow2 -b ../base/base.qcow2 -F qcow2 rel.qcow2)
  msg="imgfuse: bk/vms/rel.qcow2: backing file '../base/base.qcow2' refused: it resolves outside the image's directory and the --backing-dir directories; use --backing-dir DIR or --backing FILE (or --unsafe-backing)"
  run "$IMGFUSE" bk/vms/rel.qcow2 mnt
  fails_with 2 "$msg"
  run "$IMGFUSE" info bk/vms/rel.qcow2
  fails_with 2 "$msg"
  for opt in "--backing-dir bk/base" "--backing bk/base/base.qcow2" "--unsafe-backing"; do
    run "$IMGFUSE" info $opt bk/vms/rel.qcow2
    echo "$opt: $output"
    [ "$status" -eq 0 ]
    [[ "$output" == *"base.qcow2"* ]]
    run "$IMGFUSE" map $opt bk/vms/rel.qcow2
    [ "$status" -eq 0 ]
    run "$IMGFUSE" hash $opt bk/vms/rel.qcow2
    [ "$status" -eq 0 ]
    [ "${output%% *}" = "$(sha256sum < "$(raw_of bk/vms/rel.qcow2)" | cut -d' ' -f1)" ]
  done
  mount_img --backing-dir bk/base bk/vms/rel.qcow2 "$MNT"
  cmp "$MNT/disk.raw" "$(raw_of bk/vms/rel.qcow2)"
  unmount_img
  run "$IMGFUSE" info --backing bk/base bk/vms/rel.qcow2
  fails_with 2 "imgfuse: --backing: 'bk/base' is a directory; did you mean --backing-dir bk/base? (--backing names a file)"
}

@test "20 absolute backing path in another directory: refused; info --backing FILE follows the advice" {
  mkdir -p bk/vms bk/base
  qemu-img create -q -f qcow2 bk/base/base.qcow2 16M
  qemu-img create -q -f qcow2 -b "$TMP/bk/base/base.qcow2" -F qcow2 bk/vms/abs.qcow2
  run "$IMGFUSE" bk/vms/abs.qcow2 mnt
  echo "$output"
  [ "$status" -eq 2 ]
  [ "${#lines[@]}" -eq 1 ]
  [[ "${lines[0]}" == "imgfuse: bk/vms/abs.qcow2: backing file '$TMP/bk/base/base.qcow2' refused: an absolute name outside the image's directory is only looked up by base name there and in --backing-dir directories, and it is not there; use --backing-dir DIR"* ]]
  run "$IMGFUSE" info --backing bk/base/base.qcow2 --backing-format qcow2 bk/vms/abs.qcow2
  [ "$status" -eq 0 ]
  run "$IMGFUSE" info --backing-dir bk/base bk/vms/abs.qcow2
  [ "$status" -eq 0 ]
}

@test "21 no space: writes through a --rw mount fail with ENOSPC and the image stays consistent" {
  full_tmpfs
  qemu-img create -q -f qcow2 "$FULL/w.qcow2" 64M
  fill "$FULL/filler"
  mkdir "$TMP/m21"
  mount_img --rw "$FULL/w.qcow2" "$TMP/m21"
  run dd if=/dev/urandom of="$TMP/m21/disk.raw" bs=1M count=8 conv=notrunc,fsync
  echo "$output"
  [ "$status" -eq 1 ]
  [[ "$output" == *"No space left on device"* ]]
  unmount_img "$TMP/m21" || true
  rm "$FULL/filler"
  run qemu-img check "$FULL/w.qcow2"
  echo "$output"
  [ "$status" -eq 0 ] || [ "$status" -eq 3 ]   # leaks only (3) are allowed, never corruption
  [[ "$output" != *"ERROR"* ]]
}

@test "22 no space: create says it cannot write the image, exit 1" {
  full_tmpfs
  fill "$FULL/filler"
  cd "$FULL"
  run "$IMGFUSE" create -f qcow2 t.qcow2 1G
  cd "$TMP"
  fails_with 1 "imgfuse: t.qcow2: cannot write the image: No space left on device"
}

@test "23 no space for --snapshot in TMPDIR: one line, exit 1, the temporary directory removed" {
  full_tmpfs
  fill "$FULL/filler"
  run env TMPDIR="$FULL" "$IMGFUSE" --foreground --snapshot top.qcow2 mnt
  echo "$output"
  [ "$status" -eq 1 ]
  [ "${#lines[@]}" -eq 1 ]
  [[ "${lines[0]}" =~ ^imgfuse:\ $FULL/imgfuse-snapshot-[A-Za-z0-9]{6}/overlay.qcow2:\ cannot\ write\ the\ image:\ No\ space\ left\ on\ device$ ]]
  [ -z "$(ls "$FULL" | grep imgfuse-snapshot)" ]
  nothing_mounted "$TMP/mnt"
}

@test "24 image is a directory" {
  mkdir img
  run "$IMGFUSE" img mnt
  fails_with 2 "imgfuse: img: Is a directory"
}

@test "25 image not readable by the user: Permission denied, exit 2" {
  qemu-img create -q -f qcow2 base.qcow2 16M
  chmod 600 base.qcow2
  chown "$(test_user)" "$MNT"
  as_user 'u "$IMGFUSE" "'"$TMP"'/base.qcow2" mnt'
  fails_with 2 "imgfuse: $TMP/base.qcow2: Permission denied"
}

@test "26 encrypted image without a key: one line saying a key is needed" {
  local i
  for i in 1 2 3 4 5 6 7 8; do  # qemu-img's PBKDF timing gives up on a busy machine: a few tries
    qemu-img create -q -f qcow2 --object secret,id=s0,data=pw \
      -o encrypt.format=luks,encrypt.key-secret=s0,encrypt.iter-time=10 luks.qcow2 16M 2>/dev/null && break
    rm -f luks.qcow2; sleep 1
  done
  run "$IMGFUSE" luks.qcow2 mnt </dev/null
  fails_with 2 "imgfuse: luks.qcow2: encrypted qcow2 image (LUKS): a key is needed (--key-file FILE or --passphrase-fd N)"
}

@test "27 formats once served as raw: vhdx and qcow version 1 now read as their disks, LUKS asks for its key" {
  qemu-img create -q -f vhdx base.vhdx 16M
  qemu-io -f vhdx -c 'write -P 0x27 1M 64k' base.vhdx >/dev/null
  qemu-img create -q -f qcow old.qcow 16M
  make_luks c.luks
  mount_img base.vhdx "$MNT"
  [ "$(stat -c %s "$MNT/disk.raw")" -eq $((16 << 20)) ]
  qemu-img convert -O raw base.vhdx want.raw
  cmp "$MNT/disk.raw" want.raw
  unmount_img
  run "$IMGFUSE" info --output=json base.vhdx
  [ "$status" -eq 0 ]
  [[ "$output" == *'"format": "vhdx"'* ]]
  run "$IMGFUSE" info old.qcow
  [ "$status" -eq 0 ]
  [[ "$output" == *"format: qcow"$'\n'* ]]
  run "$IMGFUSE" c.luks mnt
  fails_with 2 "imgfuse: c.luks: LUKS encrypted container: a key is needed (--key-file FILE or --passphrase-fd N)"
  run "$IMGFUSE" hash c.luks
  fails_with 2 "imgfuse: c.luks: LUKS encrypted container: a key is needed (--key-file FILE or --passphrase-fd N)"
  # info needs no key (as qemu-img info): the header is shown, the data is not read
  run "$IMGFUSE" info c.luks </dev/null
  [ "$status" -eq 0 ]
  [[ "$output" == *"format: luks"$'\n'* ]]
  [[ "$output" == *"encrypted: yes (no key given; data not readable)"* ]]
  printf pw > key
  run "$IMGFUSE" info --key-file key c.luks
  [ "$status" -eq 0 ]
  [[ "$output" == *"format: luks"$'\n'* ]]
}

@test "28 --offset/--size on a non-raw image: a window over the disk" {
  qemu-img create -q -f vpc base.vhd 16M
  qemu-io -f vpc -c 'write -P 0x33 1M 64k' base.vhd >/dev/null
  mount_img --offset 1M top.qcow2 "$MNT"
  [ "$(stat -c %s "$MNT/disk.raw")" -eq $((63 << 20)) ]
  cmp "$MNT/disk.raw" <(tail -c +$(((1 << 20) + 1)) "$(raw_of top.qcow2)")
  grep -q "options: --offset=1M" "$MNT/info"
  unmount_img
  mount_img --size 1M top.qcow2 "$MNT"
  cmp "$MNT/disk.raw" <(head -c 1M "$(raw_of top.qcow2)")
  unmount_img
  mount_img --offset 1M base.vhd "$MNT"
  vsize=$(qemu-img info --output=json base.vhd | python3 -c 'import json,sys; print(json.load(sys.stdin)["virtual-size"])')
  [ "$(stat -c %s "$MNT/disk.raw")" -eq $((vsize - (1 << 20))) ]
  cmp "$MNT/disk.raw" <(tail -c +$(((1 << 20) + 1)) "$(raw_of base.vhd)")
  unmount_img
}

@test "29 -o rw (the fstab word) is noticed on stderr; the mount stays read-only; -o writable writes" {
  cp top.qcow2 orig.qcow2
  mount_img -o rw top.qcow2 "$MNT"
  [ "$(cat "$TMP/daemon.log")" = "imgfuse: -o rw: notice: the mount stays read-only; --rw or -o writable makes it writable" ]
  grep -q " $MNT fuse.imgfuse ro," /proc/mounts
  run sh -c "printf x | dd of='$MNT/disk.raw' conv=notrunc 2>&1"
  [ "$status" -ne 0 ]
  unmount_img
  cmp top.qcow2 orig.qcow2
  mount_img -o writable top.qcow2 "$MNT"
  grep -q " $MNT fuse.imgfuse rw," /proc/mounts
  printf 'written' | dd of="$MNT/disk.raw" conv=notrunc 2>/dev/null
  unmount_img
  [ "$(head -c 7 "$(raw_of top.qcow2)")" = written ]
}

@test "30 truncated image: mounts, a read of the lost cluster is EIO, hash names the failure" {
  cp top.qcow2 trunc.qcow2
  truncate -s $(( $(stat -c %s top.qcow2) - 65536 )) trunc.qcow2
  mount_img trunc.qcow2 "$MNT"
  run dd if="$MNT/disk.raw" of=/dev/null bs=1M iflag=direct 2>&1
  echo "$output"
  [ "$status" -ne 0 ]
  [[ "$output" == *"Input/output error"* ]]
  unmount_img
  run "$IMGFUSE" hash trunc.qcow2
  echo "$output"
  [ "$status" -eq 1 ]
  [ "${#lines[@]}" -eq 2 ]
  [ "${lines[0]}" = "imgfuse: trunc.qcow2: corrupt qcow2 metadata: data cluster 0x150000 for guest offset 0x200000 lies past the end of the image" ]
  [ "${lines[1]}" = "imgfuse: trunc.qcow2: cannot hash: Input/output error" ]
}

@test "31 snapshot that does not exist" {
  run "$IMGFUSE" snapshot -a nosuch top.qcow2
  fails_with 1 "imgfuse: top.qcow2: no snapshot 'nosuch'"
}

@test "32 create -b without -F: refused as qemu-img does, nothing created" {
  run "$IMGFUSE" create -f qcow2 -b top.qcow2 ov.qcow2
  fails_with 2 "imgfuse: ov.qcow2: backing file specified without backing format; add -F FMT"
  [ ! -e ov.qcow2 ]
  "$IMGFUSE" create -f qcow2 -b top.qcow2 -F qcow2 ov.qcow2
  [ "$(qemu-img info --output=json ov.qcow2 | python3 -c 'import json,sys; print(json.load(sys.stdin)["backing-filename-format"])')" = qcow2 ]
}

@test "33 a URL: network protocols without a driver are not supported yet (nbd://, http(s)://, s3:// and rbd: have one)" {
  for url in ftp://example.org/disk.qcow2 sftp://example.org/d.vmdk ssh://example.org/d.qcow2; do
    run "$IMGFUSE" "$url" mnt
    fails_with 2 "imgfuse: $url: network protocols are not supported yet (${url%%:*}); give the path of a local image file"
    run "$IMGFUSE" info "$url"
    fails_with 2 "imgfuse: $url: network protocols are not supported yet (${url%%:*}); give the path of a local image file"
  done
}
