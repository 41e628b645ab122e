#!/usr/bin/env bats
# SPDX-License-Identifier: MIT
# cli.bats - the command line outside the mount's data path: --help, --version, info (text and JSON),
# map, hash, create, snapshot on formats without snapshots, -o pass-through, options after the
# positional arguments, and one-line errors with exit 2 for bad usage of the subcommands.

load helpers

setup() { setup_tmp; cd "$TMP"; }
teardown() { teardown_tmp; }

SEEKMAP="$BATS_TEST_DIRNAME/seekmap.py"

@test "--help lists every option of the command line and exits 0" {
  run "$IMGFUSE" --help
  [ "$status" -eq 0 ]
  for opt in --format --offset --size --backing --backing-format --no-backing --backing-dir \
             --unsafe-backing --data-file --l2-cache-size --rw --force-share --discard --on-read-error \
             --cache --aio --allow-other -o --foreground --debug --blkdebug --help --version \
             "info [--output=json]" "map [--output=json]" "create -f FMT" "snapshot -l" "hash [--algo" \
             --pid-file "unmount [--timeout SECONDS] MOUNTPOINT"; do
    [[ "$output" == *"$opt"* ]] || { echo "missing $opt"; false; }
  done
}

@test "--version names the program and the formats it reads" {
  run "$IMGFUSE" --version
  [ "$status" -eq 0 ]
  [[ "${lines[0]}" == "imgfuse "* ]]
  [[ "$output" == *"formats:"*raw* ]]
}

@test "info describes a raw image: format, exact virtual size, chain" {
  head -c 1000001 /dev/urandom > odd.raw
  run "$IMGFUSE" info odd.raw
  [ "$status" -eq 0 ]
  [[ "$output" == *"image: "*odd.raw* ]]
  [[ "$output" == *"layers: 1"* ]]
  [[ "$output" == *raw* ]]
  [[ "$output" == *1000001* ]]
}

@test "info --json is valid JSON with the chain's layers" {
  truncate -s 64M sparse.raw
  run "$IMGFUSE" info --json sparse.raw
  [ "$status" -eq 0 ]
  echo "$output" | python3 -c '
import json, sys
d = json.load(sys.stdin)
assert d["filename"].endswith("sparse.raw") and d["format"] == "raw" and d["virtual-size"] == 67108864, d
x = d["imgfuse"]
assert x["image"].endswith("sparse.raw"), x
assert x["layer_count"] == 1 and len(x["layers"]) == 1, x
layer = x["layers"][0]
assert layer["depth"] == 0
assert 67108864 in layer.values(), layer
assert "raw" in layer.values(), layer'
}

@test "options may follow the image: info IMAGE --json" {
  truncate -s 1M late.raw
  run "$IMGFUSE" info late.raw --json
  [ "$status" -eq 0 ]
  echo "$output" | python3 -c 'import json, sys; json.load(sys.stdin)'
}

@test "map --json lists the same data extents as the host file's SEEK_DATA map" {
  truncate -s 16M m.raw
  head -c 65536 /dev/urandom | dd of=m.raw bs=64k seek=7 conv=notrunc status=none
  head -c 4096 /dev/urandom | dd of=m.raw bs=4k seek=4000 conv=notrunc status=none
  run "$IMGFUSE" map --json m.raw
  [ "$status" -eq 0 ]
  ours=$(echo "$output" | python3 -c '
import json, sys
for r in json.load(sys.stdin):
    if r["data"]:
        print(r["start"], r["start"] + r["length"])')
  [ "$ours" = "$(python3 "$SEEKMAP" m.raw)" ]
  run "$IMGFUSE" map m.raw
  [ "$status" -eq 0 ]
  [[ "${lines[0]}" == offset* ]]
  [[ "$output" == *data* ]]
}

@test "hash prints sha256sum-style lines equal to the host tools' digests" {
  truncate -s 8M h.raw
  head -c 100000 /dev/urandom | dd of=h.raw bs=1 seek=3000000 conv=notrunc status=none
  run "$IMGFUSE" hash h.raw
  [ "$status" -eq 0 ]
  [ "$output" = "$(sha256sum h.raw)" ]
  run "$IMGFUSE" hash --algo md5 h.raw
  [ "$output" = "$(md5sum h.raw)" ]
  run "$IMGFUSE" hash --algo=sha1 h.raw
  [ "$output" = "$(sha1sum h.raw)" ]
}

@test "hash of a 0-byte and a 1000001-byte image" {
  : > e.raw
  head -c 1000001 /dev/urandom > o.raw
  run "$IMGFUSE" hash e.raw
  [ "$output" = "$(sha256sum e.raw)" ]
  run "$IMGFUSE" hash o.raw
  [ "$output" = "$(sha256sum o.raw)" ]
}

@test "create -f raw makes an image of the exact size" {
  run "$IMGFUSE" create -f raw new.raw 1000001
  [ "$status" -eq 0 ]
  [ "$(stat -c %s new.raw)" -eq 1000001 ]
  run "$IMGFUSE" create -f raw k.raw 64k
  [ "$status" -eq 0 ]
  [ "$(stat -c %s k.raw)" -eq 65536 ]
}

@test "create refuses a backing file for raw (the seed's rule) with exit 2" {
  truncate -s 1M base.raw
  run "$IMGFUSE" create -f raw -b base.raw -F raw top.raw 1M
  [ "$status" -eq 2 ]
  [ "$output" = "imgfuse: top.raw: format 'raw' does not support backing files" ]
  [ ! -e top.raw ]
}

@test "snapshot -l on a raw image fails with one line naming the image" {
  truncate -s 1M s.raw
  run "$IMGFUSE" snapshot -l s.raw
  [ "$status" -eq 1 ]
  [ "${#lines[@]}" -eq 1 ]
  [[ "$output" == "imgfuse: "*s.raw* ]]
}

@test "subcommands: bad usage gives one line and exit 2" {
  truncate -s 1M x.raw
  for args in "info" "info --bogus x.raw" "info missing.raw" "info x.raw x.raw" "map" "map missing.raw" \
              "hash --algo crc x.raw" "hash" "create" "create -f raw" "create -f nosuch n.img 1M" \
              "create -f raw n.img lots" "snapshot x.raw" "snapshot -l -c a x.raw" "snapshot -c" \
              "info $TMP"; do
    run $IMGFUSE $args
    echo "$args -> $status: $output"
    [ "$status" -eq 2 ]
    [ "${#lines[@]}" -eq 1 ]
    [[ "${lines[0]}" == "imgfuse: "* ]]
  done
}

@test "-o options pass through to FUSE; -o rw alone keeps the mount read-only" {
  head -c 65536 /dev/urandom > p.raw
  mount_img -o rw,noatime,fsname=evidence p.raw "$MNT"
  grep -q "^evidence $MNT fuse.imgfuse ro," /proc/mounts
  [ "$(stat -c %a "$MNT/disk.raw")" = 444 ]
  run sh -c "echo x > '$MNT/disk.raw'"
  [ "$status" -ne 0 ]
  cmp "$MNT/disk.raw" p.raw
  unmount_img
}

@test "options after the positional arguments, as mount.fuse3 passes them" {
  head -c 65536 /dev/urandom > late.raw
  "$IMGFUSE" late.raw "$MNT" --foreground -o ro,noatime > "$TMP/daemon.log" 2>&1 &
  DAEMON_PID=$!
  MOUNTED=$MNT
  wait_mounted "$MNT"
  cmp "$MNT/disk.raw" late.raw
  unmount_img
  nothing_mounted
}

@test "file mode: a regular-file mountpoint becomes the raw view" {
  head -c 1000001 /dev/urandom > fm.raw
  : > view
  mount_img fm.raw "$TMP/view"
  [ "$(stat -c %s "$TMP/view")" -eq 1000001 ]
  cmp "$TMP/view" fm.raw
  unmount_img
  [ "$(stat -c %s "$TMP/view")" -eq 0 ]
}

@test "MNT/info and MNT/info.json describe the mount and the chain" {
  truncate -s 2M i.raw
  mount_img i.raw "$MNT"
  [ "$(ls "$MNT" | tr '\n' ' ')" = "disk.raw errors info info.json layers stats.json " ]
  grep -q "^read-only: yes (evidence files opened O_RDONLY)" "$MNT/info"
  grep -q "i.raw" "$MNT/info"
  python3 -c '
import json, sys
d = json.load(open(sys.argv[1]))
assert d["imgfuse"]["read_only"] is True and d["imgfuse"]["layer_count"] == 1, d
assert d["filename"].endswith("i.raw") and d["virtual-size"] == 2097152, d' "$MNT/info.json"
  [ "$(stat -c %s "$MNT/info")" -eq "$(cat "$MNT/info" | wc -c)" ]
  unmount_img
}

@test "mount.fuse3 (what an fstab line 'IMAGE MNT fuse.imgfuse ro 0 0' runs) mounts read-only" {
  head -c 65536 /dev/urandom > f.raw
  mkdir -p "$TMP/bin"
  ln -s "$IMGFUSE" "$TMP/bin/imgfuse"
  PATH="$TMP/bin:$PATH" mount.fuse3 "$TMP/f.raw" "$MNT" -t imgfuse -o rw,nodev,nosuid,noatime,defaults
  mountpoint -q "$MNT"
  grep -q "^$TMP/f.raw $MNT fuse.imgfuse ro," /proc/mounts
  cmp "$MNT/disk.raw" f.raw
  fusermount3 -u "$MNT"
  nothing_mounted
}

@test "--allow-other reaches the mount options (root may always use it)" {
  truncate -s 64k a.raw
  mount_img --allow-other a.raw "$MNT"
  grep " $MNT fuse.imgfuse " /proc/mounts | grep -q allow_other
  unmount_img
}

@test "--debug logs FUSE requests and the statistics at unmount" {
  head -c 65536 /dev/urandom > d.raw
  mount_img --debug d.raw "$MNT"
  cmp "$MNT/disk.raw" d.raw
  unmount_img
  grep -q "LOOKUP" "$TMP/daemon.log"
  grep -q "statistics at unmount" "$TMP/daemon.log"
  grep -q '"rd_bytes": 65536' "$TMP/daemon.log"
}

@test "hash draws a progress bar only when stderr is a terminal" {
  truncate -s 64M p.raw
  run "$IMGFUSE" hash p.raw
  [ "$status" -eq 0 ]
  [ "$output" = "$(sha256sum p.raw)" ]
  "$IMGFUSE" hash p.raw 2> "$TMP/err" > /dev/null
  [ ! -s "$TMP/err" ]
  script -qec "$IMGFUSE hash p.raw" /dev/null > "$TMP/tty.out"
  grep -q '100%' "$TMP/tty.out"
  grep -q "$(sha256sum < p.raw | cut -d' ' -f1)  p.raw" "$TMP/tty.out"
}

# Issue 16 item 4: command words are commands, never image names.
@test "a file named like a command is not mounted: 'convert evidence.qcow2' exits 2 and mounts nothing" {
  qemu-img create -q -f qcow2 evidence.qcow2 1M
  cp evidence.qcow2 evidence.orig
  printf 'not a command' > convert
  truncate -s 64K convert
  # the issue's reproducer (with check, a command since): the command runs (here: its usage line), then
  # with an option before the command word
  for opt in "" --foreground; do
    run $IMGFUSE $opt convert evidence.qcow2
    echo "$status: $output"
    [ "$status" -eq 2 ]
    [ "${#lines[@]}" -eq 1 ]
    if [ -z "$opt" ]; then
      [[ "${lines[0]}" == "imgfuse: usage: imgfuse convert "* ]]
    else
      [ "${lines[0]}" = "imgfuse: convert: a command comes before any option (a file of that name is mounted as ./convert)" ]
    fi
    nothing_mounted
    cmp evidence.qcow2 evidence.orig
  done
  run $IMGFUSE --foreground info evidence.qcow2
  [ "$status" -eq 2 ]
  [ "${lines[0]}" = "imgfuse: info: a command comes before any option (a file of that name is mounted as ./info)" ]
  # every command of DESIGN.md is built: each word runs its command (a usage line here), never a mount
  for word in check compare amend commit stream rebase resize; do
    printf 'not a command' > "$word"
    run $IMGFUSE $word
    echo "$word: $status: $output"
    [ "$status" -ne 0 ]
    nothing_mounted
  done
  # unmount is a command: it never mounts, and refuses what is not a mount
  printf 'not a command' > unmount
  run $IMGFUSE unmount evidence.qcow2
  [ "$status" -eq 2 ]
  [ "${lines[0]}" = "imgfuse: evidence.qcow2: not mounted" ]
  run $IMGFUSE --foreground unmount evidence.qcow2
  [ "$status" -eq 2 ]
  [ "${lines[0]}" = "imgfuse: unmount: a command comes before any option (a file of that name is mounted as ./unmount)" ]
  cmp evidence.qcow2 evidence.orig
  nothing_mounted
  mount_img ./convert "$MNT"
  cmp "$MNT/disk.raw" convert
  unmount_img
}

@test "an unknown bare word is an unknown command with the list; a file of that name is an image" {
  qemu-img create -q -f qcow2 evidence.qcow2 1M
  run $IMGFUSE --foreground chek evidence.qcow2
  echo "$status: $output"
  [ "$status" -eq 2 ]
  [ "${#lines[@]}" -eq 1 ]
  [ "${lines[0]}" = "imgfuse: chek: unknown command (commands: info, map, create, snapshot, hash, verify, unmount, convert, resize, commit, stream, rebase, amend, mount, check, compare; an image is named by its path, e.g. ./chek)" ]
  nothing_mounted
  truncate -s 64K disk
  mount_img disk "$MNT"
  cmp "$MNT/disk.raw" disk
  unmount_img
}

@test "implemented commands still run with files of their names beside the image" {
  qemu-img create -q -f qcow2 evidence.qcow2 1M
  for f in info map hash snapshot create; do truncate -s 4K $f; done
  run $IMGFUSE info evidence.qcow2
  [ "$status" -eq 0 ]; [[ "$output" == *"format: qcow2"* ]]
  run $IMGFUSE map evidence.qcow2
  [ "$status" -eq 0 ]
  run $IMGFUSE hash evidence.qcow2
  [ "$status" -eq 0 ]; [[ "$output" == *"evidence.qcow2"* ]]
  run $IMGFUSE snapshot -l evidence.qcow2
  [ "$status" -eq 0 ]
  run $IMGFUSE create -f raw new.img 1M
  [ "$status" -eq 0 ]; [ "$(stat -c %s new.img)" -eq 1048576 ]
  nothing_mounted
}

# --- the exact command line (issue 18): no abbreviations, hints, qemu spellings, -o NAME=VALUE, --help ---

@test "long options match only when spelled in full, for the mount and every command (exit 2, did you mean)" {
  qemu-img create -q -f qcow2 e.qcow2 1M
  cp e.qcow2 e.orig
  while IFS='|' read -r args want; do
    run $IMGFUSE $args
    echo "$args -> $status: $output"
    [ "$status" -eq 2 ]
    [ "${#lines[@]}" -eq 1 ]
    [ "${lines[0]}" = "$want" ]
  done <<'CASES'
--r e.qcow2 mnt|imgfuse: --r: unknown option (did you mean --rw or --read-only?)
--over=x e.qcow2 mnt|imgfuse: --over: unknown option (did you mean --overlay?)
--foreg e.qcow2 mnt|imgfuse: --foreg: unknown option (did you mean --foreground?)
--snap e.qcow2 mnt|imgfuse: --snap: unknown option (did you mean --snapshot?)
e.qcow2 mnt --over|imgfuse: --over: unknown option (did you mean --overlay?)
e.qcow2 mnt --overlay|imgfuse: --overlay: option requires an argument
--rw=yes e.qcow2 mnt|imgfuse: --rw=yes: option takes no value
info --backing-d x e.qcow2|imgfuse: --backing-d: unknown option for 'info' (did you mean --backing-dir?)
info --js e.qcow2|imgfuse: --js: unknown option for 'info' (did you mean --json?)
map --jsno e.qcow2|imgfuse: --jsno: unknown option for 'map' (did you mean --json?)
hash --alg md5 e.qcow2|imgfuse: --alg: unknown option for 'hash' (did you mean --algo?)
create --form raw n.raw 1M|imgfuse: --form: unknown option for 'create' (did you mean --format?)
snapshot --hel|imgfuse: --hel: unknown option for 'snapshot' (did you mean --help?)
unmount --time 3 mnt|imgfuse: --time: unknown option for 'unmount' (did you mean --timeout?)
CASES
  [ ! -e x ] && [ ! -e n.raw ]
  cmp e.qcow2 e.orig
  nothing_mounted
}

@test "info --backing DIR (a directory) suggests --backing-dir; --backing FILE is a backing file" {
  mkdir base
  qemu-img create -q -f qcow2 base/b.qcow2 1M
  qemu-img create -q -f qcow2 -u -b b.qcow2 -F qcow2 t.qcow2 1M
  run $IMGFUSE info --backing base t.qcow2
  [ "$status" -eq 2 ]
  [ "$output" = "imgfuse: --backing: 'base' is a directory; did you mean --backing-dir base? (--backing names a file)" ]
  run $IMGFUSE --foreground --backing base t.qcow2 mnt
  [ "$status" -eq 2 ]
  [ "$output" = "imgfuse: --backing: 'base' is a directory; did you mean --backing-dir base? (--backing names a file)" ]
  run $IMGFUSE info --backing base/b.qcow2 t.qcow2
  [ "$status" -eq 0 ]
  [[ "$output" == *"layer 1: "*"base/b.qcow2"* ]]
}

@test "every option an error message recommends is accepted by mount, info, map and hash" {
  # the options the messages of lib/ and drivers/ recommend ("use --X ... or --Y"); --rw and --overlay
  # are advice for a mount only
  src=$BATS_TEST_DIRNAME/..
  recommended=$(grep -rhoE 'use --[a-z-]+( [A-Z]+)?(,? \(?or --[a-z-]+( [A-Z]+)?\)?)*' "$src/lib" "$src/drivers" |
                grep -oE -- '--[a-z-]+' | sort -u)
  [ "$(echo "$recommended" | wc -l)" -ge 5 ]
  qemu-img create -q -f qcow2 e.qcow2 1M
  for opt in $recommended; do
    cmds="info map hash"
    case $opt in
      --rw|--overlay) cmds=; arg=(); [ $opt = --overlay ] && arg=(ov.qcow2) ;;
      --backing|--data-file) arg=(e.qcow2) ;;
      --backing-dir) arg=(.) ;;
      --force-share|--unsafe-backing) arg=() ;;
      *) echo "a message recommends $opt: give it a case here"; false ;;
    esac
    for cmd in $cmds; do
      run $IMGFUSE $cmd "$opt" "${arg[@]}" nosuch.qcow2
      echo "$cmd $opt: $output"
      [ "$output" = "imgfuse: nosuch.qcow2: No such file or directory" ]
    done
    run $IMGFUSE --foreground "$opt" "${arg[@]}" nosuch.qcow2 mnt
    [ "$output" = "imgfuse: nosuch.qcow2: No such file or directory" ]
  done
}

@test "every mount option is also -o NAME[=VALUE], from the same table as the long options" {
  # the long options --help lists, each given as -o (help, version, image-opts, object are no mount options)
  names=$($IMGFUSE --help | grep -oE -- '^ +(-[a-zA-Z], )?--[a-z][a-z0-9-]*' | grep -oE -- '--[a-z0-9-]+' | sort -u)
  [ "$(echo "$names" | wc -l)" -ge 30 ]
  for n in $names; do
    n=${n#--}
    case $n in
      help|version) continue ;;
      cache) o="$n=none" ;; aio) o="$n=threads" ;; discard) o="$n=ignore" ;; on-read-error) o="$n=report" ;;
      detect-zeroes) o="$n=off" ;; offset|size|l2-cache-size|iops-limit*|bps-limit*) o="$n=1M" ;;
      format) o="$n=qcow2" ;; backing-format) o="$n=qcow2" ;; audit-log) o="$n=$TMP/audit.log" ;;
      pid-file) o="$n=$TMP/pid" ;; backing|backing-dir|data-file|blkdebug|overlay) o="$n=$TMP/x" ;;
      rw) o=writable ;;
      *) o=$n ;;
    esac
    run $IMGFUSE --foreground -o "$o" nosuch.qcow2 mnt
    echo "-o $o: $output"
    [ "$status" -eq 2 ]
    [[ "$output" != *"bad FUSE options"* ]]
    [[ "$output" != *"unknown option"* ]]
  done
  run $IMGFUSE --foreground -o overlay nosuch.qcow2 mnt
  [ "$output" = "imgfuse: -o overlay: needs a value (-o overlay=VALUE)" ]
  run $IMGFUSE --foreground -o snapshot=yes nosuch.qcow2 mnt
  [ "$output" = "imgfuse: -o snapshot: takes no value" ]
  run $IMGFUSE --foreground -o cache=fast nosuch.qcow2 mnt
  [ "$output" = "imgfuse: --cache: invalid value 'fast' (expected writeback or none)" ]
}

@test "an fstab-style -o line says it all: format, backing-dir, offset, overlay (through mount.fuse3)" {
  mkdir base vms work
  qemu-img create -q -f qcow2 base/b.qcow2 4M
  qemu-io -f qcow2 -c 'write -P 0x61 0 2M' base/b.qcow2 >/dev/null
  (cd vms && qemu-img create -q -f qcow2 -b ../base/b.qcow2 -F qcow2 top.qcow2)
  qemu-io -f qcow2 -c 'write -P 0x62 1M 64k' vms/top.qcow2 >/dev/null
  cp vms/top.qcow2 top.orig
  mkdir -p "$TMP/bin"
  ln -s "$IMGFUSE" "$TMP/bin/imgfuse"
  PATH="$TMP/bin:$PATH" mount.fuse3 "$TMP/vms/top.qcow2" "$MNT" -t imgfuse \
    -o "ro,nodev,format=qcow2,backing-dir=$TMP/base,offset=1M,l2-cache-size=1M"
  mountpoint -q "$MNT"
  cmp "$MNT/disk.raw" <(tail -c +$(((1 << 20) + 1)) "$(raw_of vms/top.qcow2)")
  grep -q "options: --format=qcow2 --backing-dir=$TMP/base --offset=1M --l2-cache-size=1M" "$MNT/info"
  "$IMGFUSE" unmount "$MNT"
  PATH="$TMP/bin:$PATH" mount.fuse3 "$TMP/vms/top.qcow2" "$MNT" -t imgfuse \
    -o "rw,nodev,backing-dir=$TMP/base,overlay=$TMP/work/ov.qcow2"
  mountpoint -q "$MNT"
  grep -q " $MNT fuse.imgfuse rw," /proc/mounts
  printf 'over' | dd of="$MNT/disk.raw" conv=notrunc 2>/dev/null
  "$IMGFUSE" unmount "$MNT"
  cmp vms/top.qcow2 top.orig
  qemu-img convert -O raw work/ov.qcow2 o.raw
  [ "$(head -c 4 o.raw)" = over ]
  cmp <(tail -c +5 o.raw) <(tail -c +5 "$(raw_of vms/top.qcow2)")
}

@test "the fsname in /proc/mounts is the image's absolute path" {
  mkdir -p d/e
  head -c 65536 /dev/urandom > d/e/abs.raw
  cd d
  mount_img e/abs.raw "$MNT"
  [ "$(awk -v m="$MNT" '$2 == m { print $1 }' /proc/mounts)" = "$TMP/d/e/abs.raw" ]
  unmount_img
  cd "$TMP"
}

@test "create -o help lists the creation options of a format, a line each; -b needs -F" {
  run $IMGFUSE create -f qcow2 -o help
  [ "$status" -eq 0 ]
  [ "${lines[0]}" = "qcow2: creation options (-o KEY=VALUE,...):" ]
  for k in cluster_size=SIZE compat=STRING extended_l2=on\|off lazy_refcounts=on\|off refcount_bits=INT \
           compression_type=STRING encrypt.format=STRING encrypt.cipher-alg=STRING encrypt.iter-time=INT; do
    printf '%s\n' "${lines[@]}" | grep -qE "^  ${k} +[a-z0-9]" || { echo "missing $k"; false; }
  done
  [ "${#lines[@]}" -eq 14 ]
  run $IMGFUSE create -f raw -o help
  [ "$status" -eq 0 ]
  [ "$output" = "raw: no creation options" ]
  run $IMGFUSE create -o help
  [ "$status" -eq 0 ]
  [[ "$output" == *"qcow2: creation options"*"raw: no creation options"* ]]
  run $IMGFUSE create -f vhd -o help
  [ "$status" -eq 2 ]
  [ "$output" = "imgfuse: vhd: unknown image format" ]
  qemu-img create -q -f qcow2 b.qcow2 1M
  run $IMGFUSE create -f qcow2 -b b.qcow2 t.qcow2
  [ "$status" -eq 2 ]
  [ "$output" = "imgfuse: t.qcow2: backing file specified without backing format; add -F FMT" ]
  [ ! -e t.qcow2 ]
}

@test "CMD --help and CMD -h: the options a line each and an example, exit 0, for every command" {
  for cmd in info map hash create snapshot unmount mount; do
    for h in --help -h; do
      run $IMGFUSE $cmd $h
      echo "$cmd $h: $output"
      [ "$status" -eq 0 ]
      [[ "${lines[0]}" == "Usage: imgfuse "* ]]
      printf '%s\n' "${lines[@]}" | grep -qE '^  (-[a-zA-Z], )?--?[a-z]'
      printf '%s\n' "${lines[@]}" | grep -qx "Example:"
      printf '%s\n' "${lines[@]}" | grep -qE "^  imgfuse( $cmd)? "
    done
  done
  run $IMGFUSE info --help
  for opt in --json --format --backing --backing-format --no-backing --backing-dir --unsafe-backing --data-file \
             --force-share; do
    [[ "$output" == *" $opt "* ]] || { echo "info --help lacks $opt"; false; }
  done
}

@test "-o rw alone prints one notice naming what makes a mount writable" {
  head -c 65536 /dev/urandom > n.raw
  mount_img -o rw n.raw "$MNT"
  [ "$(cat "$TMP/daemon.log")" = "imgfuse: -o rw: notice: the mount stays read-only; --rw or -o writable makes it writable" ]
  grep -q " $MNT fuse.imgfuse ro," /proc/mounts
  unmount_img
}
