#!/usr/bin/env bats
# SPDX-License-Identifier: MIT
# qcow2-savevm.bats - an internal snapshot with real VM state, made by QEMU itself (`savevm` on the
# monitor of an accelerator-free `qemu-system-x86_64 -machine none`): snapshots/NAME/vmstate has the
# size QEMU reports and exactly the bytes QEMU stored. The byte oracle: apply the snapshot, delete it and
# grow the disk past the first L1 entry beyond the old size, where the qcow2 spec puts the VM state; then
# `qemu-img convert` shows the state as ordinary disk data.
load helpers
setup() { setup_tmp; }
teardown() { teardown_tmp; }

savevm() { # savevm IMAGE NAME
  printf 'savevm %s\nquit\n' "$2" | timeout 120 qemu-system-x86_64 -machine none -nodefaults -display none \
    -drive file="$1",if=none,id=d0 -monitor stdio >"$TMP/qemu.log" 2>&1
}

@test "a snapshot saved by QEMU's savevm shows its VM state as vmstate, byte for byte" {
  command -v qemu-system-x86_64 >/dev/null || { echo "qemu-system-x86_64 missing: scripts/install-deps installs it" >&2; false; }
  local img=$TMP/vm.qcow2
  qemu-img create -q -f qcow2 "$img" 64M
  qemu-io -c 'write -P 0x11 0 1M' "$img" >/dev/null
  savevm "$img" running
  qemu-io -c 'write -P 0x22 0 512k' "$img" >/dev/null
  local size
  size=$(qemu-img info --output=json "$img" | python3 -c 'import json,sys; print(json.load(sys.stdin)["snapshots"][0]["vm-state-size"])')
  [ "$size" -gt 0 ]

  # oracle: the state made visible as disk data (64 MiB disk, 64 KiB clusters: L1 entries of 512 MiB)
  cp "$img" "$TMP/oracle.qcow2"
  qemu-img snapshot -a running "$TMP/oracle.qcow2"
  qemu-img snapshot -d running "$TMP/oracle.qcow2"
  qemu-img resize -q "$TMP/oracle.qcow2" 1G
  qemu-img convert -O raw "$TMP/oracle.qcow2" "$TMP/oracle.raw"
  dd if="$TMP/oracle.raw" of="$TMP/state.bin" bs=1M skip=512 count=1 status=none
  truncate -s "$size" "$TMP/state.bin"
  [ "$(head -c 4 "$TMP/state.bin")" = "QEVM" ]

  mount_img "$img" "$MNT"
  [ "$(stat -c %s "$MNT/snapshots/running/vmstate")" -eq "$size" ]
  cmp "$MNT/snapshots/running/vmstate" "$TMP/state.bin"
  grep -q "^vm_state_size: $size" "$MNT/snapshots/running/info"
  qemu-img convert -l snapshot.name=running -O raw "$img" "$TMP/snap.raw"
  cmp "$MNT/snapshots/running/disk.raw" "$TMP/snap.raw"
  unmount_img
}

@test "imgfuse snapshot -d removes a savevm snapshot with its VM state; qemu-img check stays clean" {
  command -v qemu-system-x86_64 >/dev/null || { echo "qemu-system-x86_64 missing" >&2; false; }
  local img=$TMP/vm.qcow2
  qemu-img create -q -f qcow2 "$img" 64M
  qemu-io -c 'write -P 0x33 64k 256k' "$img" >/dev/null
  savevm "$img" s1
  qemu-img check "$img"
  "$IMGFUSE" snapshot -d s1 "$img"
  [ -z "$(qemu-img snapshot -l "$img")" ]
  run qemu-img check --output=json "$img"
  [ "$status" -eq 0 ]
  [[ "$output" != *'"leaks"'* ]]
}
