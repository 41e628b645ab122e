#!/usr/bin/env bats
# SPDX-License-Identifier: MIT
# qcow2-crypt.bats - encrypted qcow2 (encrypt.format=luks and aes) and qcow (AES) images made by qemu-img and
# written by qemu-io, on real mounts: the mount equals `qemu-img convert` given the secret; no key and a
# wrong key are refused with one line and exit 2; --rw mounts (fio, 4 jobs, verify) write ciphertext that
# qemu-img reads back, `qemu-img check` finds clean and in which a marker written through the mount never
# appears; an encrypted overlay on a plain base and a plain overlay on an encrypted base; --overlay; an
# internal snapshot; hash and convert; a LUKS header pointer out of the file or over the L1 table; info
# without a key (metadata only, no KDF run).

load helpers

setup() { setup_tmp; cd "$TMP"; printf 'pass one' > k1; printf 'wrong' > k2; }
teardown() { teardown_tmp; }

SECRET="--object secret,id=s0,file=k1"

# enc_create FMT ENCRYPT FILE SIZE [more -o options]: an image encrypted with key k1 by qemu-img (qemu times
# its LUKS PBKDF on this CPU and fails now and then on a busy machine, hence the tries).
enc_create() {
  local fmt=$1 enc=$2 f=$3 size=$4 o
  o="encrypt.format=$enc,encrypt.key-secret=s0${5:+,$5}"
  [ "$enc" = luks ] && o="$o,encrypt.iter-time=10"
  qemu_create_retry "$f" -f "$fmt" $SECRET -o "$o" "$f" "$size"
}

# opts FMT FILE: qemu's --image-opts for an encrypted FILE opened with k1 (a plain backing file needs none).
opts() { echo "driver=$1,file.filename=$2,encrypt.key-secret=s0"; }

# qio FMT FILE COMMAND...: qemu-io on an encrypted image opened with k1.
qio() {
  local fmt=$1 f=$2 c; shift 2
  for c in "$@"; do qemu-io $SECRET --image-opts "$(opts "$fmt" "$f")" -c "$c" >/dev/null; done
}

# qconvert FMT FILE OUT [convert options]: the plaintext as qemu-img sees it (key k1).
qconvert() { local fmt=$1 f=$2 out=$3; shift 3; qemu-img convert $SECRET "$@" --image-opts "$(opts "$fmt" "$f")" -O raw "$out"; }

# check_clean_enc FILE: qemu-img check (given the key) reports neither errors nor leaks.
check_clean_enc() { check_clean $SECRET --image-opts "$(opts qcow2 "$1")"; }

# fill FMT FILE: data in the first, a middle and the last cluster, a partial cluster and a zeroed range.
fill() {
  qio "$1" "$2" "write -P 0xab 0 1M" "write -P 0x12 3M 100k" "write -P 0x5a 8387584 512" "write -P 0x33 5M 3k" \
    "write -z 256k 128k"
}

same_as_qemu() {  # FMT FILE [mount options]: the mount equals qemu-img convert
  local fmt=$1 f=$2; shift 2
  qconvert "$fmt" "$f" ref.raw
  mount_img "$@" "$f" "$MNT"
  cmp "$MNT/disk.raw" ref.raw
  unmount_img
}

@test "qcow2 with encrypt.format=luks made by qemu-img: the mount equals qemu-img convert (--key-file, --passphrase-fd, -o key-file)" {
  enc_create qcow2 luks l.qcow2 8M
  fill qcow2 l.qcow2
  same_as_qemu qcow2 l.qcow2 --key-file k1
  same_as_qemu qcow2 l.qcow2 --passphrase-fd 5 5< <(printf 'pass one\nignored\n')
  same_as_qemu qcow2 l.qcow2 -o key-file=k1
  mount_img --key-file k1 --audit-log audit.jsonl l.qcow2 "$MNT"
  grep -q '^  encryption: luks$' "$MNT/info"
  grep -q '^  encryption_cipher: aes-xts-plain64$' "$MNT/info"
  ! grep -q 'pass one' "$MNT/info" "$MNT/info.json" || false
  # the master key's page is left out of core dumps and (but under ASan, whose mlock does nothing) locked
  grep -q 'VmFlags:.* dd' /proc/$DAEMON_PID/smaps
  [ -n "${IMGFUSE_ASAN:-}" ] || grep -q 'VmLck:[[:space:]]*[1-9]' /proc/$DAEMON_PID/status
  unmount_img
  ! grep -q 'pass one' audit.jsonl
}

@test "qcow2 with encrypt.format=aes and qcow with AES made by qemu-img: the mount equals qemu-img convert" {
  enc_create qcow2 aes a.qcow2 8M
  fill qcow2 a.qcow2
  same_as_qemu qcow2 a.qcow2 --key-file k1
  enc_create qcow aes a.qcow 8M
  qio qcow a.qcow "write -P 0xab 0 1M" "write -P 0x12 3M 100k" "write -P 0x5a 8387584 512" "write -P 0x33 5M 3k"
  same_as_qemu qcow a.qcow --key-file k1
  mount_img --key-file k1 a.qcow "$MNT"
  grep -q '^  encryption: aes$' "$MNT/info"
  unmount_img
}

@test "no key: exit 2 and one line saying a key is needed; a wrong LUKS key: exit 2, one line" {
  enc_create qcow2 luks l.qcow2 1M
  enc_create qcow2 aes a.qcow2 1M
  enc_create qcow aes a.qcow 1M
  run "$IMGFUSE" --foreground l.qcow2 "$MNT" </dev/null
  fails_with 2 "imgfuse: l.qcow2: encrypted qcow2 image (LUKS): a key is needed (--key-file FILE or --passphrase-fd N)"
  run "$IMGFUSE" --foreground a.qcow2 "$MNT" </dev/null
  fails_with 2 "imgfuse: a.qcow2: encrypted qcow2 image (AES): a key is needed (--key-file FILE or --passphrase-fd N)"
  run "$IMGFUSE" --foreground a.qcow "$MNT" </dev/null
  fails_with 2 "imgfuse: a.qcow: encrypted qcow image (AES): a key is needed (--key-file FILE or --passphrase-fd N)"
  run "$IMGFUSE" --foreground --key-file k2 l.qcow2 "$MNT"
  fails_with 2 "imgfuse: l.qcow2: no key slot opens with the key given"
  run "$IMGFUSE" hash l.qcow2 </dev/null
  fails_with 2 "imgfuse: l.qcow2: encrypted qcow2 image (LUKS): a key is needed (--key-file FILE or --passphrase-fd N)"
}

# rw_round FMT FILE: fio with 4 jobs and verification through a --rw mount, then a marker; qemu-img reads
# the same plaintext, the marker is not in the file.
rw_round() {
  local fmt=$1 f=$2
  mount_img --rw --key-file k1 "$f" "$MNT"
  fio_crc32c --rw=randrw --bsrange=512-64k --size=4M --numjobs=4 --offset_increment=4M --randseed=5
  printf 'MARKER-qcrypt-5e1d' | dd of="$MNT/disk.raw" bs=1 seek=12345679 conv=notrunc status=none
  cp "$MNT/disk.raw" seen.raw
  unmount_img
  grep -c 'MARKER-qcrypt-5e1d' seen.raw
  ! grep -q 'MARKER-qcrypt-5e1d' "$f" || false
  qconvert "$fmt" "$f" ref.raw
  cmp seen.raw ref.raw
}

@test "--rw on qcow2 LUKS: fio with 4 jobs and verification; qemu-img reads the same plaintext, check is clean, a marker is not in the file" {
  enc_create qcow2 luks w.qcow2 16M
  qio qcow2 w.qcow2 "write -P 0x77 1M 2M"
  rw_round qcow2 w.qcow2
  check_clean_enc w.qcow2
}

@test "--rw on qcow2 AES and qcow AES: the same" {
  enc_create qcow2 aes w.qcow2 16M
  qio qcow2 w.qcow2 "write -P 0x77 1M 2M"
  rw_round qcow2 w.qcow2
  check_clean_enc w.qcow2
  enc_create qcow aes w.qcow 16M
  qio qcow w.qcow "write -P 0x77 1M 2M"
  rw_round qcow w.qcow
}

@test "an encrypted overlay on a plain base and a plain overlay on an encrypted base: reads and partial-cluster writes equal qemu's" {
  qemu-img create -q -f qcow2 base.qcow2 4M
  qemu-io -f qcow2 -c "write -P 0x61 0 4M" base.qcow2 >/dev/null
  enc_create qcow2 luks top.qcow2 4M "backing_file=base.qcow2,backing_fmt=qcow2"
  qio qcow2 top.qcow2 "write -P 0x62 64k 4k"
  mount_img --rw --key-file k1 top.qcow2 "$MNT"
  printf 'in the middle of a base cluster' | dd of="$MNT/disk.raw" bs=1 seek=$((2 * 1048576 + 1000)) conv=notrunc status=none
  cp "$MNT/disk.raw" seen.raw
  unmount_img
  qconvert qcow2 top.qcow2 ref.raw
  cmp seen.raw ref.raw
  check_clean_enc top.qcow2
  ! grep -q 'in the middle of a base' top.qcow2 || false

  enc_create qcow2 aes ebase.qcow2 4M
  qio qcow2 ebase.qcow2 "write -P 0x71 0 4M"
  qemu-img create -q -f qcow2 -b ebase.qcow2 -F qcow2 ptop.qcow2 4M
  mount_img --rw --key-file k1 ptop.qcow2 "$MNT"
  printf 'plain top' | dd of="$MNT/disk.raw" bs=1 seek=70000 conv=notrunc status=none
  cp "$MNT/disk.raw" seen2.raw
  unmount_img
  qemu-img convert $SECRET --image-opts "driver=qcow2,file.filename=ptop.qcow2,backing.encrypt.key-secret=s0" -O raw ref2.raw
  cmp seen2.raw ref2.raw
  grep -q 'plain top' ptop.qcow2
}

@test "--overlay over an encrypted qcow2: the image is untouched, the overlay holds the writes" {
  enc_create qcow2 luks l.qcow2 4M
  qio qcow2 l.qcow2 "write -P 0x44 0 4M"
  local before; before=$(sha256sum < l.qcow2)
  mount_img --overlay ov.qcow2 --key-file k1 l.qcow2 "$MNT"
  printf 'overlay bytes' | dd of="$MNT/disk.raw" bs=1 seek=3000 conv=notrunc status=none
  cp "$MNT/disk.raw" seen.raw
  unmount_img
  [ "$(sha256sum < l.qcow2)" = "$before" ]
  qemu-img convert $SECRET --image-opts "driver=qcow2,file.filename=ov.qcow2,backing.encrypt.key-secret=s0" -O raw ref.raw
  cmp seen.raw ref.raw
}

@test "an internal snapshot of an encrypted qcow2 (qemu-img snapshot -c): snapshots/NAME/disk.raw equals qemu's" {
  enc_create qcow2 luks s.qcow2 4M
  qio qcow2 s.qcow2 "write -P 0x10 0 2M"
  qemu-img snapshot $SECRET --image-opts "$(opts qcow2 s.qcow2)" -c snap1
  qio qcow2 s.qcow2 "write -P 0x20 1M 2M"
  qconvert qcow2 s.qcow2 snap.raw -l snapshot.name=snap1
  qconvert qcow2 s.qcow2 now.raw
  mount_img --key-file k1 s.qcow2 "$MNT"
  cmp "$MNT/snapshots/snap1/disk.raw" snap.raw
  cmp "$MNT/disk.raw" now.raw
  unmount_img
}

@test "hash and convert take the key: the digest and the bytes equal qemu's plaintext" {
  enc_create qcow2 luks l.qcow2 4M
  qio qcow2 l.qcow2 "write -P 0x5c 100k 1M"
  qconvert qcow2 l.qcow2 ref.raw
  run "$IMGFUSE" hash --key-file k1 l.qcow2
  [ "$status" -eq 0 ]
  [ "${output%% *}" = "$(sha256sum < ref.raw | cut -d' ' -f1)" ]
  "$IMGFUSE" convert --key-file k1 -O raw l.qcow2 out.raw
  cmp out.raw ref.raw
  run "$IMGFUSE" convert -O raw l.qcow2 out2.raw </dev/null
  [ "$status" -ne 0 ]
  [[ "$output" == *"a key is needed"* ]]
}

# patch_be64 FILE OFFSET VALUE
patch_be64() { python3 -c 'import struct,sys; f=open(sys.argv[1],"r+b"); f.seek(int(sys.argv[2])); f.write(struct.pack(">Q", int(sys.argv[3],0)))' "$@"; }

# crypto_ext_at FILE: the offset of the full disk encryption header extension's data.
crypto_ext_at() {
  python3 - "$1" <<'PY'
import struct, sys
d = open(sys.argv[1], "rb").read(65536)
off = struct.unpack(">I", d[100:104])[0]
while True:
    t, l = struct.unpack(">II", d[off:off + 8])
    if t == 0x0537be77:
        print(off + 8); break
    if t == 0:
        sys.exit(1)
    off += 8 + ((l + 7) & ~7)
PY
}

@test "hostile: a LUKS header pointer past the end of the file or over the L1 table is refused with one line" {
  enc_create qcow2 luks h.qcow2 1M
  local at l1; at=$(crypto_ext_at h.qcow2)
  l1=$(python3 -c 'import struct,sys; print(struct.unpack(">Q", open(sys.argv[1],"rb").read(48)[40:48])[0])' h.qcow2)
  cp h.qcow2 past.qcow2; patch_be64 past.qcow2 "$at" $((1 << 40))
  refused_open past.qcow2 "LUKS header (0x10000000000 + " --key-file k1
  [[ "$output" == *"bytes) lies outside the file or is too large" ]]
  cp h.qcow2 big.qcow2; patch_be64 big.qcow2 $((at + 8)) $((1 << 62))
  refused_open big.qcow2 "lies outside the file or is too large" --key-file k1
  cp h.qcow2 over.qcow2; patch_be64 over.qcow2 "$at" "$l1"
  refused_open over.qcow2 "overlaps the L1 table" --key-file k1
  cp h.qcow2 hdr.qcow2; patch_be64 hdr.qcow2 "$at" 0
  refused_open hdr.qcow2 "overlaps the image header" --key-file k1
}

@test "imgfuse check counts the LUKS header's clusters (no leaks, -r leaks keeps them); mkdir snapshots/NAME keeps the header" {
  enc_create qcow2 luks c.qcow2 4M
  qio qcow2 c.qcow2 "write -P 0x21 0 1M"
  run "$IMGFUSE" check --key-file k1 c.qcow2
  echo "$output"
  [ "$status" -eq 0 ]
  [[ "$output" == *"No errors were found on the image."* ]]
  "$IMGFUSE" check -r leaks --key-file k1 c.qcow2
  check_clean_enc c.qcow2
  mount_img --rw --key-file k1 c.qcow2 "$MNT"
  mkdir "$MNT/snapshots/s1"
  printf 'after the snapshot' | dd of="$MNT/disk.raw" bs=1 seek=4096 conv=notrunc status=none
  cp "$MNT/disk.raw" seen.raw
  unmount_img
  check_clean_enc c.qcow2
  qconvert qcow2 c.qcow2 ref.raw
  cmp seen.raw ref.raw
  qconvert qcow2 c.qcow2 snap.raw -l snapshot.name=s1
  cmp -n 4096 snap.raw ref.raw
  ! cmp -s snap.raw ref.raw
}

@test "info without a key: qcow2 LUKS, qcow2 AES and qcow AES show their metadata, exit 0, no key slot tried (no KDF runs); mounts, hash, convert and a wrong key stay refused" {
  enc_create qcow2 luks l.qcow2 1M
  enc_create qcow2 aes a.qcow2 1M
  enc_create qcow aes a.qcow 1M
  local f
  for f in l.qcow2 a.qcow2 a.qcow; do
    run "$IMGFUSE" info "$f" </dev/null
    echo "$output"
    [ "$status" -eq 0 ]
    [[ "$output" == *"  encrypted: yes (no key given; data not readable)"* && "$output" != *"opened_key_slot"* ]]
    run "$IMGFUSE" --foreground "$f" "$MNT" </dev/null
    [ "$status" -eq 2 ]
    [[ "$output" == *": a key is needed (--key-file FILE or --passphrase-fd N)" ]]
    not_mounted "$MNT"
  done
  [[ "$("$IMGFUSE" info l.qcow2)" == *"  encryption: luks"*"  encryption_cipher: aes-xts-plain64"* ]]
  [[ "$("$IMGFUSE" info a.qcow2)" == *"  encryption: aes"* ]]
  [[ "$("$IMGFUSE" info a.qcow)" == *"  encryption: aes"* ]]
  # with the key: the slot that opened, no note
  run "$IMGFUSE" info --key-file k1 l.qcow2
  [ "$status" -eq 0 ]
  [[ "$output" == *"  opened_key_slot: 0"* && "$output" != *"encrypted: yes"* ]]
  run "$IMGFUSE" info --key-file k2 l.qcow2
  fails_with 2 "imgfuse: l.qcow2: no key slot opens with the key given"
  run "$IMGFUSE" convert -O raw a.qcow2 out.raw </dev/null
  fails_with 2 "imgfuse: a.qcow2: encrypted qcow2 image (AES): a key is needed (--key-file FILE or --passphrase-fd N)"
  [ ! -e out.raw ]
  # key slot 0 of the embedded LUKS header at 20 million PBKDF2 iterations (about 10 s of CPU, what a long
  # iter-time makes): info without a key is done within a 2 s CPU limit; with the key the limit stops it
  cp l.qcow2 h.qcow2
  python3 -c 'import struct, sys; d = open(sys.argv[1], "rb").read(); o = d.index(b"LUKS\xba\xbe", 512); f = open(sys.argv[1], "r+b"); f.seek(o + 212); f.write(struct.pack(">I", 20000000))' h.qcow2
  run prlimit --cpu=2 -- "$IMGFUSE" info h.qcow2 </dev/null
  [ "$status" -eq 0 ]
  [[ "$output" == *"encrypted: yes (no key given; data not readable)"* ]]
  run prlimit --cpu=2 -- "$IMGFUSE" info --key-file k1 h.qcow2
  echo "status $status"
  [ "$status" -ne 0 ]
}
