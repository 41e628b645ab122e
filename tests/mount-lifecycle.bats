#!/usr/bin/env bats
# SPDX-License-Identifier: MIT
# mount-lifecycle.bats - what is left when a mount ends: the unmount watcher removes the mount of a
# daemon killed with kill -9 for an unprivileged user, for a mount point whose escaped name is longer
# than 4,095 bytes, and when the kill is aimed at every imgfuse process or the daemon's whole process
# group at once; `imgfuse unmount` returns only when the daemon has exited (its locks released), says
# why when it cannot unmount, and --pid-file names the daemon while it runs.

load helpers

setup() { setup_tmp; cd "$TMP"; }
teardown() { teardown_tmp; }

# start_own_group IMAGE MOUNTPOINT: the daemon in the foreground as the leader of its own process group
# (as the detached daemon is); sets DAEMON_PID and waits for the mount.
start_own_group() {
  setsid "$IMGFUSE" --foreground "$1" "$2" >"$TMP/daemon.log" 2>&1 3>&- &
  DAEMON_PID=$!
  MOUNTED=$2
  wait_mounted "$2" 200 0.02 || { cat "$TMP/daemon.log" >&2; return 1; }
}

@test "an unprivileged user (no --allow-other): imgfuse unmount works, and after kill -9 the mount is removed" {
  user=$(test_user)
  chmod 755 "$TMP"
  head -c 1048576 /dev/urandom > u.raw
  chown "$user" u.raw "$MNT" "$TMP"
  # A private mount namespace with a /dev/fuse the user may open (Debian's udev makes it 0666; this
  # machine's is 0600), so nothing outside the test changes.
  cat > user.sh <<EOS
set -e
mknod -m 0666 "$TMP/fuse" c 10 229
mount --bind "$TMP/fuse" /dev/fuse
runuser -u "$user" -- "$IMGFUSE" --pid-file "$TMP/u.pid" u.raw "$MNT"
pid=\$(cat "$TMP/u.pid")
runuser -u "$user" -- "$IMGFUSE" unmount "$MNT"     # through fusermount3 -u
[ ! -e /proc/\$pid ] || grep -q '^State:[[:space:]]*Z' /proc/\$pid/status
! grep " $MNT fuse" /proc/self/mounts || false
runuser -u "$user" -- "$IMGFUSE" u.raw "$MNT"
runuser -u "$user" -- cmp "$MNT/disk.raw" u.raw
pid=\$(pgrep -u "$user" -x imgfuse)
[ -n "\$pid" ]
kill -9 \$pid
for i in \$(seq 1 200); do grep -q " $MNT fuse" /proc/self/mounts || break; sleep 0.05; done
! grep " $MNT fuse" /proc/self/mounts || false
runuser -u "$user" -- stat "$MNT" >/dev/null
EOS
  run timeout 60 unshare -m --propagation private bash user.sh
  echo "$output"
  [ "$status" -eq 0 ]
}

@test "kill -9 with a mount point whose escaped name is over 4,095 bytes: the mount is removed" {
  head -c 1048576 /dev/urandom > l.raw
  # each space is one byte here and four (\040) in /proc/self/mountinfo
  deep=$TMP
  for i in 1 2 3 4 5 6; do deep="$deep/d$(printf '%*s' 200 '')"; done
  mkdir -p "$deep/mnt"
  [ "$(printf '%s' "$deep/mnt" | wc -c)" -lt 4096 ]
  [ "$(printf '%s' "$deep/mnt" | sed 's/ /\\040/g' | wc -c)" -gt 4095 ]
  mount_img l.raw "$deep/mnt"
  cmp "$deep/mnt/disk.raw" l.raw
  kill -9 "$DAEMON_PID"; wait "$DAEMON_PID" 2>/dev/null || true; DAEMON_PID=
  wait_gone "$deep/mnt"
  wait_unmount_helper "$(realpath "$deep/mnt")"
}

@test "a mount point whose real name is over 4,095 bytes is refused with one line, nothing mounted" {
  head -c 4096 /dev/urandom > r.raw
  name=$(printf 'd%.0s' $(seq 1 220))
  for i in $(seq 1 20); do mkdir "$name"; cd "$name"; done
  mkdir mnt
  run "$IMGFUSE" --foreground "$TMP/r.raw" mnt
  echo "$output"
  [ "$status" -eq 2 ]
  [ "${#lines[@]}" -eq 1 ]
  [[ "${lines[0]}" == "imgfuse: mnt: "* ]]
  nothing_mounted "$TMP/d"
  cd "$TMP"
}

@test "pkill -9 imgfuse right after mounting: the watcher is not matched and removes the mount" {
  head -c 1048576 /dev/urandom > p.raw
  for round in $(seq 1 10); do
    start_own_group p.raw "$MNT"
    # what pkill -9 imgfuse does, narrowed to this daemon and its children (other mounts may be running)
    ours=" $DAEMON_PID $(cat /proc/"$DAEMON_PID"/task/*/children 2>/dev/null) "
    for p in $(pgrep imgfuse); do [[ "$ours" == *" $p "* ]] && kill -9 "$p"; done
    wait "$DAEMON_PID" 2>/dev/null || true; DAEMON_PID=
    wait_gone "$MNT"
    wait_unmount_helper "$(realpath "$MNT")"
  done
}

@test "kill -9 of the daemon's whole process group right after mounting: the mount is removed" {
  head -c 1048576 /dev/urandom > g.raw
  for round in $(seq 1 10); do
    start_own_group g.raw "$MNT"
    kill -9 -- -"$DAEMON_PID"
    wait "$DAEMON_PID" 2>/dev/null || true; DAEMON_PID=
    wait_gone "$MNT"
    wait_unmount_helper "$(realpath "$MNT")"
  done
}

@test "imgfuse unmount returns when the daemon has released the image: qemu-img check at once, 30 times" {
  qemu-img create -q -f qcow2 img.qcow2 256M
  head -c 8388608 /dev/urandom > chunk
  # 8 MiB unflushed in the host's page cache makes the daemon's final flush take a while: after
  # fusermount3 -u an immediate qemu-img check found the image still locked (3 of 10 here).
  for round in $(seq 1 30); do
    "$IMGFUSE" --rw img.qcow2 "$MNT"
    dd if=chunk of="$MNT/disk.raw" bs=1M seek=$((round % 30 * 8)) conv=notrunc status=none
    run "$IMGFUSE" unmount "$MNT"
    [ "$status" -eq 0 ] && [ -z "$output" ] || { echo "round $round: $output"; false; }
    run qemu-img check img.qcow2
    [ "$status" -eq 0 ] || { echo "round $round: $output"; false; }
  done
  qemu-img convert -O raw img.qcow2 out.raw
  cmp -n 8388608 out.raw chunk
  cmp -n 8388608 -i $((232 * 1048576)):0 out.raw chunk
}

@test "--pid-file holds the daemon's pid while it runs and is gone once imgfuse unmount returns" {
  head -c 1048576 /dev/urandom > p.raw
  "$IMGFUSE" --pid-file run.pid p.raw "$MNT"
  pid=$(cat run.pid)
  [ "$(cat /proc/"$pid"/comm)" = imgfuse ]
  # the process named is the one serving the mount: it holds /dev/fuse and the image
  ls -l /proc/"$pid"/fd | grep -q ' -> /dev/fuse$'
  ls -l /proc/"$pid"/fd | grep -q " -> $TMP/p.raw$"
  cmp "$MNT/disk.raw" p.raw
  run "$IMGFUSE" unmount "$MNT"
  [ "$status" -eq 0 ]
  [ ! -e run.pid ]
  process_gone "$pid"
  ! mountpoint -q "$MNT"
}

@test "imgfuse unmount: one line and exit 2 for a directory that is not mounted or a mount of another kind" {
  run "$IMGFUSE" unmount "$MNT"
  [ "$status" -eq 2 ]
  [ "$output" = "imgfuse: $MNT: not mounted" ]
  run "$IMGFUSE" unmount "$TMP/missing"
  [ "$status" -eq 2 ]
  [ "$output" = "imgfuse: $TMP/missing: No such file or directory" ]
  mount -t tmpfs -o size=1M tmpfs "$MNT"
  run "$IMGFUSE" unmount "$MNT"
  umount "$MNT"
  [ "$status" -eq 2 ]
  [ "$output" = "imgfuse: $MNT: not an imgfuse mount (tmpfs)" ]
  run "$IMGFUSE" unmount
  [ "$status" -eq 2 ]
  [ "${#lines[@]}" -eq 1 ]
}

@test "imgfuse unmount of a mount in use: exit 1, one line naming the process; then it unmounts" {
  head -c 1048576 /dev/urandom > b.raw
  mount_img b.raw "$MNT"
  sleep 600 <"$MNT/disk.raw" 3>&- &
  holder=$!
  run "$IMGFUSE" unmount "$MNT"
  kill "$holder"; wait "$holder" 2>/dev/null || true
  echo "$output"
  [ "$status" -eq 1 ]
  [ "$output" = "imgfuse: $MNT: busy: in use by $holder (sleep)" ]
  mountpoint -q "$MNT"
  run "$IMGFUSE" unmount "$MNT"
  [ "$status" -eq 0 ]
  ! kill -0 "$DAEMON_PID" 2>/dev/null || false
  wait "$DAEMON_PID"; DAEMON_PID=
}

@test "imgfuse unmount removes a dead mount (daemon and its watcher both killed by pid)" {
  head -c 1048576 /dev/urandom > d.raw
  mount_img d.raw "$MNT"
  watcher=$(ps -o pid=,comm= --ppid "$DAEMON_PID" | awk '$2 == "imgf-unmount" { print $1 }')
  [ -n "$watcher" ]
  kill -9 "$watcher"
  kill -9 "$DAEMON_PID"; wait "$DAEMON_PID" 2>/dev/null || true; DAEMON_PID=
  run stat "$MNT/disk.raw"
  echo "$output"
  [[ "$output" == *"Transport endpoint is not connected"* ]]
  run "$IMGFUSE" unmount "$MNT"
  [ "$status" -eq 0 ]
  [ -z "$output" ]
  wait_gone "$MNT"
}

@test "imgfuse unmount --timeout: a daemon that does not answer gives one line and exit 1, the mount intact" {
  head -c 1048576 /dev/urandom > t.raw
  mount_img t.raw "$MNT"
  kill -STOP "$DAEMON_PID"
  run timeout 30 "$IMGFUSE" unmount --timeout 1 "$MNT"
  kill -CONT "$DAEMON_PID"
  echo "$output"
  [ "$status" -eq 1 ]
  [ "$output" = "imgfuse: $MNT: timeout: its daemon has not answered after 1 s" ]
  cmp "$MNT/disk.raw" t.raw
  run "$IMGFUSE" unmount --timeout 10 "$MNT"
  [ "$status" -eq 0 ]
  wait "$DAEMON_PID"; DAEMON_PID=
}

@test "file mode: imgfuse unmount, --pid-file, and the watcher after kill -9 all work on a file mount point" {
  head -c 1048576 /dev/urandom > f.raw
  : > view
  "$IMGFUSE" --pid-file f.pid f.raw view
  cmp view f.raw
  pid=$(cat f.pid)
  run "$IMGFUSE" unmount view
  [ "$status" -eq 0 ]
  process_gone "$pid"
  [ ! -e f.pid ] && [ ! -s view ]
  mount_img f.raw "$TMP/view"
  kill -9 "$DAEMON_PID"; wait "$DAEMON_PID" 2>/dev/null || true; DAEMON_PID=
  wait_gone "$TMP/view"
  [ ! -s view ]
}

@test "a busy mount point whose mountinfo line is over 8 KiB is still refused: one line, nothing stacked" {
  head -c 1048576 /dev/urandom > b.raw
  # each space is one byte in the real name and four (\040) in /proc/self/mountinfo
  deep=$TMP
  for i in $(seq 1 14); do deep="$deep/d$(printf '%*s' 200 '')"; done
  mkdir -p "$deep/mnt"
  [ "$(printf '%s' "$deep/mnt" | wc -c)" -lt 4096 ]
  [ "$(printf '%s' "$deep/mnt" | sed 's/ /\\040/g' | wc -c)" -gt 8192 ]
  mount_img b.raw "$deep/mnt"
  run timeout 20 "$IMGFUSE" b.raw "$deep/mnt"
  echo "${output:0:200}"
  # a second mount stacked on the first (the failure this guards against) is removed before asserting
  [ "$status" -eq 0 ] && { "$IMGFUSE" unmount "$deep/mnt" || fusermount3 -u "$deep/mnt"; }
  [ "$status" -eq 2 ]
  [ "${#lines[@]}" -eq 1 ]
  [ "$output" = "imgfuse: $deep/mnt: already a mount point (busy)" ]
  [ "$(grep -c ' fuse.imgfuse ' /proc/self/mountinfo | tr -d ' ')" -ge 1 ]
  cmp "$deep/mnt/disk.raw" b.raw
  unmount_img "$deep/mnt"
}
