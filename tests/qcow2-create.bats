#!/usr/bin/env bats
# SPDX-License-Identifier: MIT
# qcow2-create.bats - issue 4: `imgfuse create -f qcow2` with every creation option makes images that
# qemu-img accepts (check clean, info shows the options), refuses bad option combinations with one clear
# line, records backing file and format, and obeys the seed's rule for formats without backing files.

load helpers

setup() { setup_tmp; cd "$TMP"; }
teardown() { teardown_tmp; }

# info_json IMAGE: qemu-img info as JSON.
info_json() { qemu-img info --output=json "$1"; }

# jget JSON PATH...: one value out of a JSON document (keys and list indexes).
jget() {
  python3 -c 'import json, sys
v = json.loads(sys.argv[1])
for k in sys.argv[2:]:
    v = v[int(k)] if isinstance(v, list) else v[k]
print(json.dumps(v) if isinstance(v, (dict, list, bool)) else v)' "$@"
}

@test "default create: v3, 64k clusters, 16-bit refcounts, zlib, clean" {
  "$IMGFUSE" create -f qcow2 a.qcow2 100M
  qemu-img check a.qcow2
  local j; j=$(info_json a.qcow2)
  [ "$(jget "$j" virtual-size)" = 104857600 ]
  [ "$(jget "$j" cluster-size)" = 65536 ]
  [ "$(jget "$j" format-specific data compat)" = 1.1 ]
  [ "$(jget "$j" format-specific data refcount-bits)" = 16 ]
  [ "$(jget "$j" format-specific data compression-type)" = zlib ]
  [ "$(jget "$j" format-specific data lazy-refcounts)" = false ]
}

@test "every option is honoured and qemu-io can use the image" {
  local o
  for o in cluster_size=512 cluster_size=2M compat=0.10 compat=1.1,extended_l2=on refcount_bits=1 \
           refcount_bits=2 refcount_bits=4 refcount_bits=8 refcount_bits=32 refcount_bits=64 \
           compression_type=zstd lazy_refcounts=on "cluster_size=4k,refcount_bits=64"; do
    rm -f a.qcow2
    "$IMGFUSE" create -f qcow2 -o "$o" a.qcow2 20M
    qemu-img check -q a.qcow2
    qemu-io -f qcow2 -c "write -P 0x5c 0 3M" -c "write -P 0x5d 10M 64k" a.qcow2 >/dev/null
    qemu-img check -q a.qcow2
    qemu-io -f qcow2 -c "read -P 0x5c 0 3M" a.qcow2 | grep -q "read 3145728"
  done
  local j
  "$IMGFUSE" create -f qcow2 -o compat=1.1,extended_l2=on,cluster_size=128k b.qcow2 1G
  j=$(info_json b.qcow2)
  [ "$(jget "$j" format-specific data extended-l2)" = true ]
  [ "$(jget "$j" cluster-size)" = 131072 ]
  "$IMGFUSE" create -f qcow2 -o compat=0.10 c.qcow2 1G
  [ "$(jget "$(info_json c.qcow2)" format-specific data compat)" = 0.10 ]
  "$IMGFUSE" create -f qcow2 -o compression_type=zstd,lazy_refcounts=on,refcount_bits=8 d.qcow2 1G
  j=$(info_json d.qcow2)
  [ "$(jget "$j" format-specific data compression-type)" = zstd ]
  [ "$(jget "$j" format-specific data lazy-refcounts)" = true ]
  [ "$(jget "$j" format-specific data refcount-bits)" = 8 ]
}

@test "big virtual sizes with small clusters get a multi-cluster L1 and refcount table" {
  "$IMGFUSE" create -f qcow2 -o cluster_size=512,refcount_bits=64 a.qcow2 2G
  qemu-img check a.qcow2
  qemu-io -f qcow2 -c "write -P 0x11 2047M 1M" a.qcow2 >/dev/null
  qemu-img check a.qcow2
}

@test "backing file and backing format are recorded; size defaults to the backing file's" {
  qemu-img create -q -f qcow2 base.qcow2 48M
  qemu-io -f qcow2 -c "write -P 0x42 0 1M" base.qcow2 >/dev/null
  "$IMGFUSE" create -f qcow2 -b base.qcow2 -F qcow2 top.qcow2
  local j; j=$(info_json top.qcow2)
  [ "$(jget "$j" backing-filename)" = base.qcow2 ]
  [ "$(jget "$j" backing-filename-format)" = qcow2 ]
  [ "$(jget "$j" virtual-size)" = 50331648 ]
  qemu-img check top.qcow2
  qemu-io -f qcow2 -c "read -P 0x42 0 1M" top.qcow2 | grep -q "read 1048576"
  "$IMGFUSE" create -f qcow2 -o compat=0.10 -b base.qcow2 -F qcow2 top2.qcow2 10M
  [ "$(jget "$(info_json top2.qcow2)" virtual-size)" = 10485760 ]
  qemu-img check top2.qcow2
}

@test "bad options are refused with one clear line" {
  run "$IMGFUSE" create -f qcow2 -o cluster_size=1000 a.qcow2 1M
  [ "$status" -ne 0 ]; [[ "$output" == *"cluster_size"* ]]; [ "${#lines[@]}" -eq 1 ]
  run "$IMGFUSE" create -f qcow2 -o cluster_size=4M a.qcow2 1M
  [ "$status" -ne 0 ]; [[ "$output" == *"cluster_size"* ]]
  run "$IMGFUSE" create -f qcow2 -o compat=0.10,extended_l2=on a.qcow2 1M
  [ "$status" -ne 0 ]; [[ "$output" == *"extended_l2"* ]]
  run "$IMGFUSE" create -f qcow2 -o extended_l2=on,cluster_size=4k a.qcow2 1M
  [ "$status" -ne 0 ]; [[ "$output" == *"16k"* ]]
  run "$IMGFUSE" create -f qcow2 -o refcount_bits=3 a.qcow2 1M
  [ "$status" -ne 0 ]; [[ "$output" == *"refcount_bits"* ]]
  run "$IMGFUSE" create -f qcow2 -o compat=0.10,refcount_bits=8 a.qcow2 1M
  [ "$status" -ne 0 ]; [[ "$output" == *"compat=1.1"* ]]
  run "$IMGFUSE" create -f qcow2 -o compression_type=lzo a.qcow2 1M
  [ "$status" -ne 0 ]; [[ "$output" == *"compression_type"* ]]
  run "$IMGFUSE" create -f qcow2 -o frobnicate=1 a.qcow2 1M
  [ "$status" -ne 0 ]; [[ "$output" == *"unknown"*"frobnicate"* ]]
  run "$IMGFUSE" create -f qcow2 -o lazy_refcounts=maybe a.qcow2 1M
  [ "$status" -ne 0 ]; [[ "$output" == *"lazy_refcounts"* ]]
}

@test "a raw image cannot get a backing file (the seed's rule)" {
  qemu-img create -q -f qcow2 base.qcow2 1M
  run "$IMGFUSE" create -f raw -b base.qcow2 -F qcow2 top.raw 1M
  echo "$output"
  [ "$status" -ne 0 ]
  [[ "$output" == *"does not support backing files"* ]]
}

@test "an image created by imgfuse mounts read-write and reads back what was written" {
  "$IMGFUSE" create -f qcow2 -o cluster_size=4k a.qcow2 4M
  mount_img --rw a.qcow2 "$MNT"
  head -c 4M /dev/urandom > data.bin
  dd if=data.bin of="$MNT/disk.raw" bs=64k conv=notrunc status=none
  unmount_img
  qemu-img check a.qcow2
  qemu-img compare -f qcow2 -F raw a.qcow2 data.bin
}
