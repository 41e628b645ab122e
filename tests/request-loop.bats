#!/usr/bin/env bats
# SPDX-License-Identifier: MIT
# request-loop.bats - fuse/loop.c, the daemon's request loop: at one request in flight one thread serves
# them all (no wake-up of another thread per request), and a request that takes long does not hold up
# the others.

load helpers

setup() { setup_tmp; cd "$TMP"; }
teardown() { teardown_tmp; }

# wakeups PID: "TID voluntary-context-switches" for each thread of PID.
wakeups() {
  local t
  for t in /proc/"$1"/task/*; do echo "${t##*/} $(awk '/^voluntary_ctxt_switches/ { print $2 }' "$t/status")"; done | sort
}

@test "one request in flight: one thread serves every request" {
  head -c 16777216 /dev/urandom > d.raw
  mount_img d.raw "$MNT"
  dd if="$MNT/disk.raw" of=/dev/null bs=4k count=16 iflag=direct status=none
  wakeups "$DAEMON_PID" > before
  # 4000 O_DIRECT reads, one after the other: 4000 requests with one in flight
  dd if="$MNT/disk.raw" of=out bs=4k count=4000 iflag=direct status=none
  wakeups "$DAEMON_PID" > after
  cmp out <(head -c 16384000 d.raw)
  # threads woken for at least an eighth of the requests (libfuse's loop: each of two or three)
  busy=$(join before after | awk '$3 - $2 >= 500' | wc -l)
  echo "threads woken 500+ times: $busy" >&3
  join before after >&3
  [ "$busy" -le 1 ]
  unmount_img
}

@test "a request that takes long does not hold up the others" {
  head -c 4194304 /dev/urandom > t.raw
  echo "event=read delay_ms=3000 offset=2097152 length=4096 always" > rules
  mount_img --blkdebug rules t.raw "$MNT"
  # the read of that range waits in the daemon for 3 s; reads elsewhere must not wait behind it
  dd if="$MNT/disk.raw" of=/dev/null bs=4k skip=512 count=1 iflag=direct status=none &
  slow=$!
  sleep 0.3
  start=$(date +%s%N)
  dd if="$MNT/disk.raw" of=out bs=4k skip=16 count=16 iflag=direct status=none
  stat "$MNT/disk.raw" > /dev/null
  took=$(( ($(date +%s%N) - start) / 1000000 ))
  echo "16 reads and a stat took $took ms" >&3
  cmp out <(head -c 131072 t.raw | tail -c 65536)
  [ "$took" -lt 1500 ]
  kill -0 "$slow"   # still waiting
  wait "$slow"
  unmount_img
}
