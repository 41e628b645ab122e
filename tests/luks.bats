#!/usr/bin/env bats
# SPDX-License-Identifier: MIT
# luks.bats - the luks driver on real mounts. LUKS1 containers made by qemu-img (plaintext written with
# qemu-io) and by cryptsetup luksFormat read byte for byte like `qemu-img convert` given the secret; LUKS2
# containers made by `cryptsetup reencrypt --encrypt` over a plaintext file (no dm-crypt needed) with
# argon2id and pbkdf2 key slots, 512 and 4096-byte sectors, show that plaintext; every key slot opens
# with --key-slot; wrong keys, missing keys, unsupported ciphers and LUKS2 features are refused with
# one line and exit 2; hostile metadata (argon2 costs of a TiB, billions of iterations, deep JSON) is
# refused in bounded time and memory; --rw mounts (fio, 4 jobs, verify) write ciphertext that qemu-img
# reads back, luksDump still accepts, and in which a marker written through the mount never appears.
# serpent and twofish containers (qemu-img's) read and written through nettle equal qemu-img's view.
# info without a key shows the header, runs no KDF (a 20-million-iteration slot under a 2 s CPU limit).

load helpers

setup() { setup_tmp; cd "$TMP"; printf 'pass one' > k1; printf 'second pass' > k2; printf 'third' > k3; }
teardown() { teardown_tmp; }

SECRET="--object secret,id=s0,file=k1"

# luks1_qemu FILE SIZE [OPTS]: a LUKS1 container made by qemu-img with key k1 and creation options OPTS
# (qemu times its PBKDF on this CPU and fails now and then on a busy machine, hence the tries).
luks1_qemu() {
  qemu_create_retry "$1" -f luks $SECRET -o "key-secret=s0,iter-time=10${3:+,$3}" "$1" "$2"
}

# qio FILE COMMAND...: qemu-io on a LUKS container opened with k1.
qio() {
  local f=$1 c; shift
  for c in "$@"; do
    qemu-io $SECRET --image-opts "driver=luks,key-secret=s0,file.filename=$f" -c "$c" >/dev/null
  done
}

# qconvert FILE OUT: the plaintext of a LUKS container as qemu-img sees it (key k1).
qconvert() { qemu-img convert $SECRET --image-opts "driver=luks,key-secret=s0,file.filename=$1" -O raw "$2"; }

# luks2_reencrypt FILE PLAIN_MB [cryptsetup options]: FILE becomes a LUKS2 container (key k1) whose payload
# starts with the first PLAIN_MB - 8 MiB of the random plaintext plain.bin (cryptsetup moves the data to
# make room for the 4 MiB header; the last 4 MiB of the payload are not plaintext the test wrote).
luks2_reencrypt() {
  local f=$1 mb=$2; shift 2
  head -c $((mb << 20)) /dev/urandom > plain.bin
  cp plain.bin "$f"
  cryptsetup reencrypt -q --encrypt --type luks2 --reduce-device-size 8M --key-file k1 "$@" "$f"
}

# shows_plain FILE KNOWN_BYTES [options]: the mount's size is the file's less the 4 MiB header and its first
# KNOWN_BYTES are plain.bin's.
shows_plain() {
  local f=$1 n=$2; shift 2
  mount_img "$@" "$f" "$MNT"
  [ "$(stat -c %s "$MNT/disk.raw")" -eq $(( $(stat -c %s "$f") - (4 << 20) )) ]
  cmp -n "$n" "$MNT/disk.raw" plain.bin
  unmount_img
}

@test "LUKS1 made by qemu-img: the mount equals qemu-img convert, with --key-file, --passphrase-fd, -f luks and -o" {
  luks1_qemu a.luks 8M
  qio a.luks "write -P 0xab 0 1M" "write -P 0x12 3M 100k" "write -P 0x5a 8387584 512"
  qconvert a.luks ref.raw
  mount_img --key-file k1 a.luks "$MNT"
  cmp "$MNT/disk.raw" ref.raw
  unmount_img
  mount_img -f luks --passphrase-fd 5 a.luks "$MNT" 5< <(printf 'pass one\nignored\n')
  cmp "$MNT/disk.raw" ref.raw
  unmount_img
  mount_img -o key-file=k1,luks.key-slot=0 a.luks "$MNT"
  cmp "$MNT/disk.raw" ref.raw
  unmount_img
  run "$IMGFUSE" info --key-file k1 a.luks
  [ "$status" -eq 0 ]
  [[ "$output" == *"format: luks"* && "$output" == *"cipher: aes-xts-plain64"* && "$output" == *"opened_key_slot: 0"* ]]
}

@test "LUKS1 made by cryptsetup (aes-cbc-essiv:sha256, sha1; aes-cbc-plain64, sha512), three key slots: each opens with --key-slot" {
  truncate -s 6M c.luks
  cryptsetup luksFormat -q --type luks1 --cipher aes-cbc-essiv:sha256 --key-size 256 --hash sha1 \
    --pbkdf-force-iterations 1000 --key-file k1 c.luks
  cryptsetup luksAddKey -q --pbkdf-force-iterations 1000 --key-file k1 c.luks k2
  cryptsetup luksAddKey -q --pbkdf-force-iterations 1000 --key-file k1 --new-key-slot 5 c.luks k3
  qio c.luks "write -P 0x61 0 64k" "write -P 0x62 1M 1M" "write -P 0x63 3M 512"
  qconvert c.luks ref.raw
  local k slot
  for k in "k1 0" "k2 1" "k3 5"; do
    set -- $k
    mount_img --key-file "$1" --key-slot "$2" c.luks "$MNT"
    cmp "$MNT/disk.raw" ref.raw
    grep -q "opened_key_slot: $2" "$MNT/info"
    unmount_img
  done
  truncate -s 6M p.luks
  cryptsetup luksFormat -q --type luks1 --cipher aes-cbc-plain64 --key-size 128 --hash sha512 \
    --pbkdf-force-iterations 1000 --key-file k2 p.luks
  printf 'pass one' | cryptsetup luksAddKey -q --pbkdf-force-iterations 1000 --key-file k2 p.luks -
  qio p.luks "write -P 0x71 4k 60k"
  qconvert p.luks ref2.raw
  mount_img --key-file k1 p.luks "$MNT"
  cmp "$MNT/disk.raw" ref2.raw
  grep -q "opened_key_slot: 1" "$MNT/info"
  unmount_img
}

@test "LUKS2 made by cryptsetup reencrypt --encrypt: argon2id and pbkdf2 slots, 512 and 4096-byte sectors, each slot opens" {
  luks2_reencrypt a2.img 16 --pbkdf argon2id --pbkdf-memory 16384 --pbkdf-force-iterations 4 --pbkdf-parallel 2
  cryptsetup luksAddKey -q --key-file k1 --pbkdf pbkdf2 --hash sha512 --pbkdf-force-iterations 1000 a2.img k2
  cryptsetup luksAddKey -q --key-file k1 --pbkdf argon2i --pbkdf-memory 8192 --pbkdf-force-iterations 4 \
    --new-key-slot 7 a2.img k3
  shows_plain a2.img $((8 << 20)) --key-file k1
  shows_plain a2.img $((8 << 20)) --key-file k2 --key-slot 1
  shows_plain a2.img $((8 << 20)) --key-file k3 --key-slot 7
  run "$IMGFUSE" info --key-file k3 a2.img
  [[ "$output" == *"key_slot_0: argon2id, time 4, memory 16384 KiB, 2 threads"* ]]
  [[ "$output" == *"key_slot_1: pbkdf2-sha512, 1000 iterations"* ]]
  [[ "$output" == *"key_slot_7: argon2i, time 4, memory 8192 KiB"* ]]
  [[ "$output" == *"opened_key_slot: 7"* && "$output" == *"header_copies: primary valid, secondary valid"* ]]
  luks2_reencrypt s4.img 12 --sector-size 4096 --pbkdf pbkdf2 --hash sha256 --pbkdf-force-iterations 1000
  shows_plain s4.img $((4 << 20)) --key-file k1
  luks2_reencrypt e.img 12 --cipher aes-cbc-essiv:sha256 --key-size 256 --pbkdf pbkdf2 --pbkdf-force-iterations 1000
  shows_plain e.img $((4 << 20)) --key-file k1
}

@test "a wrong key, a slot the key does not open, an inactive slot, no key: exit 2 and one line" {
  luks1_qemu a.luks 4M
  luks2_reencrypt b.img 12 --pbkdf pbkdf2 --pbkdf-force-iterations 1000
  cryptsetup luksAddKey -q --key-file k1 --pbkdf pbkdf2 --pbkdf-force-iterations 1000 b.img k2
  run "$IMGFUSE" a.luks "$MNT"
  fails_with 2 "imgfuse: a.luks: LUKS encrypted container: a key is needed (--key-file FILE or --passphrase-fd N)"
  run "$IMGFUSE" hash b.img </dev/null
  fails_with 2 "imgfuse: b.img: LUKS encrypted container: a key is needed (--key-file FILE or --passphrase-fd N)"
  run "$IMGFUSE" --key-file k2 a.luks "$MNT"
  fails_with 2 "imgfuse: a.luks: no key slot opens with the key given"
  run "$IMGFUSE" --key-file k2 --key-slot 0 b.img "$MNT"
  fails_with 2 "imgfuse: b.img: key slot 0 does not open with the key given"
  run "$IMGFUSE" --key-file k1 --key-slot 3 b.img "$MNT"
  fails_with 2 "imgfuse: b.img: key slot 3 is not active"
  run "$IMGFUSE" --key-file k1 --key-slot 32 b.img "$MNT"
  fails_with 2 "imgfuse: b.img: luks option 'key-slot': 32 is not a key slot (0..31)"
  run "$IMGFUSE" --key-file nonexistent a.luks "$MNT"
  fails_with 2 "imgfuse: nonexistent: cannot open the key file: No such file or directory"
  run "$IMGFUSE" --passphrase-fd 77 a.luks "$MNT"
  fails_with 2 "imgfuse: --passphrase-fd: '77' is not an open file descriptor"
}

@test "unsupported ciphers and LUKS2 features are refused by name" {
  luks1_qemu s.luks 1M cipher-alg=cast5-128,cipher-mode=cbc,ivgen-alg=plain64
  run "$IMGFUSE" --key-file k1 s.luks "$MNT"
  fails_with 2 "imgfuse: s.luks: LUKS cipher 'cast5-cbc-plain64' is not supported (aes, serpent and twofish in xts-plain64, cbc-essiv:sha256 and cbc-plain64 are)"
  luks1_qemu t.luks 1M cipher-alg=twofish-128,cipher-mode=cbc,ivgen-alg=plain
  python3 -c 'import sys; f=open(sys.argv[1],"r+b"); f.seek(40); f.write(b"cbc-benbi".ljust(32,b"\0"))' t.luks
  run "$IMGFUSE" --key-file k1 t.luks "$MNT"
  fails_with 2 "imgfuse: t.luks: LUKS cipher 'twofish-cbc-benbi' is not supported (aes, serpent and twofish in xts-plain64, cbc-essiv:sha256 and cbc-plain64 are)"
  # reencryption in progress: cryptsetup's --init-only leaves the container so
  head -c 12M /dev/zero > r.img
  cryptsetup reencrypt -q --encrypt --init-only --type luks2 --reduce-device-size 8M --key-file k1 \
    --pbkdf pbkdf2 --pbkdf-force-iterations 1000 r.img
  run "$IMGFUSE" --key-file k1 r.img "$MNT"
  [ "$status" -eq 2 ] && [ "${#lines[@]}" -eq 1 ]
  [[ "${lines[0]}" == "imgfuse: r.img: LUKS2 "*"(reencryption in progress)" ]]
  luks2_reencrypt i.img 12 --pbkdf pbkdf2 --pbkdf-force-iterations 1000
  cp i.img h.img
  python3 "$BATS_TEST_DIRNAME/luks2-edit.py" i.img 'j["segments"]["0"]["integrity"] = {"type": "hmac(sha256)", "journal_encryption": "none", "journal_integrity": "none"}'
  run "$IMGFUSE" --key-file k1 i.img "$MNT"
  fails_with 2 "imgfuse: i.img: LUKS2 integrity protection (dm-integrity) is not supported"
  python3 "$BATS_TEST_DIRNAME/luks2-edit.py" h.img 'j["keyslots"]["0"]["kdf"]["hash"] = "whirlpool"'
  run "$IMGFUSE" --key-file k1 h.img "$MNT"
  fails_with 2 "imgfuse: h.img: LUKS pbkdf2 hash 'whirlpool' is not supported (sha1, sha256 and sha512 are)"
}

@test "hostile LUKS2 metadata is refused in bounded time and memory; a damaged primary copy is read from the secondary" {
  luks2_reencrypt base.img 12 --pbkdf argon2id --pbkdf-memory 8192 --pbkdf-force-iterations 4
  local lim="prlimit --as=$((512 << 20)) -- timeout 20"
  # (ASan reserves terabytes of address space: its own RSS limit instead)
  [ -z "${IMGFUSE_ASAN:-}" ] || lim="env ASAN_OPTIONS=${ASAN_OPTIONS:-}:hard_rss_limit_mb=512 timeout 20"
  cp base.img m.img
  python3 "$BATS_TEST_DIRNAME/luks2-edit.py" m.img 'j["keyslots"]["0"]["kdf"]["memory"] = 1 << 30'
  run $lim "$IMGFUSE" info --key-file k1 m.img
  fails_with 2 "imgfuse: m.img: key slot 0: argon2id memory cost 1 TiB is above the limit of 4 GiB"
  cp base.img it.img
  python3 "$BATS_TEST_DIRNAME/luks2-edit.py" it.img 'j["digests"]["0"]["iterations"] = 4000000000'
  run $lim "$IMGFUSE" info --key-file k1 it.img
  fails_with 2 "imgfuse: it.img: digest: pbkdf2 iterations 4000000000 are above the limit of 20000000"
  cp base.img n.img
  python3 "$BATS_TEST_DIRNAME/luks2-edit.py" n.img pass --raw-json "$(python3 -c 'print("[" * 5000 + "]" * 5000)')"
  run $lim "$IMGFUSE" info --key-file k1 n.img
  [ "$status" -eq 2 ] && [ "${#lines[@]}" -eq 1 ]
  [ "${lines[0]}" = "imgfuse: n.img: LUKS2 metadata: bad JSON at line 1: maximum parsing depth reached near '['" ]
  cp base.img big.img   # a header size field beyond 4 MiB in both copies
  python3 - <<'PY'
import struct
d = bytearray(open("big.img", "rb").read())
d[8:16] = struct.pack(">Q", 1 << 40); d[16384 + 8:16384 + 16] = struct.pack(">Q", 1 << 40)
open("big.img", "wb").write(d)
PY
  run $lim "$IMGFUSE" info --key-file k1 big.img
  fails_with 2 "imgfuse: big.img: LUKS2 header: no valid copy (primary: bad header size, secondary: bad header size)"
  cp base.img p.img
  python3 "$BATS_TEST_DIRNAME/luks2-edit.py" p.img pass --bad-csum 0
  mount_img --key-file k1 p.img "$MNT"
  grep -q "header_copies: primary bad checksum, secondary valid" "$MNT/info"
  cmp -n $((4 << 20)) "$MNT/disk.raw" plain.bin
  unmount_img
  python3 "$BATS_TEST_DIRNAME/luks2-edit.py" p.img pass --bad-csum 1
  run "$IMGFUSE" info --key-file k1 p.img
  fails_with 2 "imgfuse: p.img: LUKS2 header: no valid copy (primary: bad checksum, secondary: bad checksum)"
}

@test "--rw on LUKS1: fio with 4 jobs and verification; qemu-img reads the same plaintext; luksDump accepts it; a marker is not in the file" {
  luks1_qemu w.luks 64M
  mount_img --rw --key-file k1 w.luks "$MNT"
  fio_crc32c --rw=randwrite --bs=4k --size=16M --numjobs=4 --offset_increment=16M --direct=1 --randseed=7
  printf 'MARKER-7f3a9c-plaintext-never-on-disk' | dd of="$MNT/disk.raw" bs=1 seek=123457 conv=notrunc status=none
  cp "$MNT/disk.raw" seen.raw
  unmount_img
  qconvert w.luks ref.raw
  cmp seen.raw ref.raw
  grep -c 'MARKER-7f3a9c' seen.raw
  ! grep -q 'MARKER-7f3a9c' w.luks || false
  cryptsetup luksDump w.luks > dump.txt
  grep -q 'Version:.*1' dump.txt
}

@test "--rw on LUKS2 (4096-byte sectors, unaligned writes): read back after remount; luksDump accepts it; a marker is not in the file" {
  luks2_reencrypt w2.img 24 --sector-size 4096 --pbkdf pbkdf2 --pbkdf-force-iterations 1000
  mount_img --rw --key-file k1 w2.img "$MNT"
  fio_crc32c --rw=randrw --bsrange=512-64k --size=4M --numjobs=4 --offset_increment=4M --randseed=3
  printf 'MARKER-LUKS2-b81e' | dd of="$MNT/disk.raw" bs=1 seek=17000001 conv=notrunc status=none
  cp "$MNT/disk.raw" seen.raw
  unmount_img
  ! grep -q 'MARKER-LUKS2-b81e' w2.img || false
  cryptsetup luksDump w2.img | grep -q 'sector: 4096'
  mount_img --key-file k1 w2.img "$MNT"
  cmp "$MNT/disk.raw" seen.raw
  unmount_img
}

@test "the master key is locked in memory and left out of core dumps; no key material in info, info.json or the audit log" {
  luks1_qemu a.luks 4M
  mount_img --key-file k1 --audit-log audit.jsonl a.luks "$MNT"
  local pid=$DAEMON_PID
  # the key pages are marked "dd" (MADV_DONTDUMP); locked (VmLck) except under ASan, whose mlock does nothing
  grep -q 'VmFlags:.* dd' /proc/$pid/smaps
  if [ -z "${IMGFUSE_ASAN:-}" ]; then
    grep -q 'VmLck:[[:space:]]*[1-9]' /proc/$pid/status
    grep -B20 'VmFlags:.* dd' /proc/$pid/smaps | grep -q '^Locked:[[:space:]]*[1-9]'
  fi
  ! grep -q 'pass one' "$MNT/info" "$MNT/info.json" || false
  unmount_img
  ! grep -q 'pass one' audit.jsonl || false
  grep -q 'key-file' audit.jsonl
}

@test "without a key on a terminal: a no-echo prompt names the image; info and a mount open with what was typed" {
  luks1_qemu a.luks 4M
  qio a.luks "write -P 0x3e 0 64k"
  qconvert a.luks ref.raw
  (sleep 1; printf 'pass one\n') | script -qec "$IMGFUSE info a.luks" /dev/null > info.out
  cat -A info.out
  head -1 info.out | grep -q '^Passphrase for a.luks: '
  grep -q 'format: luks' info.out
  ! grep -q 'pass one' info.out || false
  (sleep 1; printf 'pass one\n') | script -qec "$IMGFUSE a.luks $MNT" /dev/null > mount.out
  ! grep -q 'pass one' mount.out || false
  cmp "$MNT/disk.raw" ref.raw
  "$IMGFUSE" unmount "$MNT"
  run bash -c "(sleep 1; printf 'wrong\n') | script -qec '$IMGFUSE info a.luks' /dev/null"
  [ "$status" -eq 2 ]
  [[ "$output" == *"imgfuse: a.luks: no key slot opens with the key given"* ]]
}

# cryptsetup on this kind of machine cannot make serpent or twofish containers (its userspace crypto has
# neither and it falls back to dm-crypt): qemu-img makes them, qemu-io writes the plaintext, qemu-img
# convert is the oracle, in both directions.
@test "serpent and twofish (nettle) in xts-plain64, cbc-essiv:sha256, cbc-plain64, cbc-plain: reads equal qemu-img, --rw writes read back by qemu-img" {
  local o i=0
  for o in cipher-alg=serpent-256 cipher-alg=twofish-256 cipher-alg=serpent-128 \
           cipher-alg=twofish-128,cipher-mode=cbc,ivgen-alg=essiv,ivgen-hash-alg=sha256 \
           cipher-alg=serpent-256,cipher-mode=cbc,ivgen-alg=plain64 cipher-alg=twofish-256,cipher-mode=cbc,ivgen-alg=plain; do
    i=$((i + 1))
    echo "options: $o"
    luks1_qemu "n$i.luks" 2M "$o"
    qio "n$i.luks" "write -P 0x3c 0 64k" "write -P 0xc3 1M 512" "write -P 0x11 2096640 512"
    qconvert "n$i.luks" ref.raw
    mount_img --key-file k1 "n$i.luks" "$MNT"
    cmp "$MNT/disk.raw" ref.raw
    unmount_img
    head -c $((2 << 20)) /dev/urandom > data.bin
    mount_img --rw --key-file k1 "n$i.luks" "$MNT"
    dd if=data.bin of="$MNT/disk.raw" bs=64k conv=notrunc,fsync status=none
    unmount_img
    qconvert "n$i.luks" back.raw
    cmp back.raw data.bin
  done
  run "$IMGFUSE" info --key-file k1 n5.luks
  [[ "$output" == *"cipher: serpent-cbc-plain64"* && "$output" == *"key_bits: 256"* ]]
}

# set_iters FILE HDR_OFFSET ITERS: LUKS1 key slot 0's PBKDF2 iteration count (big-endian, at byte 212 of the
# header) set to ITERS, as an --iter-time of many seconds would make it, without spending them here.
set_iters() {
  python3 -c 'import struct, sys; f = open(sys.argv[1], "r+b"); f.seek(int(sys.argv[2]) + 212); f.write(struct.pack(">I", int(sys.argv[3])))' "$@"
}

@test "info without a key: LUKS1 and LUKS2 show their header, exit 0, no key slot tried (no KDF runs); data, mounts and a wrong key stay refused" {
  luks1_qemu a.luks 4M
  luks2_reencrypt b.img 12 --pbkdf pbkdf2 --pbkdf-force-iterations 1000
  run "$IMGFUSE" info a.luks </dev/null
  echo "$output"
  [ "$status" -eq 0 ]
  [[ "$output" == *"  luks_version: 1"* && "$output" == *"  cipher: aes-xts-plain64"* ]]
  [[ "$output" == *"  key_slot_0: pbkdf2-sha256, "* ]]
  [[ "$output" == *"  encrypted: yes (no key given; data not readable)"* ]]
  [[ "$output" != *"opened_key_slot"* ]]
  run "$IMGFUSE" info b.img </dev/null
  echo "$output"
  [ "$status" -eq 0 ]
  [[ "$output" == *"  luks_version: 2"* && "$output" == *"  encrypted: yes (no key given; data not readable)"* ]]
  [ "$("$IMGFUSE" info --output=json a.luks | python3 -c 'import json, sys; print(json.load(sys.stdin)["imgfuse"]["layers"][0]["encrypted"])')" = \
    "yes (no key given; data not readable)" ]
  # with the key, info still opens a slot and says which
  run "$IMGFUSE" info --key-file k1 a.luks
  [ "$status" -eq 0 ]
  [[ "$output" == *"  opened_key_slot: 0"* && "$output" != *"encrypted: yes"* ]]
  # a slot costing 20 million PBKDF2 iterations (about 10 s of CPU): info without a key is done within a
  # 2 s CPU limit and never reads the slot's key material (4096 + 256000 bytes); with the key the same
  # limit stops the KDF (SIGXCPU), so the limit would catch a KDF run
  cp a.luks h.luks
  set_iters h.luks 0 20000000
  # (LeakSanitizer cannot run under ptrace: an ASan build is traced with leak detection off)
  ASAN_OPTIONS=${ASAN_OPTIONS:+$ASAN_OPTIONS:}detect_leaks=0 run prlimit --cpu=2 -- \
    strace -f -e trace=pread64 -o trace.log "$IMGFUSE" info h.luks </dev/null
  [ "$status" -eq 0 ]
  [[ "$output" == *"encrypted: yes (no key given; data not readable)"* ]]
  ! grep -E 'pread64\(.*, 256000, 4096\)' trace.log || false
  run prlimit --cpu=2 -- "$IMGFUSE" info --key-file k1 h.luks
  echo "status $status"
  [ "$status" -ne 0 ]
  # a wrong key given to info is checked; a mount, hash and convert without a key are refused
  run "$IMGFUSE" info --key-file k2 a.luks
  fails_with 2 "imgfuse: a.luks: no key slot opens with the key given"
  run "$IMGFUSE" --foreground a.luks "$MNT" </dev/null
  fails_with 2 "imgfuse: a.luks: LUKS encrypted container: a key is needed (--key-file FILE or --passphrase-fd N)"
  run "$IMGFUSE" convert -O raw a.luks out.raw </dev/null
  fails_with 2 "imgfuse: a.luks: LUKS encrypted container: a key is needed (--key-file FILE or --passphrase-fd N)"
  [ ! -e out.raw ]
}
