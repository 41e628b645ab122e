#!/usr/bin/env bats
# SPDX-License-Identifier: MIT
# vhdx-write.bats - writes to VHDX images through --rw mounts: fio with 4 jobs and verification on fixed
# and dynamic images made by qemu-img (several block sizes) and on differencing disks made by
# tests/vhdx-make-diff.py, then `qemu-img check` clean and `qemu-img convert` (or vhdimount, for a
# differencing disk) equal to what the mount showed; the header's GUIDs; write-zeroes and discard by block
# state; a dirty log replayed onto the file by a --rw open; a kill -9 between a log entry and the metadata
# it describes (blkdebug delays the in-place write) and kill -9 rounds; damaged images refused for --rw.

load helpers

setup() { setup_tmp; cd "$TMP"; }
teardown() { teardown_tmp; }

VHDXLIB="$BATS_TEST_DIRNAME/vhdxlib.py"
MAKE_DIFF="$BATS_TEST_DIRNAME/vhdx-make-diff.py"
MAKE_LOG="$BATS_TEST_DIRNAME/vhdx-make-log.py"

# vhdx_py IMAGE EXPR: prints EXPR evaluated with `img` = vhdxlib.Image(IMAGE), `h` = its current header
# (and the modules struct and v = vhdxlib).
vhdx_py() {
  python3 - "$VHDXLIB" "$@" <<'EOF'
import importlib.util, struct, sys
spec = importlib.util.spec_from_file_location("vhdxlib", sys.argv[1]); v = importlib.util.module_from_spec(spec)
spec.loader.exec_module(v)
img = v.Image(sys.argv[2]); h = img.read(img.header_off, 4096)
print(eval(sys.argv[3]))
EOF
}

# fio_verify FILE: random reads and writes of 512 bytes to 256 KiB, 4 jobs of 16 MiB each, crc32c verified.
fio_verify() {
  fio --name=w --filename="$1" --rw=randrw --bsrange=512-256k --verify=crc32c --numjobs=4 --size=16M \
    --offset_increment=16M --ioengine=psync --randseed=7 --verify_fatal=1 --group_reporting > fio.log 2>&1 ||
    { cat fio.log; return 1; }
}

# rw_fio_then_check IMAGE [mount options]: fio through a --rw mount, a copy of what it showed; after the
# unmount qemu-img check is clean and qemu-img convert equals that copy.
rw_fio_then_check() {
  local img=$1; shift
  mount_img --rw "$@" "$img" "$MNT"
  fio_verify "$MNT/disk.raw"
  cp "$MNT/disk.raw" shown.raw
  unmount_img
  check_clean "$img"
  qemu-img convert -f vhdx -O raw "$img" out.raw
  same_bytes out.raw shown.raw
  [ "$(vhdx_py "$img" 'img.log_guid == bytes(16)')" = True ]
}

@test "--rw fio with 4 jobs and crc32c verification: dynamic (1, 8, 32 MiB blocks) and fixed; qemu-img check clean, convert equal" {
  local bs
  for bs in 1M 8M 32M; do
    rm -f d.vhdx
    qemu-img create -q -f vhdx -o block_size=$bs d.vhdx 64M
    fmt_io vhdx d.vhdx 'write -P 0x5a 3M 1M'
    rw_fio_then_check d.vhdx
  done
  # fixed, every block present (qemu-img 7.2 leaves a new fixed image's blocks in state ZERO, no offsets):
  # all writes in place, in parallel; nothing appended
  qemu-img create -q -f vhdx -o subformat=fixed,block_size=8M f.vhdx 64M
  fmt_io vhdx f.vhdx 'write -P 0x5b 0 64M'
  local size; size=$(stat -c %s f.vhdx)
  rw_fio_then_check f.vhdx
  [ "$(stat -c %s f.vhdx)" -eq "$size" ]
}

@test "new blocks sit on 1 MiB boundaries past the old end; the BAT names them only after their data" {
  qemu-img create -q -f vhdx -o block_size=1M d.vhdx 16M
  local end; end=$(stat -c %s d.vhdx)
  mount_img --rw d.vhdx "$MNT"
  printf 'abc' | dd of="$MNT/disk.raw" bs=1 seek=$((5 * 1048576 + 7)) conv=notrunc status=none
  unmount_img
  local st host
  read -r st host <<<"$(vhdx_py d.vhdx '" ".join(map(str, img.bat(5)))')"
  [ "$st" -eq 6 ]
  [ $((host % 1048576)) -eq 0 ]
  [ "$host" -ge "$end" ]
  [ "$(stat -c %s d.vhdx)" -eq $((host + 1048576)) ]
  [ "$(dd if=d.vhdx bs=1 skip=$((host + 7)) count=3 status=none)" = abc ]
  check_clean d.vhdx
}

@test "FileWriteGuid and DataWriteGuid change on the first write only; a mount without writes leaves the file alone" {
  qemu-img create -q -f vhdx d.vhdx 8M
  local md5 g0 g1
  md5=$(md5sum < d.vhdx)
  g0=$(vhdx_py d.vhdx 'h[16:48].hex()')
  mount_img --rw d.vhdx "$MNT"
  cat "$MNT/disk.raw" > /dev/null
  unmount_img
  [ "$(md5sum < d.vhdx)" = "$md5" ]
  mount_img --rw d.vhdx "$MNT"
  printf 'x' | dd of="$MNT/disk.raw" bs=1 seek=100 conv=notrunc status=none
  printf 'y' | dd of="$MNT/disk.raw" bs=1 seek=200 conv=notrunc status=none
  unmount_img
  g1=$(vhdx_py d.vhdx 'h[16:48].hex()')
  [ "${g1:0:32}" != "${g0:0:32}" ]     # FileWriteGuid
  [ "${g1:32:32}" != "${g0:32:32}" ]   # DataWriteGuid
  [ "$(vhdx_py d.vhdx 'img.log_guid == bytes(16)')" = True ]
  check_clean d.vhdx
}

# make_parent: p.vhdx (dynamic, 1 MiB blocks, 10 MiB, 0xaa but for an empty block) and p.raw.
make_parent() {
  qemu-img create -q -f vhdx -o block_size=1M p.vhdx 10M
  fmt_io vhdx p.vhdx 'write -P 0xaa 0 7M' 'write -P 0xab 8M 2M'
  qemu-img convert -f vhdx -O raw p.vhdx p.raw
}

# put FILE OFFSET LENGTH BYTE: LENGTH bytes of BYTE (hex) at OFFSET of FILE, in place.
put() {
  head -c "$3" /dev/zero | tr '\0' "\\$(printf '%03o' "0x$4")" | dd of="$1" bs=512 seek=$(($2 / 512)) conv=notrunc status=none
}

@test "differencing: writes into every block state keep the sector bitmaps; vhdimount, imgfuse and the expected bytes agree" {
  make_parent
  python3 "$MAKE_DIFF" p.vhdx p.raw c.vhdx expect.raw --plain 1
  mount_img --rw c.vhdx "$MNT"
  # block 0 present; block 1 partially present (a sector of its own, then the parent's); block 3 and 9
  # not present (the parent's): a few sectors, the rest stays the parent's; block 4 partially present
  local w
  for w in "0:4096:31" "$((1048576 + 512)):1024:32" "$((1048576 + 11 * 512)):512:33" "$((3 * 1048576 + 8192)):1536:34" \
           "$((4 * 1048576 + 90 * 512)):$((20 * 512)):35" "$((9 * 1048576 - 512)):1024:36"; do
    IFS=: read -r off len byte <<<"$w"
    put "$MNT/disk.raw" "$off" "$len" "$byte"
    put expect.raw "$off" "$len" "$byte"
  done
  same_bytes "$MNT/disk.raw" expect.raw
  unmount_img
  mount_img c.vhdx "$MNT"
  same_bytes "$MNT/disk.raw" expect.raw
  unmount_img
  vhdi_equals c.vhdx expect.raw
  [ "$(vhdx_py c.vhdx 'img.bat(3)[0]')" -eq 7 ]   # partially present: the rest of the block is the parent's
}

@test "differencing with 4096-byte logical sectors: unaligned writes (read-modify-write), bits in 4 KiB units; vhdimount agrees" {
  make_parent
  patch_le p.vhdx $(( (3 << 20) + 65536 + 32 )) 4 4096   # the logical sector size item qemu-img wrote
  python3 "$MAKE_DIFF" p.vhdx p.raw c.vhdx expect.raw --plain 1
  mount_img --rw c.vhdx "$MNT"
  local w
  for w in "$((1048576 + 5000)):1000:41" "$((3 * 1048576 + 4095)):2:42" "$((9 * 1048576 + 100)):9000:43"; do
    IFS=: read -r off len byte <<<"$w"
    head -c "$len" /dev/zero | tr '\0' "\\$(printf '%03o' "0x$byte")" > piece
    dd if=piece of="$MNT/disk.raw" bs=1 seek="$off" conv=notrunc status=none
    dd if=piece of=expect.raw bs=1 seek="$off" conv=notrunc status=none
  done
  unmount_img
  mount_img c.vhdx "$MNT"
  same_bytes "$MNT/disk.raw" expect.raw
  unmount_img
  vhdi_equals c.vhdx expect.raw
  [ "$(vhdx_py c.vhdx '[img.bat(b)[0] for b in (1, 3, 9)]')" = "[7, 7, 7]" ]
}

@test "differencing without a sector-bitmap block: a partial write appends one (1 MiB) and the BAT names both" {
  make_parent
  python3 "$MAKE_DIFF" p.vhdx p.raw c.vhdx expect.raw --plain 1
  local bat; bat=$(vhdx_py c.vhdx 'img.bat_off')
  patch_le c.vhdx $((bat + 8)) 8 0; patch_le c.vhdx $((bat + 32)) 8 0   # blocks 1 and 4: not present
  patch_le c.vhdx $((bat + 4096 * 8)) 8 0                               # no sector bitmap for chunk 0
  mount_img c.vhdx "$MNT"; cp "$MNT/disk.raw" expect.raw; unmount_img
  vhdi_equals c.vhdx expect.raw
  local end; end=$(stat -c %s c.vhdx)
  mount_img --rw c.vhdx "$MNT"
  put "$MNT/disk.raw" $((6 * 1048576 + 2048)) 1024 51
  unmount_img
  put expect.raw $((6 * 1048576 + 2048)) 1024 51
  mount_img c.vhdx "$MNT"; same_bytes "$MNT/disk.raw" expect.raw; unmount_img
  vhdi_equals c.vhdx expect.raw
  [ "$(vhdx_py c.vhdx 'img.bat(6)[0]')" -eq 7 ]
  [ "$(vhdx_py c.vhdx 'struct.unpack("<Q", img.read(img.bat_off + 4096 * 8, 8))[0] & 7')" -eq 6 ]
  [ "$(stat -c %s c.vhdx)" -eq $((end + 2 * 1048576)) ]   # the block and its bitmap, appended
}

@test "differencing: fio with 4 jobs and verification; vhdimount and imgfuse agree afterwards" {
  qemu-img create -q -f vhdx -o block_size=1M p.vhdx 64M
  fmt_io vhdx p.vhdx 'write -P 0xaa 0 40M'
  qemu-img convert -f vhdx -O raw p.vhdx p.raw
  python3 "$MAKE_DIFF" p.vhdx p.raw c.vhdx expect.raw --plain 1
  mount_img --rw c.vhdx "$MNT"
  fio_verify "$MNT/disk.raw"
  cp "$MNT/disk.raw" shown.raw
  unmount_img
  mount_img c.vhdx "$MNT"
  same_bytes "$MNT/disk.raw" shown.raw
  unmount_img
  vhdi_equals c.vhdx shown.raw
}

@test "write-zeroes and punch-hole: whole blocks become ZERO (UNMAPPED with --discard=unmap), parts get zeros; qemu-img agrees" {
  qemu-img create -q -f vhdx -o block_size=1M d.vhdx 8M
  fmt_io vhdx d.vhdx 'write -P 0x61 0 6M'
  qemu-img convert -f vhdx -O raw d.vhdx expect.raw
  mount_img --rw d.vhdx "$MNT"
  fallocate -z -o 1048576 -l 1048576 "$MNT/disk.raw"            # block 1: ZERO
  fallocate -p -o $((2 * 1048576 + 4096)) -l 8192 "$MNT/disk.raw"   # part of block 2: zero bytes
  unmount_img
  mount_img --rw --discard=unmap d.vhdx "$MNT"
  fallocate -p -o $((3 * 1048576)) -l $((2 * 1048576)) "$MNT/disk.raw"  # blocks 3 and 4: UNMAPPED
  cp "$MNT/disk.raw" shown.raw
  unmount_img
  put expect.raw 1048576 1048576 00
  put expect.raw $((2 * 1048576 + 4096)) 8192 00
  put expect.raw $((3 * 1048576)) $((2 * 1048576)) 00
  same_bytes shown.raw expect.raw
  [ "$(vhdx_py d.vhdx '[img.bat(b)[0] for b in range(6)]')" = "[6, 2, 6, 3, 3, 6]" ]
  check_clean d.vhdx
  qemu-img convert -f vhdx -O raw d.vhdx out.raw
  same_bytes out.raw expect.raw
}

@test "differencing: a punched block never shows the parent again (a new block of zeros); vhdimount agrees" {
  make_parent
  python3 "$MAKE_DIFF" p.vhdx p.raw c.vhdx expect.raw --plain 1
  mount_img --rw --discard=unmap c.vhdx "$MNT"
  fallocate -p -o $((3 * 1048576)) -l 1048576 "$MNT/disk.raw"       # not present: the parent's 0xaa
  fallocate -p -o 0 -l 1048576 "$MNT/disk.raw"                      # present: zeros written
  fallocate -p -o $((1048576 + 1024)) -l 4096 "$MNT/disk.raw"       # part of a partially present block
  unmount_img
  put expect.raw $((3 * 1048576)) 1048576 00
  put expect.raw 0 1048576 00
  put expect.raw $((1048576 + 1024)) 4096 00
  mount_img c.vhdx "$MNT"
  same_bytes "$MNT/disk.raw" expect.raw
  unmount_img
  vhdi_equals c.vhdx expect.raw
}

@test "dirty log: a --rw mount replays it onto the file; qemu-img check clean, the bytes as the log left them" {
  vhdx_dirty_image d --stale
  mount_img --rw d.vhdx "$MNT"
  same_bytes "$MNT/disk.raw" d.expect.raw
  grep -q "log: replayed onto the file at open (2 entries" "$MNT/info"
  unmount_img
  grep -q "the log (2 entries) was replayed onto the file" "$TMP/daemon.log"
  [ "$(vhdx_py d.vhdx 'img.log_guid == bytes(16)')" = True ]
  check_clean d.vhdx
  qemu-img convert -f vhdx -O raw d.vhdx out.raw
  same_bytes out.raw d.expect.raw
  mount_img d.vhdx "$MNT"
  grep -q "log: clean" "$MNT/info"
  unmount_img
}

@test "kill -9 between the log entry and the metadata it describes: read-only shows the replay, file untouched; QEMU and --rw replay it; check clean" {
  qemu-img create -q -f vhdx -o block_size=1M d.vhdx 16M
  fmt_io vhdx d.vhdx 'write -P 0x41 0 1M'
  head -c 65536 /dev/urandom > data.bin
  qemu-img convert -f vhdx -O raw d.vhdx expect.raw
  dd if=data.bin of=expect.raw bs=65536 seek=80 conv=notrunc status=none   # 5 MiB: block 5, not present
  local st0; st0=$(vhdx_py d.vhdx 'img.bat(5)[0]')   # ZERO as qemu-img makes it
  [ "$st0" -ne 6 ]
  echo "event=vhdx_log_written delay_ms=20000 once" > rules
  mount_img --rw --blkdebug rules d.vhdx "$MNT"
  dd if=data.bin of="$MNT/disk.raw" bs=65536 seek=80 conv=notrunc status=none 2>/dev/null &
  local writer=$! i
  for i in $(seq 1 100); do
    [ "$(vhdx_py d.vhdx 'img.log_guid != bytes(16)')" = True ] && break
    sleep 0.1
  done
  sleep 0.3
  kill -0 "$DAEMON_PID"
  kill_daemon -9
  kill -9 "$writer" 2>/dev/null || true; wait "$writer" 2>/dev/null || true
  # the entry and the header naming it are on the file, the BAT is not
  [ "$(vhdx_py d.vhdx 'img.log_guid != bytes(16)')" = True ]
  [ "$(vhdx_py d.vhdx 'img.bat(5)[0]')" -eq "$st0" ]
  local md5 mtime
  md5=$(md5sum < d.vhdx); mtime=$(stat -c %Y.%y d.vhdx)
  mount_img d.vhdx "$MNT"
  same_bytes "$MNT/disk.raw" expect.raw
  grep -q "log: replayed in memory (1 entries" "$MNT/info"
  unmount_img
  [ "$(md5sum < d.vhdx)" = "$md5" ]
  [ "$(stat -c %Y.%y d.vhdx)" = "$mtime" ]
  # QEMU replays the same entry (on a copy, qemu-img check -r all): the same bytes
  cp d.vhdx q.vhdx
  qemu-img check -r all q.vhdx > /dev/null
  qemu-img convert -f vhdx -O raw q.vhdx q.raw
  same_bytes q.raw expect.raw
  mount_img --rw d.vhdx "$MNT"
  same_bytes "$MNT/disk.raw" expect.raw
  unmount_img
  [ "$(vhdx_py d.vhdx 'img.bat(5)[0]')" -eq 6 ]
  check_clean d.vhdx
  qemu-img convert -f vhdx -O raw d.vhdx out.raw
  same_bytes out.raw expect.raw
}

@test "kill -9 during fsync'd random writes: 10 rounds, nothing fsynced lost; read-only views leave the file alone; check clean" {
  qemu-img create -q -f vhdx -o block_size=1M d.vhdx 16M
  local round writer md5
  for round in $(seq 1 10); do
    mount_img --rw d.vhdx "$MNT"
    : > "$TMP/log.$round"
    crash_writer "$MNT/disk.raw" "$TMP/log.$round" "$round" 2>/dev/null &
    writer=$!
    sleep "0.$((RANDOM % 8 + 2))"
    kill -0 "$DAEMON_PID"   # still alive: the load did not crash it
    kill_daemon -9
    kill -9 "$writer" 2>/dev/null || true; wait "$writer" 2>/dev/null || true
    md5=$(md5sum < d.vhdx)
    mount_img d.vhdx "$MNT"
    cp "$MNT/disk.raw" now.raw
    unmount_img
    [ "$(md5sum < d.vhdx)" = "$md5" ]
    crash_verify now.raw "$TMP/log.$round"
    mount_img --rw d.vhdx "$MNT"   # replays a log the kill left
    unmount_img
    check_clean d.vhdx
    qemu-img convert -f vhdx -O raw d.vhdx out.raw
    same_bytes out.raw now.raw
  done
}

# refused_rw IMAGE REASON: --rw refused with one line, the file unchanged; a read-only mount still opens.
refused_rw() {
  local md5; md5=$(md5sum < "$1")
  refused_open "$1" "$2" --rw
  [ "$(md5sum < "$1")" = "$md5" ]
  mount_img "$1" "$MNT"
  unmount_img
}

@test "damaged images are refused for --rw by one line and never written: BAT into metadata, overlapping blocks, a bitmap entry, a log over the headers, a log that cannot be replayed" {
  qemu-img create -q -f vhdx -o block_size=1M d.vhdx 8M
  fmt_io vhdx d.vhdx 'write -P 0x11 0 1M' 'write -P 0x12 2M 1M'
  local bat md b0 b2
  bat=$(vhdx_py d.vhdx 'img.bat_off'); md=$(vhdx_py d.vhdx 'img.md_off')
  b0=$(vhdx_py d.vhdx 'img.bat(0)[1]'); b2=$(vhdx_py d.vhdx 'img.bat(2)[1]')
  cp d.vhdx m.vhdx; patch_le m.vhdx $((bat + 8)) 8 $((md | 6))
  refused_rw m.vhdx "1 BAT entries are invalid (a reserved state, a block outside the file or over metadata, a sector bitmap where none belongs); refusing to write (a read-only mount reads the rest)"
  cp d.vhdx o.vhdx; patch_le o.vhdx $((bat + 16)) 8 $((b0 | 6))
  refused_rw o.vhdx "a payload block at file offset $b0 overlaps a payload block before it; refusing to write (a read-only mount reads it)"
  # a sector-bitmap entry in a disk without a parent (entry 4096 with 512-byte sectors and 1 MiB blocks)
  qemu-img create -q -f vhdx -o block_size=1M s.vhdx 8G
  patch_le s.vhdx $(( $(vhdx_py s.vhdx 'img.bat_off') + 4096 * 8 )) 8 $((b2 | 6))
  refused_rw s.vhdx "1 BAT entries are invalid"
  # a log entry that rewrites the region table (with its own bytes: a read-only replay still reads)
  qemu-img create -q -f vhdx -o block_size=1M x.vhdx 8M
  python3 - "$MAKE_LOG" x.vhdx <<'EOF'
import importlib.util, os, sys
spec = importlib.util.spec_from_file_location("mk", sys.argv[1]); mk = importlib.util.module_from_spec(spec)
sys.path.insert(0, os.path.dirname(sys.argv[1])); spec.loader.exec_module(mk)
v, path = mk.v, sys.argv[2]
img = v.Image(path)
guid, size = v.guid("6c0c1c2e-93b7-4e2b-8d3a-55aa55aa0002"), os.path.getsize(path)
e = mk.entry(img.seq + 5, 0, guid, size, size, [("data", 192 * 1024, img.read(192 * 1024, 4096))])
with open(path, "r+b") as f:
    f.seek(img.log_offset); f.write(e)
    for off in (64 * 1024, 128 * 1024):
        f.seek(off); h = bytearray(f.read(4096)); h[48:64] = guid; v.set_crc(h); f.seek(off); f.write(h)
EOF
  refused_rw x.vhdx "the log writes over the headers, the region tables or the log itself (file offset 196608); refusing to replay it onto the file (a read-only mount replays it in memory)"
  vhdx_dirty_image c --break-crc
  local md5; md5=$(md5sum < c.vhdx)
  refused_open c.vhdx "the header names a log (LogGuid set) but the log holds no valid sequence of entries" --rw
  [ "$(md5sum < c.vhdx)" = "$md5" ]
}

@test "images imgfuse create makes (fixed, dynamic, differencing): fio with 4 jobs and verification; check, convert, vhdimount agree" {
  "$IMGFUSE" create -f vhdx -o block_size=1M d.vhdx 64M
  rw_fio_then_check d.vhdx
  "$IMGFUSE" create -f vhdx -o subformat=fixed,block_size=8M f.vhdx 64M
  local size; size=$(stat -c %s f.vhdx)
  rw_fio_then_check f.vhdx
  [ "$(stat -c %s f.vhdx)" -eq "$size" ]   # a created fixed image's blocks are present: all in place
  # a differencing child created over a parent with data, written through a --rw mount
  "$IMGFUSE" create -f vhdx -o block_size=1M p.vhdx 64M
  mount_img --rw p.vhdx "$MNT"
  dd if=/dev/urandom of="$MNT/disk.raw" bs=1M count=40 conv=notrunc status=none
  unmount_img
  "$IMGFUSE" create -f vhdx -b p.vhdx c.vhdx
  mount_img --rw c.vhdx "$MNT"
  fio_verify "$MNT/disk.raw"
  cp "$MNT/disk.raw" shown.raw
  unmount_img
  mount_img c.vhdx "$MNT"
  same_bytes "$MNT/disk.raw" shown.raw
  unmount_img
  vhdi_equals c.vhdx shown.raw
  check_clean p.vhdx
}
