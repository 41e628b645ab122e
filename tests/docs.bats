#!/usr/bin/env bats
# SPDX-License-Identifier: MIT
# tests/docs.bats - the man page: it renders with man and groff without a warning, it has the sections a
# user looks for (EXIT STATUS, ENVIRONMENT, FILES, EXAMPLES with every command, SEE ALSO), and it names
# every long option that `imgfuse --help` and each command's --help print. The options are read from the
# program at run time, so the test follows the command line as it changes.
load helpers

setup() { setup_tmp; }
teardown() { teardown_tmp; }

MAN_PAGE="$BATS_TEST_DIRNAME/../imgfuse.1"

# man_source: the page's text with roff's escapes for '-' and fonts taken out, so that "\-\-rw" and
# "\fB\-\-rw\fP" read as "--rw".
man_source() {
  sed -e 's/\\-/-/g' -e 's/\\f[BIRP]//g' -e 's/\\f(..//g' -e 's/\\&//g' "$MAN_PAGE"
}

# commands: the command words `imgfuse --help` lists in its usage lines ("imgfuse info ...").
commands() {
  "$IMGFUSE" --help | sed -n 's/^ *\(Usage: \)\{0,1\}imgfuse \([a-z][a-z]*\)\( .*\)\{0,1\}$/\2/p' | sort -u
}

@test "imgfuse.1 renders with man --warnings and groff -ww without a single warning" {
  LC_ALL=C MANWIDTH=80 man --warnings -l "$MAN_PAGE" > "$TMP/man.txt" 2> "$TMP/man.err"
  cat "$TMP/man.err"
  [ ! -s "$TMP/man.err" ]
  [ "$(wc -l < "$TMP/man.txt")" -gt 500 ]
  groff -ww -z -man "$MAN_PAGE" 2> "$TMP/groff.err"
  cat "$TMP/groff.err"
  [ ! -s "$TMP/groff.err" ]
}

@test "imgfuse.1 has EXIT STATUS, ENVIRONMENT (TMPDIR), FILES (/etc/fuse.conf), EXAMPLES of every command, SEE ALSO" {
  LC_ALL=C MANWIDTH=200 man -l "$MAN_PAGE" > "$TMP/man.txt" 2> /dev/null
  for s in NAME SYNOPSIS DESCRIPTION OPTIONS "EXIT STATUS" ENVIRONMENT FILES EXAMPLES "SEE ALSO"; do
    grep -qx "$s" "$TMP/man.txt" || { echo "no section $s"; false; }
  done
  section() { sed -n "/^$1\$/,/^[A-Z][A-Z ]*\$/p" "$TMP/man.txt"; }
  section ENVIRONMENT | grep -qE '^ *TMPDIR( |$)'
  section FILES | grep -q '/etc/fuse.conf'
  section FILES | grep -q 'user_allow_other'
  for code in 0 1 2; do
    section "EXIT STATUS" | grep -qE "^ *$code( |\$)" || { echo "EXIT STATUS lacks $code"; false; }
  done
  section EXAMPLES > "$TMP/examples.txt"
  for c in $(commands); do
    grep -qE "^ *imgfuse $c( |\$)" "$TMP/examples.txt" || { echo "no example of imgfuse $c"; false; }
  done
  grep -qE '^ *imgfuse (-[^ ]+ )*[^ -][^ ]* [^ ]+' "$TMP/examples.txt"      # a mount
  grep -q ' fuse.imgfuse ' "$TMP/examples.txt"                             # an fstab line
  grep -q 'fusermount3 -u' "$TMP/examples.txt"                             # unprivileged use
  for ref in 'losetup(8)' 'fstab(5)' 'mount.fuse3(8)' 'qemu-img(1)' 'qemu-storage-daemon(1)' 'fusermount3(1)'; do
    section "SEE ALSO" | grep -qF "$ref" || { echo "SEE ALSO lacks $ref"; false; }
  done
}

@test "every long option that imgfuse --help and each command's --help print appears in imgfuse.1" {
  man_source > "$TMP/man.src"
  "$IMGFUSE" --help > "$TMP/help.txt"
  [ "$(commands | wc -l)" -ge 6 ]
  for c in $(commands); do
    "$IMGFUSE" "$c" --help >> "$TMP/help.txt" || { echo "imgfuse $c --help failed"; false; }
  done
  grep -oE -- '--[a-z][a-z0-9-]*[a-z0-9]' "$TMP/help.txt" | sort -u > "$TMP/options"
  [ "$(wc -l < "$TMP/options")" -ge 30 ]
  missing=0
  while read -r opt; do
    grep -qE -- "$opt([^a-z0-9-]|\$)" "$TMP/man.src" || { echo "imgfuse.1 does not name $opt"; missing=1; }
  done < "$TMP/options"
  [ "$missing" -eq 0 ]
}
