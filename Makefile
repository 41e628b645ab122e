# SPDX-License-Identifier: MIT
# imgfuse build. Sources are found by directory: a new driver is one new file under drivers/ (or a
# folder for a big one) plus its line in lib/drivers.c.
CC      ?= cc
PREFIX  ?= /usr/local
BINDIR  ?= $(PREFIX)/bin
MANDIR  ?= $(PREFIX)/share/man/man1
BASHCOMPDIR ?= $(PREFIX)/share/bash-completion/completions
# -Werror only where warnings must fail the build: make check, make asan and .ci/run set WERROR=-Werror;
# a user's or a packager's build with another compiler still builds with warnings.
WERROR  ?=
PKGS    := fuse3 zlib libzstd libdeflate blkid libewf libbfio libxml-2.0 liblzma liblz4 lzo2 libnbd libcurl jansson libargon2 nettle
CFLAGS  ?= -O2 -g
# librbd, librados (librbd-dev): headers only, no pkg-config file; drivers/rbd.c loads the libraries with dlopen
# when an rbd: image is opened, so that neither the binary nor the .deb depends on Ceph.
# libcrypto: headers only; `imgfuse hash` and the luks driver load the library themselves (fuse/commands.c,
# drivers/luks/ossl.c say why); jansson (LUKS2 metadata), libargon2 (LUKS2 key slots) and nettle (LUKS's
# serpent and twofish) are linked
override CFLAGS += -std=c11 -D_GNU_SOURCE -D_FILE_OFFSET_BITS=64 -Wall -Wextra $(WERROR) -Iinclude \
           $(shell pkg-config --cflags $(PKGS) libcrypto)
LDLIBS  += $(shell pkg-config --libs $(PKGS)) -lbz2 -laio -lpthread -ldl
BUILD   ?= build

CORE_SRC := $(wildcard lib/*.c) $(wildcard drivers/*.c) $(wildcard drivers/*/*.c)
FUSE_SRC := $(wildcard fuse/*.c)
CORE_OBJ := $(CORE_SRC:%.c=$(BUILD)/%.o)
FUSE_OBJ := $(FUSE_SRC:%.c=$(BUILD)/%.o)
UNIT_SRC := $(wildcard tests/unit/test-*.c)
UNIT_BIN := $(UNIT_SRC:tests/unit/%.c=$(BUILD)/tests/%)

.PHONY: all clean check asan install uninstall demo fuzz fuzz-smoke unit bench deps
all: imgfuse

# make check / demo / asan first install what is missing (scripts/install-deps is idempotent), then
# build in a sub-make so that pkg-config flags are read after the -dev packages exist.
deps:
	scripts/install-deps

imgfuse: $(BUILD)/imgfuse
	cp $< $@

$(BUILD)/imgfuse: $(CORE_OBJ) $(FUSE_OBJ)
	$(CC) $(CFLAGS) $(LDFLAGS) -o $@ $^ $(LDLIBS)

$(BUILD)/%.o: %.c $(wildcard include/*.h) $(wildcard drivers/*.h) $(wildcard drivers/*/*.h) $(wildcard fuse/*.h) $(wildcard lib/*.h)
	@mkdir -p $(dir $@)
	$(CC) $(CPPFLAGS) $(CFLAGS) -c -o $@ $<

$(BUILD)/tests/%: tests/unit/%.c $(CORE_OBJ) $(wildcard tests/unit/*.h)
	@mkdir -p $(dir $@)
	$(CC) $(CPPFLAGS) $(CFLAGS) $(LDFLAGS) -Itests/unit -o $@ $< $(CORE_OBJ) $(LDLIBS)

# test-luks builds its containers with libcrypto's own functions
$(BUILD)/tests/test-luks: LDLIBS += $(shell pkg-config --libs libcrypto)

unit: $(UNIT_BIN)

check: deps
	$(MAKE) WERROR=-Werror imgfuse unit
	IMGFUSE=$(CURDIR)/imgfuse UNIT_DIR=$(CURDIR)/$(BUILD)/tests scripts/run-tests

asan: deps
	$(MAKE) BUILD=build-asan CC=clang WERROR=-Werror \
	  CFLAGS="-O1 -g -fno-omit-frame-pointer -fsanitize=address,undefined -fno-sanitize-recover=undefined" \
	  LDFLAGS="-fsanitize=address,undefined" build-asan/imgfuse unit
	ASAN_OPTIONS=detect_leaks=1:abort_on_error=0:exitcode=86 UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1 \
	  IMGFUSE=$(CURDIR)/build-asan/imgfuse UNIT_DIR=$(CURDIR)/build-asan/tests IMGFUSE_ASAN=1 scripts/run-tests

# install: the binary, its man page and its bash completion. mount(8) runs mount.fuse3 (package fuse3)
# for `mount -t fuse.imgfuse` and fstab lines; it starts `imgfuse IMAGE MNT -o OPTS` through /bin/sh
# without PATH, so BINDIR must be on sh's default path (/usr/local/bin and /usr/bin are).
# uninstall removes exactly these files.
INSTALLED := $(BINDIR)/imgfuse $(MANDIR)/imgfuse.1 $(BASHCOMPDIR)/imgfuse
install: imgfuse
	install -d $(DESTDIR)$(BINDIR) $(DESTDIR)$(MANDIR) $(DESTDIR)$(BASHCOMPDIR)
	install -m 0755 imgfuse $(DESTDIR)$(BINDIR)/imgfuse
	install -m 0644 imgfuse.1 $(DESTDIR)$(MANDIR)/imgfuse.1
	install -m 0644 completions/imgfuse.bash $(DESTDIR)$(BASHCOMPDIR)/imgfuse

uninstall:
	rm -f $(addprefix $(DESTDIR),$(INSTALLED))

# the demo installs only what it needs: the build dependencies, fuse3 and hexdump (no test tools)
demo:
	scripts/install-deps --demo
	$(MAKE) imgfuse
	scripts/demo

# One libFuzzer target per format driver (tests/fuzz/fuzz-DRIVER.c), built with clang, ASan and UBSan
# (UBSan findings abort, so the fuzzer sees them as crashes). fuzz-smoke runs each briefly (FUZZ_TIME).
# FUZZING_BUILD_MODE_UNSAFE_FOR_PRODUCTION (libFuzzer's convention) lowers the luks driver's key-derivation
# cost limits, so that a key slot costs milliseconds within -timeout and -rss_limit_mb.
FUZZ_SRC := $(wildcard tests/fuzz/fuzz-*.c)
fuzz: deps
	$(MAKE) BUILD=build-fuzz CC=clang \
	  CFLAGS="-O1 -g -fno-omit-frame-pointer -fsanitize=fuzzer-no-link,address,undefined -fno-sanitize-recover=undefined -DFUZZING_BUILD_MODE_UNSAFE_FOR_PRODUCTION" \
	  $(patsubst tests/fuzz/%.c,build-fuzz/fuzz/%,$(FUZZ_SRC))
build-fuzz/fuzz/%: tests/fuzz/%.c $(CORE_OBJ) $(wildcard tests/fuzz/*.h)
	@mkdir -p $(dir $@)
	$(CC) $(CFLAGS) -fsanitize=fuzzer -o $@ $< $(CORE_OBJ) $(LDLIBS)
fuzz-smoke: fuzz
	scripts/fuzz-smoke

bench: imgfuse
	scripts/bench

clean:
	rm -rf build build-asan build-fuzz imgfuse
