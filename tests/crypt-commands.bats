#!/usr/bin/env bats
# SPDX-License-Identifier: MIT
# crypt-commands.bats - the key options (--key-file, --passphrase-fd, qemu-img's --object secret) on the
# commands that open encrypted images besides mount, info and check: compare of an encrypted qcow2 with its
# plaintext (same, one changed byte, no key), commit of a plain overlay into an encrypted base and stream
# of an encrypted base into a plain overlay against qemu-img doing the same on copies (given the secret),
# qemu-img check clean afterwards; amend; convert to encrypted targets (-O luks, -O qcow2 with
# encrypt.format=luks), read back by qemu-img, with refusals that leave no file behind.

load helpers

setup() { setup_tmp; cd "$TMP"; printf 'pass one' > k1; printf 'wrong' > k2; SECRET="--object secret,id=s0,file=$TMP/k1"; }
teardown() { teardown_tmp; }

# enc_qcow2 FILE SIZE: an encrypted qcow2 (LUKS, key k1) made by qemu-img, with data in it (qemu times its
# PBKDF on this CPU and fails now and then on a busy machine, hence the tries).
enc_qcow2() {
  qemu_create_retry "$1" -f qcow2 $SECRET -o encrypt.format=luks,encrypt.key-secret=s0,encrypt.iter-time=10 "$1" "$2"
  qio "driver=qcow2,file.filename=$1,encrypt.key-secret=s0" 'write -P 0x11 0 1M' 'write -P 0x22 3M 300k' \
    'write -z 3500k 64k'
}

# qio IMAGE-OPTS COMMAND...: qemu-io on an image given by --image-opts, with the secret s0 (k1).
qio() {
  local o=$1 c; shift
  for c in "$@"; do qemu-io $SECRET --image-opts "$o" -c "$c" >/dev/null; done
}

# plain_of IMAGE-OPTS OUT: the guest bytes as qemu-img reads them with the key.
plain_of() { qemu-img convert $SECRET --image-opts "$1" -O raw "$2"; }

# clean IMAGE-OPTS: qemu-img check (with the key) finds neither errors nor leaks.
clean() { check_clean $SECRET --image-opts "$1"; }

@test "compare: an encrypted qcow2 and its plaintext are identical with the key (each spelling), differ by a byte, and without a key it is one line, exit 2" {
  enc_qcow2 e.qcow2 4M
  plain_of "driver=qcow2,file.filename=e.qcow2,encrypt.key-secret=s0" p.raw
  run "$IMGFUSE" compare --key-file k1 e.qcow2 p.raw
  [ "$status" -eq 0 ]
  [ "$output" = "Images are identical." ]
  run "$IMGFUSE" compare $SECRET p.raw e.qcow2
  [ "$status" -eq 0 ]
  run "$IMGFUSE" compare --passphrase-fd 3 e.qcow2 p.raw 3<k1
  [ "$status" -eq 0 ]
  printf '\x99' | dd of=p.raw bs=1 seek=3300000 conv=notrunc status=none
  run "$IMGFUSE" compare --key-file k1 e.qcow2 p.raw
  [ "$status" -eq 1 ]
  [ "$output" = "Content mismatch at offset 3299840!" ]
  run "$IMGFUSE" compare e.qcow2 p.raw </dev/null
  one_line 2 "imgfuse: e.qcow2: encrypted qcow2 image (LUKS): a key is needed (--key-file FILE or --passphrase-fd N)"
  run "$IMGFUSE" compare --key-file k2 e.qcow2 p.raw
  [ "$status" -eq 2 ]
  [ "${#lines[@]}" -eq 1 ]
}

@test "commit: a plain overlay into an encrypted base, the same as qemu-img commit on a copy; check clean" {
  enc_qcow2 b.qcow2 4M
  qemu-img create -q -f qcow2 -b b.qcow2 -F qcow2 t.qcow2
  qio "driver=qcow2,file.filename=t.qcow2,backing.encrypt.key-secret=s0" 'write -P 0x44 2M 128k' \
    'write -P 0x55 900k 200k' 'write -z 3M 64k'
  mkdir q && cp b.qcow2 t.qcow2 q/
  plain_of "driver=qcow2,file.filename=t.qcow2,backing.encrypt.key-secret=s0" before.raw
  run "$IMGFUSE" commit -q --key-file k1 t.qcow2
  echo "$output"
  [ "$status" -eq 0 ]
  (cd q && qemu-img commit -q $SECRET --image-opts "driver=qcow2,file.filename=t.qcow2,backing.encrypt.key-secret=s0")
  plain_of "driver=qcow2,file.filename=b.qcow2,encrypt.key-secret=s0" ours.raw
  plain_of "driver=qcow2,file.filename=q/b.qcow2,encrypt.key-secret=s0" theirs.raw
  same_bytes ours.raw theirs.raw
  same_bytes ours.raw before.raw
  clean "driver=qcow2,file.filename=b.qcow2,encrypt.key-secret=s0"
  # the plaintext never reaches the encrypted base's file
  ! grep -q "$(printf 'UUUUUUUUUUUUUUUU')" b.qcow2 || false
  # without a key: one line, exit 2, nothing changed
  cp q/t.qcow2 t2.qcow2
  qemu-img rebase -u -b b.qcow2 -F qcow2 t2.qcow2
  run "$IMGFUSE" commit t2.qcow2 </dev/null
  one_line 2 "imgfuse: $TMP/b.qcow2: encrypted qcow2 image (LUKS): a key is needed (--key-file FILE or --passphrase-fd N)"
  cmp t2.qcow2 q/t.qcow2
}

@test "stream: an encrypted base into a plain overlay, the same as qemu-img rebase -b '' on a copy; check clean" {
  enc_qcow2 b.qcow2 4M
  qemu-img create -q -f qcow2 -b b.qcow2 -F qcow2 t.qcow2
  qio "driver=qcow2,file.filename=t.qcow2,backing.encrypt.key-secret=s0" 'write -P 0x44 2M 128k'
  mkdir q && cp b.qcow2 t.qcow2 q/
  plain_of "driver=qcow2,file.filename=t.qcow2,backing.encrypt.key-secret=s0" before.raw
  run "$IMGFUSE" stream --passphrase-fd 3 t.qcow2 3<k1
  echo "$output"
  [ "$status" -eq 0 ]
  (cd q && qemu-img rebase -q $SECRET --image-opts "driver=qcow2,file.filename=t.qcow2,backing.encrypt.key-secret=s0" -b '')
  [ "$(qemu-img info --output=json t.qcow2 | grep -c backing-filename)" -eq 0 ]
  qemu-img convert -O raw t.qcow2 ours.raw
  qemu-img convert -O raw q/t.qcow2 theirs.raw
  same_bytes ours.raw theirs.raw
  same_bytes ours.raw before.raw
  check_clean t.qcow2
}

@test "rebase and amend take the key (amend: the driver's verdict); a bad --object is one line, exit 2" {
  enc_qcow2 b.qcow2 4M
  qemu-img create -q -f qcow2 -b b.qcow2 -F qcow2 t.qcow2
  plain_of "driver=qcow2,file.filename=t.qcow2,backing.encrypt.key-secret=s0" before.raw
  run "$IMGFUSE" rebase $SECRET -b '' t.qcow2
  echo "$output"
  [ "$status" -eq 0 ]
  qemu-img convert -O raw t.qcow2 after.raw
  same_bytes after.raw before.raw
  # amend opens the image with its key and reaches the driver, which changes no encrypted qcow2
  run "$IMGFUSE" amend --key-file k1 -o lazy_refcounts=on b.qcow2
  one_line 1 "imgfuse: b.qcow2: cannot amend an encrypted image"
  run "$IMGFUSE" amend -o lazy_refcounts=on b.qcow2 </dev/null
  one_line 2 "imgfuse: b.qcow2: encrypted qcow2 image (LUKS): a key is needed (--key-file FILE or --passphrase-fd N)"
  clean "driver=qcow2,file.filename=b.qcow2,encrypt.key-secret=s0"
  run "$IMGFUSE" compare --object secret,id=s0,file=k1,iv=x b.qcow2 b.qcow2
  one_line 2 "imgfuse: --object: 'iv=x' is not supported: a secret takes id=, file= or data= (format=raw)"
  run "$IMGFUSE" commit --object tls-creds-x509,id=t0 t.qcow2
  one_line 2 "imgfuse: --object: only 'secret,id=ID,file=FILE' (or data=STRING) is supported"
}

# --- convert to encrypted targets

# src_raw: a 3 MiB raw disk with data, zeros and a hole.
src_raw() {
  head -c 1M /dev/urandom > src.raw
  head -c 512k /dev/zero >> src.raw
  head -c 1000000 /dev/urandom >> src.raw
  truncate -s 3M src.raw
}

@test "convert -O luks and -O qcow2 -o encrypt.format=luks: qemu-img reads the source back with the key; check clean; no plaintext in the file" {
  src_raw
  run "$IMGFUSE" convert -O luks --target-key-file k1 src.raw t.luks
  echo "$output"
  [ "$status" -eq 0 ]
  plain_of "driver=luks,file.filename=t.luks,key-secret=s0" back.raw
  same_bytes back.raw src.raw
  # qemu-img's own spelling: --object secret and -o encrypt.key-secret=ID
  run "$IMGFUSE" convert -O qcow2 $SECRET -o encrypt.format=luks,encrypt.key-secret=s0,cluster_size=64k src.raw t.qcow2
  echo "$output"
  [ "$status" -eq 0 ]
  plain_of "driver=qcow2,file.filename=t.qcow2,encrypt.key-secret=s0" back2.raw
  same_bytes back2.raw src.raw
  clean "driver=qcow2,file.filename=t.qcow2,encrypt.key-secret=s0"
  run qemu-img info t.qcow2
  [[ "$output" == *"encrypted: yes"* ]]
  head -c 4096 src.raw > first.bin
  ! grep -qF -f <(od -An -tx1 first.bin | tr -d ' \n' | head -c 64) <(od -An -tx1 t.qcow2 | tr -d ' \n') || false
  # -O luks with -o key-secret=ID (qemu-img's spelling for luks) equals too
  run "$IMGFUSE" convert -O luks $SECRET -o key-secret=s0 src.raw t2.luks
  [ "$status" -eq 0 ]
  plain_of "driver=luks,file.filename=t2.luks,key-secret=s0" back3.raw
  same_bytes back3.raw src.raw
}

@test "convert from an encrypted source to a target with another key: --key-file for the source, --target-key-file or a named --object for the target" {
  enc_qcow2 e.qcow2 4M
  plain_of "driver=qcow2,file.filename=e.qcow2,encrypt.key-secret=s0" p.raw
  run "$IMGFUSE" convert --key-file k1 --target-key-file k2 -O qcow2 -o encrypt.format=luks e.qcow2 t.qcow2
  echo "$output"
  [ "$status" -eq 0 ]
  qemu-img convert --object secret,id=s1,file=k2 --image-opts "driver=qcow2,file.filename=t.qcow2,encrypt.key-secret=s1" -O raw back.raw
  same_bytes back.raw p.raw
  run "$IMGFUSE" convert --object secret,id=src,file=k1 --object secret,id=dst,data=wrong -O luks -o key-secret=dst e.qcow2 t.luks
  echo "$output"
  [ "$status" -eq 0 ]
  qemu-img convert --object secret,id=s1,file=k2 --image-opts "driver=luks,file.filename=t.luks,key-secret=s1" -O raw back2.raw
  same_bytes back2.raw p.raw
  # the old key does not open the new target
  run qemu-img convert $SECRET --image-opts "driver=luks,file.filename=t.luks,key-secret=s0" -O raw x.raw
  [ "$status" -ne 0 ]
}

@test "convert: a missing or wrong target key is one line, exit 2, and no file is left behind" {
  src_raw
  run "$IMGFUSE" convert -O luks src.raw t.luks </dev/null
  one_line 2 "imgfuse: t.luks: an encrypted target needs a key: --target-key-file FILE, or --object secret,id=ID,file=FILE with -o key-secret=ID"
  [ ! -e t.luks ]
  run "$IMGFUSE" convert -O qcow2 -o encrypt.format=luks src.raw t.qcow2 </dev/null
  one_line 2 "imgfuse: t.qcow2: an encrypted target needs a key: --target-key-file FILE, or --object secret,id=ID,file=FILE with -o key-secret=ID"
  [ ! -e t.qcow2 ]
  run "$IMGFUSE" convert -O qcow2 $SECRET -o encrypt.format=luks,encrypt.key-secret=s9 src.raw t.qcow2
  one_line 2 "imgfuse: s9: no --object secret,id=s9 was given"
  [ ! -e t.qcow2 ]
  run "$IMGFUSE" convert -O luks --target-key-file nokey src.raw t.luks
  one_line 2 "imgfuse: nokey: cannot open the key file: No such file or directory"
  [ ! -e t.luks ]
  run "$IMGFUSE" convert -O luks --object secret,id=a,file=k1,data=x src.raw t.luks
  one_line 2 "imgfuse: --object: 'data=x' is not supported: a secret takes id=, file= or data= (format=raw)"
  [ ! -e t.luks ]
  # -n into an existing encrypted target with the wrong key: refused, the target unchanged
  run "$IMGFUSE" convert -O luks --target-key-file k1 src.raw t.luks
  [ "$status" -eq 0 ]
  cp t.luks before.luks
  run "$IMGFUSE" convert -n -O luks --target-key-file k2 src.raw t.luks
  [ "$status" -eq 2 ]
  [ "${#lines[@]}" -eq 1 ]
  cmp t.luks before.luks
}

@test "--object secret on create (-o encrypt.key-secret=ID), mount, info, hash and check; a second unnamed secret is refused" {
  run "$IMGFUSE" create -f qcow2 $SECRET -o encrypt.format=luks,encrypt.key-secret=s0 c.qcow2 4M
  echo "$output"
  [ "$status" -eq 0 ]
  qio "driver=qcow2,file.filename=c.qcow2,encrypt.key-secret=s0" 'write -P 0x66 1M 64k'
  plain_of "driver=qcow2,file.filename=c.qcow2,encrypt.key-secret=s0" p.raw
  mount_img $SECRET c.qcow2 "$MNT"
  same_bytes "$MNT/disk.raw" p.raw
  ! grep -q "k1\|pass one" "$MNT/info" || false
  unmount_img
  run "$IMGFUSE" info --object secret,id=x,data='pass one' c.qcow2
  [ "$status" -eq 0 ]
  run "$IMGFUSE" hash $SECRET c.qcow2
  [ "$status" -eq 0 ]
  [ "${output%% *}" = "$(sha256sum < p.raw | cut -d' ' -f1)" ]
  run "$IMGFUSE" check $SECRET c.qcow2
  [ "$status" -eq 0 ]
  [[ "$output" == *"No errors were found"* ]]
  run "$IMGFUSE" compare $SECRET --object secret,id=s1,file=k2 c.qcow2 p.raw
  one_line 2 "imgfuse: --object: more than one key for the images (one --key-file, --passphrase-fd or secret)"
  run "$IMGFUSE" hash --object secret,id=x,data=wrong c.qcow2
  [ "$status" -eq 2 ]
  [ "${#lines[@]}" -eq 1 ]
}
