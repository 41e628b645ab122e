#!/usr/bin/env bats
# SPDX-License-Identifier: MIT
# qcow2-overlap.bats - issue 16 item 2: writes into a qcow2 whose refcounts lie must never land on its
# metadata. A --rw open refuses (exit 2, one line naming the damage and `qemu-img check -r all`) when a
# metadata cluster has refcount 0 or two metadata structures overlap, and leaves the file untouched;
# read-only mounts still work. A refcount that drops to zero while mounted is caught by the overlap check
# before the host write: EIO, the metadata bytes unchanged, the corrupt bit set.

load helpers

setup() { setup_tmp; cd "$TMP"; }
teardown() { teardown_tmp; }

CORRUPT="$BATS_TEST_DIRNAME/qcow2-corrupt.py"

# rw_refused IMAGE MESSAGE: a --rw mount exits 2 with exactly "imgfuse: IMAGE: MESSAGE", nothing mounted.
# (Under a timeout: a build without the check mounts, and the test must fail rather than hang.)
rw_refused() {
  run timeout -k 5 15 "$IMGFUSE" --foreground --rw "$1" "$MNT"
  echo "status $status: $output"
  [ "$status" -eq 2 ]
  [ "${#lines[@]}" -eq 1 ]
  [ "${lines[0]}" = "imgfuse: $1: $2" ]
  not_mounted "$MNT"
}

# readonly_matches IMAGE: a read-only mount shows what qemu-img shows.
readonly_matches() {
  mount_img "$1" "$MNT"
  same_bytes "$MNT/disk.raw" "$(raw_of "$1")"
  unmount_img
}

# damaged IMAGE MODE: 64 MiB qcow2 with 1 MiB of data, damaged by qcow2-corrupt.py MODE.
damaged() {
  qemu-img create -q -f qcow2 "$1" 64M
  qio "$1" "write -P 0x11 0 1M"
  python3 "$CORRUPT" "$1" "$2" 0
}

@test "issue 16.2: --rw refuses a qcow2 whose first refcount block is zeroed; the file is untouched" {
  damaged a.qcow2 zero-refblock0
  local sum; sum=$(sha256sum a.qcow2)
  rw_refused a.qcow2 "refcounts inconsistent with the tables: the header at 0x0 has refcount 0 and would be overwritten by new data; run 'qemu-img check -r all a.qcow2' before writing (read-only mounts still work)"
  [ "$(sha256sum a.qcow2)" = "$sum" ]
  readonly_matches a.qcow2
  # The advice works: after the repair the 4 MiB write of the issue goes to data clusters.
  qemu-img check -q -r all a.qcow2 || true
  mount_img --rw a.qcow2 "$MNT"
  head -c 4M /dev/urandom > w.bin
  dd if=w.bin of="$MNT/disk.raw" bs=4M seek=2 conv=notrunc,fsync status=none
  unmount_img
  check_clean a.qcow2
  qemu-img convert -O raw a.qcow2 out.raw
  cmp -n 4194304 -i 0:8388608 w.bin out.raw
}

@test "issue 16.2: --rw refuses a qcow2 whose L1 and L2 clusters have refcount 0; the file is untouched" {
  damaged a.qcow2 zero-l1-l2-refcounts
  local sum; sum=$(sha256sum a.qcow2)
  rw_refused a.qcow2 "refcounts inconsistent with the tables: the L1 table at 0x30000 has refcount 0 and would be overwritten by new data; run 'qemu-img check -r all a.qcow2' before writing (read-only mounts still work)"
  [ "$(sha256sum a.qcow2)" = "$sum" ]
  readonly_matches a.qcow2
}

@test "issue 16.2: --rw refuses a qcow2 whose L1 table names a refcount block as an L2 table" {
  qemu-img create -q -f qcow2 a.qcow2 1G
  qio a.qcow2 "write -P 0x11 0 1M"
  python3 "$CORRUPT" a.qcow2 l2-on-refblock 0
  local sum; sum=$(sha256sum a.qcow2)
  rw_refused a.qcow2 "metadata overlap: an L2 table at 0x20000 overlaps a refcount block at 0x20000; run 'qemu-img check -r all a.qcow2' before writing (read-only mounts still work)"
  [ "$(sha256sum a.qcow2)" = "$sum" ]
}

@test "issue 16.2: a snapshot's L2 table freed at run time by a low refcount is not overwritten: EIO, corrupt bit" {
  qemu-img create -q -f qcow2 a.qcow2 64M
  qio a.qcow2 "write -P 0x11 0 1M"
  qemu-img snapshot -c s1 a.qcow2
  # The L2 table shared by the active L1 and s1 counts 1 reference instead of 2: non-zero, so the open
  # passes, but copying it on the first write drops its refcount to 0 and the allocator may hand it out.
  python3 "$CORRUPT" a.qcow2 set-l2-refcount 1
  local l2; l2=$(python3 -c 'import struct,sys; f=open(sys.argv[1],"rb"); h=f.read(48); f.seek(struct.unpack(">Q",h[40:48])[0]); print(struct.unpack(">Q",f.read(8))[0] & 0xfffffffffe00)' a.qcow2)
  [ "$l2" -eq $((0x40000)) ]
  dd if=a.qcow2 of=l2-before.bin bs=64k skip=4 count=1 status=none
  qemu-img convert -O raw -l snapshot.name=s1 a.qcow2 s1-before.raw
  mount_img --rw a.qcow2 "$MNT"
  run python3 - "$MNT/disk.raw" <<'EOF'
import os, sys
fd = os.open(sys.argv[1], os.O_WRONLY)
os.pwrite(fd, b"\x22" * 4096, 0)      # copies the shared L2 table; the flush frees the old one
os.fsync(fd)
try:
    os.pwrite(fd, b"\x33" * 4096, 2 << 20)  # a new data cluster: the allocator offers the old L2 table
    print("second write succeeded")
except OSError as e:
    print("second write: errno %d" % e.errno)
EOF
  echo "$output"
  [ "$output" = "second write: errno 5" ]
  unmount_img || true
  grep -qx "imgfuse: a.qcow2: metadata overlap: refusing to write guest data over an L2 table at 0x40000; image marked corrupt" "$TMP/daemon.log"
  dd if=a.qcow2 of=l2-after.bin bs=64k skip=4 count=1 status=none
  cmp l2-before.bin l2-after.bin
  run qemu-img info a.qcow2
  [[ "$output" == *"corrupt: true"* ]]
  qemu-img convert -O raw -l snapshot.name=s1 a.qcow2 s1-after.raw
  cmp s1-before.raw s1-after.raw
  # imgfuse refuses writing a corrupt image too; reading still works.
  rw_refused a.qcow2 "image is marked corrupt; it can only be opened read-only"
  readonly_matches a.qcow2
}

@test "issue 16.2: healthy images keep writing through snapshots, L1 growth and refcount table growth" {
  "$IMGFUSE" create -f qcow2 -o cluster_size=512 a.qcow2 16M
  qio a.qcow2 "write -P 0x11 0 4M"
  qemu-img snapshot -c s1 a.qcow2
  mount_img --rw a.qcow2 "$MNT"
  head -c 8M /dev/urandom > w.bin
  dd if=w.bin of="$MNT/disk.raw" bs=1M conv=notrunc,fsync status=none
  truncate -s 256M "$MNT/disk.raw"          # the L1 table grows
  dd if=w.bin of="$MNT/disk.raw" bs=1M seek=200 conv=notrunc,fsync status=none
  mkdir "$MNT/snapshots/s2"
  dd if=w.bin of="$MNT/disk.raw" bs=64k count=16 seek=100 conv=notrunc,fsync status=none
  rmdir "$MNT/snapshots/s1"
  dd if=w.bin of="$MNT/disk.raw" bs=64k count=16 seek=200 conv=notrunc,fsync status=none
  cp "$MNT/disk.raw" copy.raw
  unmount_img
  ! grep -q "metadata overlap\|corrupt" "$TMP/daemon.log" || false
  check_clean a.qcow2
  qemu-img compare -f qcow2 -F raw a.qcow2 copy.raw
}

@test "issue 16.2: the --rw open check of 4M L2 tables named in reverse order is bounded in time and memory" {
  # 512-byte clusters, 128 GiB: a 32 MiB L1 table (the budget) whose 4M entries name distinct L2 tables
  # from the end of a sparse file backwards; none has a refcount, so the open is refused.
  qemu-img create -q -f qcow2 -o cluster_size=512 h.qcow2 128G
  python3 - h.qcow2 <<'PY'
import struct, sys
with open(sys.argv[1], "r+b") as f:
    h = f.read(48)
    n, off = struct.unpack(">I", h[36:40])[0], struct.unpack(">Q", h[40:48])[0]
    base = 64 << 20
    f.seek(off)
    f.write(b"".join(struct.pack(">Q", (1 << 63) | (base + (n - 1 - i) * 512)) for i in range(n)))
    f.truncate(base + n * 512 + 512)
PY
  # A 1 GiB limit: the address space, or under AddressSanitizer (which reserves terabytes of shadow
  # address space) its own resident-memory limit; the peak allowed doubles there (its allocator's overhead).
  local limit=(prlimit --as=$((1024 << 20)) --) max=$((320 << 10))
  if [ -n "${IMGFUSE_ASAN:-}" ]; then
    limit=(env ASAN_OPTIONS="${ASAN_OPTIONS:-}:hard_rss_limit_mb=1024"); max=$((640 << 10))
  fi
  run /usr/bin/time -f "peak %M KiB" "${limit[@]}" timeout -k 5 20 "$IMGFUSE" --foreground --rw h.qcow2 "$MNT"
  echo "$output"
  [ "$status" -eq 2 ]
  [ "${lines[0]}" = "imgfuse: h.qcow2: refcounts inconsistent with the tables: an L2 table at 0x4000000 has refcount 0 and would be overwritten by new data; run 'qemu-img check -r all h.qcow2' before writing (read-only mounts still work)" ]
  [[ "${lines[-1]}" =~ ^peak\ ([0-9]+)\ KiB$ ]]
  [ "${BASH_REMATCH[1]}" -lt "$max" ]
}
