#!/usr/bin/env bats
# SPDX-License-Identifier: MIT
# driver-options.bats - driver options given as -o DRIVER.KEY=VALUE (as an fstab line can) behave exactly
# as the long options that map onto them (qcow2.l2-cache-size, qcow2.data-file, window.offset/size,
# blkdebug.rules), mixed with FUSE options in one -o; an unknown driver or key, a bad value and an option
# for a driver that is not in the chain are refused with exit 2 and one exact line, nothing mounted.

load helpers

setup() { setup_tmp; cd "$TMP"; }
teardown() { teardown_tmp; }

# refused_exactly LINE ARGS...: mounting fails with exit 2 and exactly LINE, nothing mounted.
refused_exactly() {
  local want=$1; shift
  run "$IMGFUSE" --foreground "$@" "$MNT"
  echo "status $status: $output"
  [ "$status" -eq 2 ]
  [ "$output" = "$want" ]
  ! grep -q " $MNT " /proc/mounts
}

# l2_sizes: the l2_cache_size of every qcow2 layer of the mount's info.json, one line.
l2_sizes() {
  python3 -c 'import json, sys; print(*[l["l2_cache_size"] for l in json.load(open(sys.argv[1]))["imgfuse"]["layers"] if "l2_cache_size" in l])' \
    "$MNT/info.json"
}

@test "-o qcow2.l2-cache-size=64K is --l2-cache-size 64K: the same cache on every qcow2 layer, the same bytes" {
  qemu-img create -q -f qcow2 -o cluster_size=4k base.qcow2 64M
  qio base.qcow2 'write -P 0x31 0 64M'
  qemu-img create -q -f qcow2 -o cluster_size=4k -b base.qcow2 -F qcow2 top.qcow2
  qio top.qcow2 'write -P 0x32 1M 20M'
  want=$(raw_of top.qcow2)
  mount_img --l2-cache-size 64K top.qcow2 "$MNT"
  long=$(l2_sizes)
  unmount_img
  mount_img -o qcow2.l2-cache-size=64K top.qcow2 "$MNT"
  [ "$(l2_sizes)" = "$long" ]
  [ "$long" = "65536 65536" ]
  same_bytes "$MNT/disk.raw" "$want"
  unmount_img
  mount_img top.qcow2 "$MNT"
  [ "$(l2_sizes)" = "4194304 4194304" ]   # the default, so the option did change something
  unmount_img
}

@test "-o qcow2.data-file=PATH is --data-file PATH, and both refuse --overlay alike" {
  qemu-img create -q -f qcow2 -o data_file=img.data img.qcow2 2M
  qio img.qcow2 'write -P 0x31 0 64k'
  cp img.data other.data
  fmt_io raw other.data 'write -P 0x32 0 64k'
  mount_img -o qcow2.data-file="$TMP/other.data" img.qcow2 "$MNT"
  cmp -n 65536 "$MNT/disk.raw" other.data
  grep -q "\"data_file\": \"$TMP/other.data\"" "$MNT/info.json"
  unmount_img
  refused_exactly "imgfuse: --overlay: cannot be combined with --data-file" \
    --overlay ov.qcow2 -o qcow2.data-file="$TMP/other.data" img.qcow2
  [ ! -e ov.qcow2 ]
}

@test "-o window.offset/window.size are --offset/--size, and -o mixes driver and FUSE options" {
  qemu-img create -q -f raw w.raw 4M
  fmt_io raw w.raw 'write -P 0x41 0 1M' 'write -P 0x42 1M 1M' 'write -P 0x43 2M 2M'
  mount_img -o ro,noatime,fsname=evidence,window.offset=1M,window.size=2M w.raw "$MNT"
  grep -q "^evidence $MNT fuse.imgfuse ro," /proc/mounts
  [ "$(stat -c %s "$MNT/disk.raw")" -eq 2097152 ]
  cmp "$MNT/disk.raw" <(tail -c +1048577 w.raw | head -c 2097152)
  grep -q "^window: offset 1048576, size 2097152 " "$MNT/info"
  unmount_img
}

@test "an fstab line can carry driver options: mount.fuse3 passes them through" {
  qemu-img create -q -f qcow2 -o cluster_size=4k f.qcow2 64M
  qio f.qcow2 'write -P 0x51 0 3M'
  whole=$(raw_of f.qcow2)
  mkdir -p "$TMP/bin"
  ln -s "$IMGFUSE" "$TMP/bin/imgfuse"
  PATH="$TMP/bin:$PATH" mount.fuse3 "$TMP/f.qcow2" "$MNT" -t imgfuse \
    -o ro,nodev,noatime,qcow2.l2-cache-size=64K,window.offset=1M,window.size=2M
  mountpoint -q "$MNT"
  [ "$(l2_sizes)" = "65536" ]
  cmp "$MNT/disk.raw" <(tail -c +1048577 "$whole" | head -c 2097152)
  fusermount3 -u "$MNT"
  ! grep -q " $MNT " /proc/mounts
}

@test "-o blkdebug.rules=FILE is --blkdebug FILE" {
  head -c 1M /dev/urandom > bad.raw
  echo "event=read errno=5 offset=8192 length=4096 always" > rules
  mount_img -o blkdebug.rules="$TMP/rules" bad.raw "$MNT"
  run dd if="$MNT/disk.raw" of=/dev/null bs=4096 skip=2 count=1 iflag=direct
  [ "$status" -ne 0 ]
  cmp -n 8192 "$MNT/disk.raw" bad.raw
  unmount_img
}

@test "an unknown driver option or a bad value: exit 2 and one exact line, also without --foreground" {
  qemu-img create -q -f qcow2 x.qcow2 1M
  refused_exactly "imgfuse: x.qcow2: qcow2 option 'l2-cache-size': not a size: 'abc'" \
    -o qcow2.l2-cache-size=abc x.qcow2
  refused_exactly "imgfuse: x.qcow2: qcow2 option 'l2-cache': unknown option (it has: data-file, l2-cache-size)" \
    -o qcow2.l2-cache=1M x.qcow2
  refused_exactly "imgfuse: x.qcow2: raw option 'size': unknown option (it has none)" -o raw.size=1M x.qcow2
  refused_exactly "imgfuse: x.qcow2: driver option 'nosuch.key=1': no driver 'nosuch'" -o nosuch.key=1 x.qcow2
  refused_exactly "imgfuse: x.qcow2: qcow2 option 'data-file': needs a value" -o qcow2.data-file x.qcow2
  run "$IMGFUSE" -o qcow2.l2-cache-size=abc x.qcow2 "$MNT"
  [ "$status" -eq 2 ]
  [ "$output" = "imgfuse: x.qcow2: qcow2 option 'l2-cache-size': not a size: 'abc'" ]
  ! grep -q " $MNT " /proc/mounts
}

@test "an option for a driver that is not in the chain is refused, given as -o or as its long option" {
  qemu-img create -q -f raw r.raw 1M
  refused_exactly "imgfuse: r.raw: qcow2 option 'l2-cache-size': the chain has no qcow2 layer" \
    -o qcow2.l2-cache-size=1M r.raw
  refused_exactly "imgfuse: r.raw: qcow2 option 'data-file': the chain has no qcow2 layer" --data-file r.raw r.raw
  qemu-img create -q -f vpc v.vhd 1M
  refused_exactly "imgfuse: v.vhd: qcow2 option 'l2-cache-size': the chain has no qcow2 layer" \
    --l2-cache-size 1M v.vhd
  # with --overlay the chain has a qcow2 layer (the overlay), so the option is taken
  mount_img --overlay ov.qcow2 -o qcow2.l2-cache-size=1M r.raw "$MNT"
  [ "$(l2_sizes)" = "1048576" ]
  unmount_img
}

@test "more than 32 driver options: exit 2 and one line" {
  qemu-img create -q -f qcow2 x.qcow2 1M
  args=()
  for i in $(seq 1 33); do args+=(-o "qcow2.l2-cache-size=${i}M"); done
  run "$IMGFUSE" --foreground "${args[@]}" x.qcow2 "$MNT"
  [ "$status" -eq 2 ]
  [ "$output" = "imgfuse: qcow2.l2-cache-size=33M: at most 32 driver options" ]
}

@test "--help lists every driver's options from its table" {
  run "$IMGFUSE" --help
  [ "$status" -eq 0 ]
  for opt in "-o DRIVER.KEY=VALUE" qcow2.data-file=STRING qcow2.l2-cache-size=SIZE window.offset=SIZE \
             window.size=SIZE blkdebug.rules=STRING; do
    [[ "$output" == *"$opt"* ]] || { echo "missing $opt"; false; }
  done
}

@test "a driver's open error starts with the image's name once: a bad blkdebug rules file names the image, then the rules" {
  qemu-img create -q -f qcow2 a.qcow2 1M
  printf 'event=read bogus\n' > rules
  refused_open a.qcow2 "$TMP/rules: line 1: unknown flag (once, always)" -o blkdebug.rules="$TMP/rules"
  [ "${lines[0]}" = "imgfuse: a.qcow2: $TMP/rules: line 1: unknown flag (once, always)" ]
  # drivers that name the file themselves are not named twice
  printf 'x' > bad.qcow2
  refused_open bad.qcow2 "file too short for a qcow2 header" -f qcow2
  [ "${lines[0]}" = "imgfuse: bad.qcow2: file too short for a qcow2 header" ]
  refused_open bad.qcow2 "file too short for a VDI header (1 bytes)" -f vdi
  [ "${lines[0]}" = "imgfuse: bad.qcow2: file too short for a VDI header (1 bytes)" ]
}
