# SPDX-License-Identifier: MIT
# completions/imgfuse.bash - bash completion for imgfuse, installed as
# share/bash-completion/completions/imgfuse. It keeps no list of its own: commands, the options of each
# command, their value names and fixed choices (--cache=writeback|none), the driver options for -o and
# the format names for -f/-F/--backing-format all come from the help (`imgfuse [CMD] --help`) and
# `imgfuse --version` of the imgfuse being completed, so they stay in step with the binary. Images and
# other FILE/PATH arguments complete as file names, DIR and MOUNTPOINT as directories. Needs only bash
# (the bash-completion package is not required).

# _imgfuse_help PROG [CMD]: the help text of PROG, or of its command CMD.
_imgfuse_help() {
  if [ -n "${2:-}" ]; then "$1" "$2" --help 2>&1; else "$1" --help 2>&1; fi
}

# _imgfuse_commands PROG: the command words the usage lines show (imgfuse info ..., imgfuse map ...).
_imgfuse_commands() {
  _imgfuse_help "$1" | sed -nE 's/^(Usage:)? *imgfuse ([a-z][a-z-]*)( .*|$)/\2/p' | sort -u
}

# _imgfuse_optcols HELP CMD: the option column of each option line of HELP, and for a command the
# usage line of that command (so "-f, --format FMT" and "[-b BACKING -F FMT]" both count).
_imgfuse_optcols() {
  printf '%s\n' "$1" | sed -nE 's/^ +(-[^ ].*)$/\1/p' | sed -E 's/ {2,}.*//'
  [ -n "$2" ] && printf '%s\n' "$1" | grep -E "^(Usage:)? *imgfuse $2( |$)"
}

# _imgfuse_options HELP CMD: option names; one that takes its value after '=' keeps the '='.
_imgfuse_options() {
  _imgfuse_optcols "$1" "$2" | grep -oE '(^|[][ ,|])--?[A-Za-z][A-Za-z0-9-]*=?' | sed -E 's/^[][ ,|]//' | sort -u
}

# _imgfuse_metavar HELP CMD OPT: what OPT takes (FILE, DIR, FMT, N, ...), or the fixed choices a|b|c.
_imgfuse_metavar() {
  local col
  while read -r col; do
    if [[ " $col " =~ [^A-Za-z0-9-]$3[\ =]([A-Za-z0-9_|,-]+) ]]; then echo "${BASH_REMATCH[1]}"; return; fi
    if [[ "$col" =~ (^|[ ,])$3,\ --[a-z-]+\ ([A-Z]+) ]]; then echo "${BASH_REMATCH[2]}"; return; fi
  done < <(_imgfuse_optcols "$1" "$2")
}

# _imgfuse_o_words HELP: the words -o takes on a mount: FUSE's, the drivers' KEY= and, when the help
# says every mount option is also -o NAME[=VALUE], the long options' names (NAME= for those with a value).
_imgfuse_o_words() {
  printf '%s\n' ro rw allow_other direct_io
  printf '%s\n' "$1" | sed -nE 's/^ +([a-z0-9]+\.[a-z0-9-]+=).*/\1/p'
  printf '%s\n' "$1" | grep -q -- '-o NAME\[=VALUE\]' || return 0
  _imgfuse_optcols "$1" "" | grep -oE -- '--[a-z][a-z0-9-]*(=[^ ,]+| [A-Z][A-Z_]*)?' |
    sed -E 's/^--//; s/[= ].*/=/' | grep -vxE 'help|version'
}

# _imgfuse_values PROG HELP CMD OPT CUR [PREFIX]: sets COMPREPLY to what may follow OPT, each
# reply starting with PREFIX ("--opt=" when the line was not split at '=').
_imgfuse_values() {
  local meta
  meta=$(_imgfuse_metavar "$2" "$3" "$4")
  case "$meta" in
    FMT|FORMAT) COMPREPLY=($(compgen -W "$("$1" --version 2>/dev/null | sed -n 's/^formats: //p')" -- "$5")) ;;
    DIR|MOUNTPOINT) compopt -o filenames 2>/dev/null; COMPREPLY=($(compgen -d -- "$5")) ;;
    FILE|PATH|IMAGE|BACKING|RULES) compopt -o filenames 2>/dev/null; COMPREPLY=($(compgen -f -- "$5")) ;;
    OPTS) [ -z "$3" ] || [ "$3" = mount ] || return 0      # create -o: the format's options
          local pre=
          [[ "$5" == *,* ]] && pre=${5%,*},
          COMPREPLY=($(compgen -P "$pre" -W "$(_imgfuse_o_words "$2" | sort -u)" -- "${5##*,}"))
          compopt -o nospace 2>/dev/null ;;
    *'|'*) COMPREPLY=($(compgen -P "${6:-}" -W "${meta//|/ }" -- "$5")) ;;
    *) COMPREPLY=() ;;
  esac
}

_imgfuse() {
  local prog=${COMP_WORDS[0]} cword=$COMP_CWORD cmd= help opt= pfx=
  local cur=${COMP_WORDS[cword]} prev=${COMP_WORDS[cword-1]:-}
  COMPREPLY=()
  # '=' splits words: "--cache" "=" "wr"; an unsplit "--cache=wr" when COMP_WORDBREAKS lacks '='
  if [ "$cur" = "=" ]; then opt=$prev; cur=
  elif [ "$prev" = "=" ] && [ "$cword" -ge 2 ]; then opt=${COMP_WORDS[cword-2]}
  elif [[ "$cur" == --*=* ]]; then opt=${cur%%=*}; pfx=$opt=; cur=${cur#*=}
  fi
  if [ "$cword" -gt 1 ] && _imgfuse_commands "$prog" | grep -qx -- "${COMP_WORDS[1]}"; then cmd=${COMP_WORDS[1]}; fi
  help=$(_imgfuse_help "$prog" "$cmd")
  [ -z "$opt" ] && [[ "$prev" == -* ]] && opt=$prev
  if [ -n "$opt" ] && [ -n "$(_imgfuse_metavar "$help" "$cmd" "$opt")" ]; then
    _imgfuse_values "$prog" "$help" "$cmd" "$opt" "$cur" "$pfx"
    return 0
  fi
  if [[ "$cur" == -* ]]; then
    COMPREPLY=($(compgen -W "$(_imgfuse_options "$help" "$cmd")" -- "$cur"))
    [[ "${COMPREPLY[*]}" == *= ]] && compopt -o nospace 2>/dev/null
    return 0
  fi
  compopt -o filenames 2>/dev/null
  if [ "$cword" -eq 1 ]; then
    COMPREPLY=($(compgen -W "$(_imgfuse_commands "$prog")" -- "$cur") $(compgen -f -- "$cur"))
  elif [ "$cmd" = unmount ]; then
    COMPREPLY=($(compgen -d -- "$cur"))
  else
    COMPREPLY=($(compgen -f -- "$cur"))
  fi
  return 0
}
complete -F _imgfuse imgfuse
