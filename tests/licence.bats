#!/usr/bin/env bats
# SPDX-License-Identifier: MIT
# licence.bats - the licence is stated: LICENSE is the MIT text, and every tracked source file (C,
# headers, shell, bats, Python, the Makefile, scripts/, the CI entry point and the test tools) carries
# an SPDX-License-Identifier line on line 1, or on line 2 after a shebang.

load helpers

setup() { cd "$BATS_TEST_DIRNAME/.."; }

# source_files: the tracked files that are code (test data, fuzz corpora and prose are not).
source_files() {
  git ls-files | while read -r f; do
    case "$f" in
      tests/data/*|tests/fuzz/corpus/*) continue ;;
      *.c|*.h|*.bats|*.py|*.bash|*.sh|Makefile|.ci/*|scripts/*|tests/tools/*|tests/make-hostile|tests/fuzz/make-seeds|completions/*|debian/rules) echo "$f" ;;
    esac
  done
}

# spdx_ok FILE: the SPDX line of FILE's kind where it belongs.
spdx_ok() {
  local f=$1 want line=1
  case "$f" in
    *.c|*.h) want='/* SPDX-License-Identifier: MIT */' ;;
    *) want='# SPDX-License-Identifier: MIT' ;;
  esac
  [ "$(head -c 2 "$f")" = '#!' ] && line=2
  [ "$(sed -n "${line}p" "$f")" = "$want" ]
}

@test "LICENSE is the MIT licence of the imgfuse authors" {
  head -1 LICENSE | grep -qx 'MIT License'
  grep -qx 'Copyright (c) 2026 the imgfuse authors' LICENSE
  grep -q 'THE SOFTWARE IS PROVIDED "AS IS", WITHOUT WARRANTY OF ANY KIND' LICENSE
}

@test "every tracked source file has its SPDX line on line 1 (line 2 after a shebang)" {
  [ -d .git ] || [ -f .git ]
  local n=0 bad=()
  while read -r f; do
    n=$((n + 1))
    spdx_ok "$f" || bad+=("$f")
  done < <(source_files)
  echo "checked $n files; without the SPDX line: ${bad[*]:-none}"
  [ "$n" -gt 100 ]
  [ ${#bad[@]} -eq 0 ]
}
