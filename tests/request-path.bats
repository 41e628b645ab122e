#!/usr/bin/env bats
# request-path.bats - the block layer's request-path features as seen through the mount: statistics in
# MNT/stats.json (exact byte counts of what a test did).

load helpers

setup() { setup_tmp; cd "$TMP"; }
teardown() { teardown_tmp; }

# stat_of NODE_DEPTH ROLE KEY: one counter from MNT/stats.json.
stat_of() {
  python3 -c '
import json, sys
d = json.load(open(sys.argv[1]))
n = [n for n in d["nodes"] if n["depth"] == int(sys.argv[2]) and n["role"] == sys.argv[3]][0]
print(n[sys.argv[4]])' "$MNT/stats.json" "$@"
}

@test "stats.json counts exactly the bytes read and written through disk.raw (O_DIRECT)" {
  truncate -s 8M s.raw
  mount_img --rw s.raw "$MNT"
  [ "$(stat_of 0 format rd_bytes)" -eq 0 ]
  python3 - "$MNT/disk.raw" <<'EOF'
import mmap, os, sys
fd = os.open(sys.argv[1], os.O_RDWR | os.O_DIRECT)
buf = mmap.mmap(-1, 1048576)
buf.write(b"\x42" * 1048576)
assert os.pwritev(fd, [memoryview(buf)[:65536]], 1048576) == 65536
assert os.pwritev(fd, [memoryview(buf)[:4096]], 4096) == 4096
assert os.preadv(fd, [buf], 0) == 1048576
assert os.preadv(fd, [memoryview(buf)[:8192]], 2097152) == 8192
os.fsync(fd)
os.close(fd)
EOF
  [ "$(stat_of 0 format rd_bytes)" -eq $((1048576 + 8192)) ]
  [ "$(stat_of 0 format rd_ops)" -eq 2 ]
  [ "$(stat_of 0 format wr_bytes)" -eq $((65536 + 4096)) ]
  [ "$(stat_of 0 format wr_ops)" -eq 2 ]
  [ "$(stat_of 0 format flush_ops)" -ge 1 ]
  [ "$(stat_of 0 file wr_bytes)" -eq $((65536 + 4096)) ]
  unmount_img
}
