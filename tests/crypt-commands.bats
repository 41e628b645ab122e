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
  local i o="encrypt.format=luks,encrypt.key-secret=s0,encrypt.iter-time=10"
  for i in 1 2 3 4 5 6 7 8; do
    qemu-img create -q -f qcow2 $SECRET -o "$o" "$1" "$2" 2>/dev/null && break
    rm -f "$1"; sleep 1
  done
  [ -f "$1" ]
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
clean() {
  run qemu-img check $SECRET --image-opts "$1"
  echo "$output"
  [ "$status" -eq 0 ]
  [[ "$output" == *"No errors were found"* ]]
  [[ "$output" != *"leaked"* ]]
}

# one_line STATUS LINE: the last `run` exited STATUS and printed exactly LINE.
one_line() {
  echo "status $status (want $1): $output"
  [ "$status" -eq "$1" ]
  [ "${#lines[@]}" -eq 1 ]
  [ "${lines[0]}" = "$2" ]
}

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
