#!/usr/bin/env bats
# SPDX-License-Identifier: MIT
# luks-create.bats - `imgfuse create -f luks` and `-f qcow2 -o encrypt.format=luks`. LUKS1 containers
# imgfuse makes, with each cipher, mode, IV generator and hash it offers, are accepted by cryptsetup
# (luksDump, --test-passphrase) and by qemu-img, and what a --rw mount writes into them qemu-img reads
# back byte for byte; a wrong key is refused with exit 2 and one line; the passphrase is never in the
# file, the master key never in info or the audit log. qcow2 images with a LUKS header made by imgfuse
# check clean under qemu-img and carry data through qemu-io.

load helpers

setup() { setup_tmp; cd "$TMP"; printf 'pass one' > k1; printf 'second pass' > k2; }
teardown() { teardown_tmp; }

SECRET="--object secret,id=s0,file=k1"

# qconvert FILE OUT: the plaintext of a LUKS container as qemu-img sees it (key k1).
qconvert() { qemu-img convert $SECRET --image-opts "driver=luks,key-secret=s0,file.filename=$1" -O raw "$2"; }

# written_back FILE [create options]: a container made by imgfuse (key k1), written through a --rw mount,
# reads back under qemu-img as the mount wrote it; cryptsetup accepts its header and key.
written_back() {
  local f=$1; shift
  "$IMGFUSE" create -f luks --key-file k1 -o "iter-time=10${1:+,$1}" "$f" 3M
  cryptsetup luksDump "$f" >dump.txt
  # cryptsetup checks serpent and twofish keys through dm-crypt only, which this machine lacks
  [[ "${1:-}" == *serpent* || "${1:-}" == *twofish* ]] || cryptsetup open --test-passphrase --key-file k1 "$f"
  head -c $((3 << 20)) /dev/urandom > data.bin
  mount_img --rw --key-file k1 "$f" "$MNT"
  [ "$(stat -c %s "$MNT/disk.raw")" -eq $((3 << 20)) ]
  dd if=data.bin of="$MNT/disk.raw" bs=64k conv=notrunc,fsync status=none
  unmount_img
  qconvert "$f" back.raw
  cmp back.raw data.bin
}

@test "create -f luks: default aes-xts-plain64 sha256, 512-bit key; cryptsetup and qemu-img accept it; qemu-img reads what a --rw mount wrote" {
  written_back d.luks
  grep -Eq '^Version:\s*1$' dump.txt
  grep -Eq '^Cipher name:\s*aes$' dump.txt
  grep -Eq '^Cipher mode:\s*xts-plain64$' dump.txt
  grep -Eq '^Hash spec:\s*sha256$' dump.txt
  grep -Eq '^MK bits:\s*512$' dump.txt
  grep -q 'Key Slot 0: ENABLED' dump.txt
  [ "$(grep -c 'DISABLED' dump.txt)" -eq 7 ]
  run qemu-img info $SECRET --image-opts "driver=luks,key-secret=s0,file.filename=d.luks"
  [ "$status" -eq 0 ]
  [[ "$output" == *"encrypted: yes"* && "$output" == *"cipher alg: aes-256"* && "$output" == *"virtual size: 3 MiB"* ]]
  run "$IMGFUSE" info --key-file k1 d.luks
  [ "$status" -eq 0 ]
  [[ "$output" == *"cipher: aes-xts-plain64"* && "$output" == *"key_bits: 512"* && "$output" == *"opened_key_slot: 0"* ]]
}

@test "create -f luks: every AES mode, IV generator and hash imgfuse offers round-trips through a mount and qemu-img" {
  local o i=0
  for o in "cipher-alg=aes-128" "cipher-alg=aes-128,cipher-mode=cbc,ivgen-alg=plain64" \
           "cipher-alg=aes-256,cipher-mode=cbc,ivgen-alg=essiv,ivgen-hash-alg=sha256,hash-alg=sha1" \
           "cipher-alg=aes-128,cipher-mode=cbc,ivgen-alg=plain,hash-alg=sha512" \
           "cipher-mode=xts,ivgen-alg=plain,hash-alg=sha1"; do
    i=$((i + 1))
    echo "options: $o"
    written_back "c$i.luks" "$o"
  done
  grep -Eq '^Cipher mode:\s*xts-plain$' dump.txt
  grep -Eq '^Hash spec:\s*sha1$' dump.txt
}

@test "create -f luks with serpent and twofish (xts-plain64, cbc-essiv:sha256, cbc-plain64): luksDump names them, qemu-img reads what a mount wrote" {
  local o i=0
  for o in "cipher-alg=serpent-256" "cipher-alg=twofish-256" \
           "cipher-alg=serpent-128,cipher-mode=cbc,ivgen-alg=essiv" "cipher-alg=twofish-256,cipher-mode=cbc,hash-alg=sha512"; do
    i=$((i + 1))
    echo "options: $o"
    written_back "s$i.luks" "$o"
    grep -Eq "^Cipher name:\s*$(sed 's/cipher-alg=\([a-z]*\).*/\1/' <<<"$o")$" dump.txt
  done
  grep -Eq '^Cipher mode:\s*cbc-plain64$' dump.txt
  grep -Eq '^MK bits:\s*256$' dump.txt
  "$IMGFUSE" create -f qcow2 --key-file k1 -o encrypt.format=luks,encrypt.iter-time=10,encrypt.cipher-alg=twofish-256 t.qcow2 1M
  qcow2_clean t.qcow2
  qcow2_io t.qcow2 "write -P 0x7e 0 128k" "read -P 0x7e 0 128k"
}

# qemu-img aborts on LUKS1 key material that is not whole sectors (aes-192-cbc: 24 x 4000 bytes, an
# assertion in qemu 7.2, whether qemu-img or cryptsetup made the container): the oracle here is the
# master key cryptsetup unlocks and openssl's own AES-192-CBC over the payload's first two sectors.
@test "create -f luks -o cipher-alg=aes-192,cipher-mode=cbc: cryptsetup's master key decrypts what a --rw mount wrote" {
  "$IMGFUSE" create -f luks --key-file k1 -o iter-time=10,cipher-alg=aes-192,cipher-mode=cbc a.luks 1M
  cryptsetup luksDump a.luks > dump.txt
  grep -Eq '^Cipher mode:\s*cbc-plain64$' dump.txt
  grep -Eq '^MK bits:\s*192$' dump.txt
  head -c 1024 /dev/urandom > data.bin
  mount_img --rw --key-file k1 a.luks "$MNT"
  dd if=data.bin of="$MNT/disk.raw" bs=1024 conv=notrunc,fsync status=none
  unmount_img
  local hex off
  hex=$(cryptsetup luksDump -q --dump-master-key --key-file k1 a.luks | sed -n '/^MK dump:/,$p' | sed 's/^MK dump://' | tr -d ' \t\n')
  off=$(( $(sed -n 's/^Payload offset:\s*//p' dump.txt) * 512 ))
  : > plain.bin
  for s in 0 1; do
    dd if=a.luks bs=512 skip=$(( off / 512 + s )) count=1 status=none |
      openssl enc -d -aes-192-cbc -nopad -K "$hex" -iv "$(printf '%02x' "$s")000000000000000000000000000000" >> plain.bin
  done
  cmp plain.bin data.bin
}

@test "a wrong key for a created container: exit 2 and one line; no key, a bad or unsupported option: exit 2 and one line, no file" {
  "$IMGFUSE" create -f luks --key-file k1 -o iter-time=10 a.luks 1M
  run "$IMGFUSE" info --key-file k2 a.luks
  one_line 2 "imgfuse: a.luks: no key slot opens with the key given"
  run cryptsetup open --test-passphrase --key-file k2 a.luks
  [ "$status" -ne 0 ]
  run "$IMGFUSE" create -f luks -o iter-time=10 b.luks 1M </dev/null
  [ "$status" -eq 2 ]
  [ "$output" = "imgfuse: b.luks: a new LUKS container needs a passphrase (--key-file FILE or --passphrase-fd N)" ]
  create_refusals luks b.luks <<'EOF'
--key-file k1 -o cipher-alg=cast5-128|1M|luks creation option 'cipher-alg': cipher 'cast5-128' is not supported (aes, serpent and twofish are)
--key-file k1 -o cipher-mode=ecb|1M|luks creation option 'cipher-mode': 'ecb' is not supported (xts and cbc are)
--key-file k1 -o iter-time=0|1M|luks creation option 'iter-time': '0' is not a time from 1 to 60000 ms
EOF
  run "$IMGFUSE" create -f luks --key-file k1 -o key-secret=s0 b.luks 1M
  [ "$status" -eq 2 ]
  [ "$output" = "imgfuse: s0: no --object secret,id=s0 was given" ]
  [ ! -e b.luks ]
}

@test "create -f luks --passphrase-fd: the first line is the key; -o help lists the options" {
  "$IMGFUSE" create -f luks --passphrase-fd 5 -o iter-time=10 p.luks 1M 5< <(printf 'pass one\nignored\n')
  cryptsetup open --test-passphrase --key-file k1 p.luks
  run "$IMGFUSE" create -f luks -o help
  [ "$status" -eq 0 ]
  local k
  for k in cipher-alg cipher-mode ivgen-alg ivgen-hash-alg hash-alg iter-time; do
    [[ "$output" == *"  $k="* ]]
  done
}

@test "key material: the passphrase is not in the created file; the master key is in neither info nor the audit log" {
  printf 'Unmistakable-Passphrase-7f3a' > kp
  "$IMGFUSE" create -f luks --key-file kp -o iter-time=10 m.luks 1M
  ! grep -qa 'Unmistakable-Passphrase-7f3a' m.luks
  cryptsetup luksDump -q --dump-master-key --key-file kp m.luks > mk.txt
  local hex
  hex=$(sed -n '/^MK dump:/,/^$/p' mk.txt | sed 's/^MK dump://' | tr -d ' \t\n')
  [ "${#hex}" -eq 128 ]
  printf '%s' "$hex" | xxd -r -p > mk.bin
  "$IMGFUSE" info --key-file kp m.luks > info.txt
  "$IMGFUSE" info --output=json --key-file kp m.luks > info.json
  "$IMGFUSE" hash --audit-log audit.log --key-file kp m.luks > hash.txt
  mount_img --audit-log audit2.log --key-file kp m.luks "$MNT"
  cat "$MNT/info" "$MNT/info.json" > mntinfo.txt
  unmount_img
  local f
  for f in info.txt info.json hash.txt audit.log audit2.log mntinfo.txt; do
    [ -s "$f" ]
    ! grep -qi "$hex" "$f"
    ! grep -qi "${hex:0:16}" "$f"
    ! grep -qa 'Unmistakable-Passphrase-7f3a' "$f"
    python3 -c 'import sys; d=open(sys.argv[1],"rb").read(); k=open(sys.argv[2],"rb").read(); sys.exit(k[:16] in d or k[32:48] in d)' "$f" mk.bin
  done
}

# qcow2_io FILE COMMAND...: qemu-io on an encrypted qcow2 opened with k1; fails on any failed command.
qcow2_io() {
  local f=$1 c; shift
  for c in "$@"; do
    run qemu-io $SECRET --image-opts "driver=qcow2,encrypt.key-secret=s0,file.filename=$f" -c "$c"
    echo "$c: $output"
    [ "$status" -eq 0 ]
    [[ "$output" != *"Pattern verification failed"* && "$output" != *"error"* ]]
  done
}

# qcow2_clean FILE: qemu-img check with the key finds nothing, exit 0.
qcow2_clean() {
  run qemu-img check $SECRET --image-opts "driver=qcow2,encrypt.key-secret=s0,file.filename=$1"
  echo "$output"
  [ "$status" -eq 0 ]
  [[ "$output" == *"No errors were found on the image."* ]]
}

@test "create -f qcow2 -o encrypt.format=luks: qemu-img info says luks, qemu-img check is clean, qemu-io round-trips data, luksDump accepts the header" {
  "$IMGFUSE" create -f qcow2 --key-file k1 -o encrypt.format=luks,encrypt.iter-time=10 e.qcow2 8M
  run qemu-img info --output=json e.qcow2
  [ "$status" -eq 0 ]
  python3 -c 'import json,sys; j=json.loads(sys.argv[1]); e=j["format-specific"]["data"]["encrypt"]; assert j["encrypted"] and e["format"]=="luks" and e["cipher-alg"]=="aes-256" and e["cipher-mode"]=="xts" and e["slots"][0]["active"], j' "$output"
  qcow2_clean e.qcow2
  qcow2_io e.qcow2 "write -P 0xab 0 1M" "write -P 0x12 7M 64k" "read -P 0xab 0 1M" "read -P 0x12 7M 64k" "read -P 0 2M 64k"
  qcow2_clean e.qcow2
  ! grep -qa "$(head -c 64 /dev/zero | tr '\0' '\253')" e.qcow2
  # the LUKS header the extension names, cut out, is a LUKS1 header cryptsetup reads and unlocks
  local off len
  read -r off len < <(python3 -c 'import struct,sys
d=open(sys.argv[1],"rb").read(); assert struct.unpack(">I",d[32:36])[0]==2; p=struct.unpack(">I",d[100:104])[0]
while True:
    t,l=struct.unpack(">II",d[p:p+8]); assert t
    if t==0x0537be77: print(*struct.unpack(">QQ",d[p+8:p+24])); break
    p+=8+(l+7&~7)' e.qcow2)
  [ $((off % 65536)) -eq 0 ]
  dd if=e.qcow2 of=hdr.luks bs=64k skip=$((off / 65536)) count=$(((len + 65535) / 65536)) status=none
  cryptsetup luksDump hdr.luks | grep -Eq '^Cipher mode:\s*xts-plain64$'
  cryptsetup open --test-passphrase --key-file k1 hdr.luks
}

@test "create -f qcow2 -o encrypt.format=luks with other ciphers, compat=0.10, 4k clusters, a backing file: clean and round-trips" {
  "$IMGFUSE" create -f qcow2 --key-file k1 -o compat=0.10,cluster_size=4k,encrypt.format=luks,encrypt.iter-time=10,encrypt.cipher-alg=aes-128,encrypt.cipher-mode=cbc,encrypt.ivgen-alg=essiv,encrypt.hash-alg=sha512 a.qcow2 2M
  run qemu-img info a.qcow2
  [[ "$output" == *"cipher alg: aes-128"* && "$output" == *"ivgen alg: essiv"* && "$output" == *"hash alg: sha512"* ]]
  qcow2_clean a.qcow2
  qcow2_io a.qcow2 "write -P 0x33 4096 100k" "read -P 0x33 4096 100k"
  qcow2_clean a.qcow2
  qemu-img create -q -f qcow2 base.qcow2 2M
  qemu-io -c "write -P 0x44 0 1M" base.qcow2 >/dev/null
  "$IMGFUSE" create -f qcow2 --key-file k1 -b base.qcow2 -F qcow2 -o encrypt.format=luks,encrypt.iter-time=10,encrypt.cipher-alg=aes-128,encrypt.ivgen-alg=plain top.qcow2
  qcow2_io top.qcow2 "read -P 0x44 0 1M" "write -P 0x55 64k 64k" "read -P 0x55 64k 64k" "read -P 0x44 128k 64k"
  qcow2_clean top.qcow2
}

@test "create -f qcow2 -o encrypt.format=aes: the legacy method qemu-img 7.2 still creates; no key or an option without luks: exit 2, one line" {
  "$IMGFUSE" create -f qcow2 --key-file k1 -o encrypt.format=aes a.qcow2 1M
  run qemu-img info a.qcow2
  [[ "$output" == *"encrypted: yes"* && "$output" == *"format: aes"* ]]
  qcow2_io a.qcow2 "write -P 0x5a 0 64k" "read -P 0x5a 0 64k"
  qcow2_clean a.qcow2
  run "$IMGFUSE" create -f qcow2 -o encrypt.format=luks b.qcow2 1M </dev/null
  [ "$status" -eq 2 ]
  [ "$output" = "imgfuse: b.qcow2: an encrypted image needs a passphrase (--key-file FILE or --passphrase-fd N)" ]
  create_refusals qcow2 b.qcow2 <<'EOF'
--key-file k1 -o encrypt.cipher-alg=aes-128|1M|encrypt.* options need encrypt.format=luks
--key-file k1 -o encrypt.format=luks,encrypt.cipher-alg=cast5-128|1M|luks creation option 'encrypt.cipher-alg': cipher 'cast5-128' is not supported (aes, serpent and twofish are)
--key-file k1 -o encrypt.format=rot13|1M|encrypt.format must be luks or aes, not 'rot13'
EOF
  [ ! -e b.qcow2 ]
  run "$IMGFUSE" create -f qcow2 -o help
  [[ "$output" == *"encrypt.format="* && "$output" == *"encrypt.iter-time="* ]]
}

# xts_plain IMAGE KEYHEX OFFSET COUNT OUT: COUNT 512-byte sectors of IMAGE's payload at OFFSET decrypted
# with aes-xts-plain64 under KEYHEX by python3-cryptography (an oracle independent of imgfuse and nettle).
xts_plain() {
  python3 - "$@" <<'PY'
import sys
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
img, key, off, n, out = sys.argv[1], bytes.fromhex(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]), sys.argv[5]
d = open(img, "rb").read()
res = b""
for s in range(n):
    dec = Cipher(algorithms.AES(key), modes.XTS(s.to_bytes(16, "little"))).decryptor()
    res += dec.update(d[off + 512 * s: off + 512 * (s + 1)]) + dec.finalize()
open(out, "wb").write(res)
PY
}

@test "create -f luks -o version=2: a LUKS2 container (argon2id slot, both header copies) cryptsetup dumps, opens and adds a key to; its volume key decrypts what a mount wrote" {
  "$IMGFUSE" create -f luks --key-file k1 -o version=2,iter-time=20,argon2-memory=8M l2.luks 2M
  cryptsetup luksDump l2.luks > dump.txt
  grep -Eq '^Version:\s*2$' dump.txt
  grep -Eq 'PBKDF:\s*argon2id$' dump.txt
  grep -Eq 'Memory:\s*8192$' dump.txt
  grep -Eq 'cipher: aes-xts-plain64$' dump.txt
  cryptsetup open --test-passphrase --key-file k1 l2.luks
  run "$IMGFUSE" info --key-file k1 l2.luks
  [[ "$output" == *"luks_version: 2"* && "$output" == *"header_copies: primary valid, secondary valid"* ]]
  [[ "$output" == *"key_slot_0: argon2id, time "*", memory 8192 KiB, 4 threads"* && "$output" == *"virtual_size: 2097152"* ]]
  head -c 8192 /dev/urandom > data.bin
  mount_img --rw --key-file k1 l2.luks "$MNT"
  dd if=data.bin of="$MNT/disk.raw" bs=8192 conv=notrunc,fsync status=none
  unmount_img
  local hex
  hex=$(cryptsetup luksDump -q --dump-volume-key --key-file k1 l2.luks | sed -n '/^MK dump:/,$p' | sed 's/^MK dump://' | tr -d ' \t\n')
  [ "${#hex}" -eq 128 ]
  xts_plain l2.luks "$hex" $((16 << 20)) 16 plain.bin
  cmp plain.bin data.bin
  # cryptsetup's own writer takes the metadata as it is: a second key, then both open
  cryptsetup luksAddKey -q --key-file k1 --pbkdf pbkdf2 --pbkdf-force-iterations 1000 l2.luks k2
  mount_img --key-file k2 --key-slot 1 l2.luks "$MNT"
  cmp -n 8192 "$MNT/disk.raw" data.bin
  unmount_img
}

@test "create -f luks -o version=2,kdf=pbkdf2 with serpent; bad LUKS2 options and LUKS2 in qcow2 refused with one line" {
  "$IMGFUSE" create -f luks --key-file k1 -o version=2,kdf=pbkdf2,hash-alg=sha512,iter-time=10,cipher-alg=serpent-256 s2.luks 1M
  cryptsetup luksDump s2.luks > dump.txt
  grep -Eq 'PBKDF:\s*pbkdf2$' dump.txt
  grep -Eq 'cipher: serpent-xts-plain64$' dump.txt
  head -c 4096 /dev/urandom > data.bin
  mount_img --rw --key-file k1 s2.luks "$MNT"
  dd if=data.bin of="$MNT/disk.raw" bs=4096 conv=notrunc,fsync status=none
  unmount_img
  mount_img --key-file k1 s2.luks "$MNT"
  cmp -n 4096 "$MNT/disk.raw" data.bin
  unmount_img
  run "$IMGFUSE" info --key-file k2 s2.luks
  one_line 2 "imgfuse: s2.luks: no key slot opens with the key given"
  create_refusals luks b.luks <<'EOF'
--key-file k1 -o kdf=pbkdf2|1M|luks creation options kdf and argon2-memory need version=2
--key-file k1 -o version=3|1M|luks creation option 'version': '3' is not 1 or 2
--key-file k1 -o version=2,argon2-memory=8T|1M|luks creation option 'argon2-memory': '8T' is not a size from 32k to 4G
EOF
  create_refusals qcow2 b.qcow2 <<<"--key-file k1 -o encrypt.format=luks,encrypt.version=2|1M|unknown luks creation option 'encrypt.version'"
}

@test "create -f luks on a terminal: the passphrase is asked twice without echo; two that differ create nothing, exit 2" {
  (sleep 1; printf 'typed pass\n'; sleep 1; printf 'typed pass\n') |
    script -qec "$IMGFUSE create -f luks -o iter-time=10 t.luks 1M" /dev/null > create.out
  cat -A create.out
  grep -q 'Passphrase for t.luks: ' create.out
  grep -q 'Passphrase for t.luks (again): ' create.out
  ! grep -q 'typed pass' create.out
  printf 'typed pass' > kt
  cryptsetup open --test-passphrase --key-file kt t.luks
  run bash -c "(sleep 1; printf 'one\n'; sleep 1; printf 'two\n') | script -qec '$IMGFUSE create -f luks -o iter-time=10 u.luks 1M' /dev/null"
  [ "$status" -eq 2 ]
  [[ "$output" == *"imgfuse: u.luks: the passphrases do not match"* ]]
  [ ! -e u.luks ]
}
