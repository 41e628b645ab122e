#!/usr/bin/env bats
# SPDX-License-Identifier: MIT
# completion.bats - completions/imgfuse.bash, sourced into this shell and called as bash would call it
# for a TAB: commands, the options of a command, fixed choices, format names, files and directories.
# The expected words are read from the same imgfuse's help and --version, so they are compared with
# what the binary really accepts, not with a copy.

load helpers

setup() {
  setup_tmp; cd "$TMP"
  source "$BATS_TEST_DIRNAME/../completions/imgfuse.bash"
  mkdir dir1 dir2; touch disk.qcow2 disk.vmdk notes.txt
}
teardown() { teardown_tmp; }

# comp WORD...: COMPREPLY for the command line "imgfuse WORD..." with the cursor on the last word,
# sorted, one line.
comp() {
  COMP_WORDS=("$IMGFUSE" "$@"); COMP_CWORD=$#; COMPREPLY=()
  _imgfuse
  printf '%s\n' "${COMPREPLY[@]}" | sort | xargs
}

@test "completion: 'complete -p imgfuse' names the function" {
  complete -p imgfuse | grep -q -- '-F _imgfuse imgfuse$'
}

@test "completion: the first word offers every command and the files" {
  run comp ""
  echo "$output"
  for c in info map create snapshot hash unmount; do [[ " $output " == *" $c "* ]]; done
  [[ " $output " == *" disk.qcow2 "* ]] && [[ " $output " == *" dir1 "* ]]
  [ "$(comp cr)" = create ]
  [ "$(comp disk.q)" = disk.qcow2 ]
}

@test "completion: mount options, with '=' kept for those that take a choice, and the choices" {
  [[ " $(comp --r) " == *" --rw "* ]] && [[ " $(comp --r) " != *" --cache="* ]]
  [ "$(comp --cach)" = --cache= ]
  [ "$(comp --cac)" = "--cacert --cache=" ]
  [ "$(comp --cache = "")" = "none writeback" ]
  [ "$(comp --detect-zeroes = u)" = unmap ]
  [ "$(comp --on-read-error=z)" = --on-read-error=zero ]
  run comp --
  for o in --rw --overlay --snapshot --backing-dir --foreground --allow-other --help --version; do
    [[ " $output " == *" $o "* ]] || { echo "missing $o in: $output"; false; }
  done
}

@test "completion: format names after -f, --format, --backing-format and create -F are imgfuse --version's" {
  formats=$("$IMGFUSE" --version | sed -n 's/^formats: //p' | tr ' ' '\n' | sort | xargs)
  [ -n "$formats" ]
  [ "$(comp -f "")" = "$formats" ]
  [ "$(comp --format "")" = "$formats" ]
  [ "$(comp --backing-format "")" = "$formats" ]
  [ "$(comp create -f qc)" = "qcow qcow2" ]
  [ "$(comp create -F "")" = "$formats" ]
}

@test "completion: each command's own options, and files or directories as its arguments need" {
  [[ " $(comp info --) " == *" --json "* ]]
  [[ " $(comp map --) " == *" --json "* ]]
  for o in -a -c -d -l; do [[ " $(comp snapshot -) " == *" $o "* ]]; done
  [ "$(comp hash --algo "")" = "md5 sha1 sha256" ]
  [ "$(comp unmount --t)" = --timeout ]
  [ "$(comp unmount "")" = "dir1 dir2 mnt" ]
  [ "$(comp --backing-dir "")" = "dir1 dir2 mnt" ]
  [ "$(comp --overlay disk.v)" = disk.vmdk ]
  [ "$(comp info disk)" = "disk.qcow2 disk.vmdk" ]
  [ "$(comp disk.qcow2 d)" = "dir1 dir2 disk.qcow2 disk.vmdk" ]
  [ -z "$(comp --offset "")" ]
}

@test "completion: -o offers the FUSE words and the drivers' options from the help" {
  run comp -o ""
  echo "$output"
  [[ " $output " == *" ro "* ]]
  "$IMGFUSE" --help | grep -q 'qcow2.l2-cache-size='
  [[ " $output " == *" qcow2.l2-cache-size= "* ]]
  [ "$(comp -o ro,qcow2.l2)" = ro,qcow2.l2-cache-size= ]     # after a comma, as in an fstab line
  [ -z "$(comp create -o "")" ]                               # create -o takes the format's options
}

@test "completion: where the help says every mount option is also -o NAME[=VALUE], -o offers their names" {
  # a stand-in whose help has that sentence: what is offered follows the help, not a list
  cat > "$TMP/fake" <<'EOS'
#!/bin/sh
case "$1" in --version) echo 'imgfuse 9'; echo 'formats: raw qcow2' ;;
*) cat <<'EOH'
Usage: imgfuse [OPTIONS] IMAGE MOUNTPOINT
  -f, --format FMT           format
      --backing-dir DIR      look there too
      --overlay FILE         writes go there
      --cache=writeback|none       cache mode
      --foreground           stay
  -o OPTS                    mount options NAME[=VALUE], comma separated
Every mount option is also -o NAME[=VALUE] (fstab).
EOH
esac
EOS
  chmod +x "$TMP/fake"
  IMGFUSE=$TMP/fake
  [ "$(comp -o ro,ov)" = ro,overlay= ]
  [ "$(comp -o back)" = backing-dir= ]
  [ "$(comp -o fo)" = "foreground format=" ]
  [ "$(comp -o ca)" = cache= ]
  [ "$(comp -f "")" = "qcow2 raw" ]
}
