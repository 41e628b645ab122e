#!/usr/bin/env bats
# SPDX-License-Identifier: MIT
# install.bats - make install and make uninstall into a DESTDIR: install puts the binary, the man page
# and the bash completion under PREFIX (BINDIR and MANDIR move them), uninstall removes exactly those
# files; CFLAGS, CPPFLAGS and LDFLAGS given to make reach the compiler and the linker, and -Werror is
# only in the builds that ask for it (make check, make asan, .ci/run).

load helpers

setup() { setup_tmp; SRC=$(cd "$BATS_TEST_DIRNAME/.." && pwd); }
teardown() { teardown_tmp; }

# files_under DIR: the regular files and symlinks under DIR, relative, sorted.
files_under() { (cd "$1" && find . \( -type f -o -type l \) | sed 's|^\./||' | sort); }

@test "make install DESTDIR=... PREFIX=/usr installs the binary, the man page and the bash completion" {
  make -s -C "$SRC" install DESTDIR="$TMP/root" PREFIX=/usr >/dev/null
  run files_under "$TMP/root"
  echo "$output"
  [ "$output" = "$(printf '%s\n' usr/bin/imgfuse usr/share/bash-completion/completions/imgfuse usr/share/man/man1/imgfuse.1)" ]
  [ -x "$TMP/root/usr/bin/imgfuse" ]
  "$TMP/root/usr/bin/imgfuse" --version | grep -q '^imgfuse '
  cmp "$SRC/imgfuse.1" "$TMP/root/usr/share/man/man1/imgfuse.1"
  cmp "$SRC/completions/imgfuse.bash" "$TMP/root/usr/share/bash-completion/completions/imgfuse"
  [ "$(stat -c %a "$TMP/root/usr/share/man/man1/imgfuse.1")" = 644 ]
}

@test "make uninstall DESTDIR=... PREFIX=/usr leaves no file behind" {
  make -s -C "$SRC" install DESTDIR="$TMP/root" PREFIX=/usr >/dev/null
  touch "$TMP/root/usr/bin/other-program"       # not ours: must stay
  make -s -C "$SRC" uninstall DESTDIR="$TMP/root" PREFIX=/usr
  run files_under "$TMP/root"
  echo "$output"
  [ "$output" = usr/bin/other-program ]
}

@test "BINDIR and MANDIR move the files; the default PREFIX is /usr/local" {
  make -s -C "$SRC" install DESTDIR="$TMP/a" BINDIR=/opt/x/bin MANDIR=/opt/x/man/man1 >/dev/null
  [ -x "$TMP/a/opt/x/bin/imgfuse" ] && [ -f "$TMP/a/opt/x/man/man1/imgfuse.1" ]
  [ -f "$TMP/a/usr/local/share/bash-completion/completions/imgfuse" ]
  make -s -C "$SRC" uninstall DESTDIR="$TMP/a" BINDIR=/opt/x/bin MANDIR=/opt/x/man/man1
  [ -z "$(find "$TMP/a" -type f)" ]
}

@test "CFLAGS, CPPFLAGS and LDFLAGS reach the compiler and the linker; -Werror only when WERROR asks" {
  # a dry run (-n -B) of a build in a scratch BUILD dir: the commands make would run, nothing built
  run make -n -B -C "$SRC" BUILD="$TMP/b" CFLAGS="-O1 -DMARK_CFLAGS" CPPFLAGS=-DMARK_CPPFLAGS \
      LDFLAGS=-Wl,--mark-ldflags "$TMP/b/imgfuse"
  [ "$status" -eq 0 ]
  compile=$(grep -- ' -c -o ' <<<"$output" | head -1)
  link=$(grep -- "-o $TMP/b/imgfuse " <<<"$output")
  echo "compile: $compile"; echo "link: $link"
  [[ "$compile" == *-DMARK_CPPFLAGS* && "$compile" == *-DMARK_CFLAGS* && "$compile" == *-Wall* ]]
  [[ "$compile" != *-Werror* ]]
  [[ "$link" == *-Wl,--mark-ldflags* ]]
  run make -n -B -C "$SRC" BUILD="$TMP/b" WERROR=-Werror "$TMP/b/lib/util.o"
  [[ "$output" == *-Werror* ]]
  # make check and make asan build with -Werror, and so does the CI entry point
  make -n -C "$SRC" check | grep -q -- 'WERROR=-Werror imgfuse unit'
  make -n -C "$SRC" asan | grep -q -- 'WERROR=-Werror'
  grep -q -- '^make -j2 WERROR=-Werror imgfuse' "$SRC/.ci/run"
}
