# lifeline: one non-recursive GNU Makefile.
#   make                 build build/lifeline
#   make run             install build dependencies, build, start with the
#                        built-in 'whatsapp' preset
#   make check           install test dependencies, run every test, plain
#                        and under ASan+UBSan
#   make SANITIZE=address,undefined   sanitized build in build-san/
#   make DEBUG=1         build-debug/: invariant checks on, -O0
#   make check-integration TEST_JOBS=1   the integration tests in one
#                        process (the default is 2, with pytest-xdist)
#   make container-check the container image, built and run in Podman (as
#                        root; scripts/container-check.sh)
#   make mutate          does the suite catch deliberate breaks? (slow;
#                        not part of check; MUTANTS="03 17" for some)
#   make soak DURATION=600   only the soak test (tests/integration/
#                        test_soak.py) against build/lifeline, for that
#                        many seconds (check runs it for 180)
#   make install         binary, man pages, systemd unit, /etc/lifeline/
#                        lifeline.conf (kept if present); PREFIX (default
#                        /usr/local), DESTDIR, SBINDIR, MANDIR, UNITDIR,
#                        SYSCONFDIR.  make uninstall undoes it.

VERSION := 0.1.0
PREFIX ?= /usr/local
SBINDIR ?= $(PREFIX)/sbin
MANDIR ?= $(PREFIX)/share/man
# systemd reads units from /usr/local/lib/systemd/system too; the Debian
# package sets /lib/systemd/system (bookworm's place for them).
UNITDIR ?= $(PREFIX)/lib/systemd/system
SYSCONFDIR ?= /etc
DESTDIR ?=
CC ?= cc
PKG_CONFIG ?= pkg-config
CFLAGS ?= -O2 -g
SANITIZE ?=
DEBUG ?=
# pytest worker processes per integration pass (pytest-xdist); 1: one
# process.  The tests mostly wait (on timeouts, slow peers, shaped links):
# make check's two passes at 2 each take ~5 min on 2 cores, against ~10
# with one process each.  Tests share nothing across processes: network
# namespaces are named per process, ports are bound as 0 or held by
# conftest.free_port() for the whole test.
TEST_JOBS ?= 2
BUILD ?= $(if $(SANITIZE),build-san,$(if $(DEBUG),build-debug,build))
ifneq ($(DEBUG),)
CFLAGS := -O0 -g
endif

WARN := -Wall -Wextra -Wshadow -Wformat=2 -Wmissing-prototypes -Wvla
ifneq ($(WERROR),)
WARN += -Werror
endif
SAN_FLAGS := $(if $(SANITIZE),-fsanitize=$(SANITIZE) -fno-omit-frame-pointer -fno-sanitize-recover=all,)

# Deferred (=): evaluated when used, after scripts/deps.sh has run.
INIH_CFLAGS = $(shell $(PKG_CONFIG) --cflags inih 2>/dev/null)
INIH_LIBS = $(shell $(PKG_CONFIG) --libs inih 2>/dev/null || echo -linih)
QR_CFLAGS = $(shell $(PKG_CONFIG) --cflags libqrencode 2>/dev/null)
QR_LIBS = $(shell $(PKG_CONFIG) --libs libqrencode 2>/dev/null || echo -lqrencode)
SSL_CFLAGS = $(shell $(PKG_CONFIG) --cflags openssl 2>/dev/null)
SSL_LIBS = $(shell $(PKG_CONFIG) --libs openssl 2>/dev/null || echo -lssl -lcrypto)
SECCOMP_CFLAGS = $(shell $(PKG_CONFIG) --cflags libseccomp 2>/dev/null)
SECCOMP_LIBS = $(shell $(PKG_CONFIG) --libs libseccomp 2>/dev/null || echo -lseccomp)

# Invariant checks (src/invariant.h): on in sanitized and DEBUG=1 builds.
# Test hooks (SIGUSR2 makes one forbidden system call): the same builds,
# never a release build.
INV_FLAGS := $(if $(SANITIZE)$(DEBUG),-DLIFELINE_INVARIANTS -DLIFELINE_TEST_HOOKS,) \
	$(if $(SANITIZE),-DLIFELINE_SANITIZED,)
ALL_CPPFLAGS = -D_GNU_SOURCE -DLIFELINE_VERSION='"$(VERSION)"' $(INV_FLAGS) $(INIH_CFLAGS) $(SSL_CFLAGS) $(QR_CFLAGS) $(SECCOMP_CFLAGS) $(CPPFLAGS)
ALL_CFLAGS = -std=c11 $(WARN) $(SAN_FLAGS) $(CFLAGS)
ALL_LDFLAGS = $(SAN_FLAGS) $(LDFLAGS)

# The build date `lifeline doctor` compares the clock with: the
# packager's SOURCE_DATE_EPOCH (reproducible builds), else the last
# commit's date, else unknown (0).  Only doctor.o carries it.
BUILD_EPOCH ?= $(or $(SOURCE_DATE_EPOCH),$(shell git log -1 --format=%ct 2>/dev/null),0)

SRCS := $(wildcard src/*.c)
OBJS := $(patsubst src/%.c,$(BUILD)/obj/%.o,$(SRCS))
BIN := $(BUILD)/lifeline

UNIT_TESTS := config addr proxyproto pp_parse loop copy relay sandbox srclimit \
	intro hello
UNIT_BINS := $(patsubst %,$(BUILD)/unit/test_%,$(UNIT_TESTS))

.PHONY: all run check check-unit check-integration check-serial check-fuzz-replay deps \
	test-deps install uninstall clean format format-check fuzz bench mutate \
	soak container-check

all: $(BIN)

$(BUILD)/obj/%.o: src/%.c $(wildcard src/*.h) Makefile
	@mkdir -p $(dir $@)
	$(CC) $(ALL_CPPFLAGS) $(ALL_CFLAGS) -c $< -o $@

# The dashboard is src/dashboard.html; dashboard.c includes its bytes as a
# list of hex values written by od(1) (coreutils: no extra tool needed).
$(BUILD)/gen/dashboard.html.inc: src/dashboard.html Makefile
	@mkdir -p $(dir $@)
	od -An -v -tx1 src/dashboard.html | \
		sed 's/ \([0-9a-f][0-9a-f]\)/0x\1,/g' >$@.tmp
	mv $@.tmp $@

$(BUILD)/obj/dashboard.o: $(BUILD)/gen/dashboard.html.inc
$(BUILD)/obj/dashboard.o: ALL_CPPFLAGS += -I$(BUILD)/gen

$(BUILD)/obj/doctor.o: ALL_CPPFLAGS += -DLIFELINE_BUILD_EPOCH=$(BUILD_EPOCH)

# Test builds route the daemon's allocations through src/failalloc.c.
comma := ,
WRAP_ALLOC := $(if $(SANITIZE)$(DEBUG),-Wl$(comma)--wrap=malloc$(comma)--wrap=calloc$(comma)--wrap=realloc,)
$(BIN): $(OBJS)
	$(CC) $(ALL_LDFLAGS) $(WRAP_ALLOC) -o $@ $(OBJS) $(INIH_LIBS) $(SSL_LIBS) $(QR_LIBS) $(SECCOMP_LIBS) -lpthread

# Unit tests: each links only the module(s) it tests.
$(BUILD)/unit/test_config: tests/unit/test_config.c $(BUILD)/obj/config.o $(BUILD)/obj/addr.o $(BUILD)/obj/log.o $(BUILD)/obj/hello.o
$(BUILD)/unit/test_addr: tests/unit/test_addr.c $(BUILD)/obj/addr.o
$(BUILD)/unit/test_proxyproto: tests/unit/test_proxyproto.c $(BUILD)/obj/proxyproto.o
$(BUILD)/unit/test_pp_parse: tests/unit/test_pp_parse.c $(BUILD)/obj/proxyproto.o
$(BUILD)/unit/test_loop: tests/unit/test_loop.c $(BUILD)/obj/loop.o
$(BUILD)/unit/test_copy: tests/unit/test_copy.c $(BUILD)/obj/copy.o
$(BUILD)/unit/test_sandbox: tests/unit/test_sandbox.c $(BUILD)/obj/sandbox.o $(BUILD)/obj/log.o
$(BUILD)/unit/test_srclimit: tests/unit/test_srclimit.c $(BUILD)/obj/srclimit.o
$(BUILD)/unit/test_intro: tests/unit/test_intro.c $(BUILD)/obj/intro.o
$(BUILD)/unit/test_hello: tests/unit/test_hello.c $(BUILD)/obj/hello.o
# The state machine with its system calls faked: the modules a generation
# needs, OpenSSL included.
RELAY_TEST_OBJS := relay copy gen config addr log loop tls upstream proxyproto \
	srclimit intro hello
$(BUILD)/unit/test_relay: tests/unit/test_relay.c \
	$(patsubst %,$(BUILD)/obj/%.o,$(RELAY_TEST_OBJS))
$(UNIT_BINS): tests/unit/harness.h tests/pp_equal.h
	@mkdir -p $(dir $@)
	$(CC) $(ALL_CPPFLAGS) -Isrc $(ALL_CFLAGS) $(ALL_LDFLAGS) -o $@ \
		$(filter %.c %.o,$^) $(INIH_LIBS) $(SSL_LIBS) $(SECCOMP_LIBS) -lpthread

# Fuzzing: each tests/fuzz/fuzz_NAME.c defines LLVMFuzzerTestOneInput over
# the pure parsers.  `make fuzz` runs each under libFuzzer (clang) for
# FUZZ_SECONDS; `check-fuzz-replay` replays tests/fuzz/corpus/NAME/ through
# the same code built with $(CC) + ASan/UBSan and a plain main().
FUZZ_SECONDS ?= 60
FUZZ_SRCS := $(wildcard tests/fuzz/fuzz_*.c)
FUZZ_NAMES := $(patsubst tests/fuzz/fuzz_%.c,%,$(FUZZ_SRCS))
FUZZ_LIB_SRCS := src/proxyproto.c src/addr.c src/intro.c src/hello.c
FUZZ_CFLAGS := -std=c11 -g -O1 -D_GNU_SOURCE -DLIFELINE_INVARIANTS -Isrc

build-fuzz/fuzz_%: tests/fuzz/fuzz_%.c $(FUZZ_LIB_SRCS) $(wildcard src/*.h) tests/pp_equal.h
	@mkdir -p build-fuzz
	clang $(FUZZ_CFLAGS) -fsanitize=fuzzer,address,undefined -o $@ $< $(FUZZ_LIB_SRCS)

build-fuzz/replay_%: tests/fuzz/fuzz_%.c tests/fuzz/replay.c $(FUZZ_LIB_SRCS) $(wildcard src/*.h) tests/pp_equal.h
	@mkdir -p build-fuzz
	$(CC) $(FUZZ_CFLAGS) -fsanitize=address,undefined -fno-sanitize-recover=all -o $@ $< tests/fuzz/replay.c $(FUZZ_LIB_SRCS)

fuzz: $(patsubst %,build-fuzz/fuzz_%,$(FUZZ_NAMES))
	@for n in $(FUZZ_NAMES); do \
		mkdir -p tests/fuzz/corpus/$$n build-fuzz/new-$$n; \
		echo "== fuzz_$$n for $(FUZZ_SECONDS)s"; \
		build-fuzz/fuzz_$$n -max_total_time=$(FUZZ_SECONDS) \
			-print_final_stats=1 build-fuzz/new-$$n tests/fuzz/corpus/$$n || exit 1; \
		build-fuzz/fuzz_$$n -merge=1 tests/fuzz/corpus/$$n build-fuzz/new-$$n >/dev/null 2>&1; \
	done

check-fuzz-replay: $(patsubst %,build-fuzz/replay_%,$(FUZZ_NAMES))
	@for n in $(FUZZ_NAMES); do \
		build-fuzz/replay_$$n tests/fuzz/corpus/$$n || exit 1; \
	done

bench:
	@bench/run.sh

# Mutation check (tests/mutants/*.patch, one deliberate break each, applied
# to a copy of the tree): every mutant must be caught by the tests it names.
mutate:
	@/usr/bin/python3 scripts/mutate.py

# The container image built and run in Podman (as root; scripts/
# container-check.sh says what it checks).
container-check:
	@scripts/container-check.sh

deps:
	@scripts/deps.sh build

test-deps:
	@scripts/deps.sh test

run: deps
	$(MAKE) all
	./$(BIN) $(ARGS)

check-unit: $(UNIT_BINS)
	@scripts/run-unit.sh $(UNIT_BINS)

check-integration: $(BIN)
	LIFELINE_BIN=$(abspath $(BIN)) /usr/bin/python3 -m pytest -q \
		$(if $(filter-out 0 1,$(TEST_JOBS)),-n $(TEST_JOBS),) \
		--basetemp=$(abspath $(BUILD))/pytest -p no:cacheprovider \
		$(if $(SANITIZE),-m "not plain_only and not serial",-m "not hooks_only and not serial") \
		--junitxml=$(BUILD)/junit.xml tests/integration

# The serial tests (the soak, the benchmark smoke run) alone, plain build:
# make check runs them after the two passes that run at once.
check-serial: $(BIN)
	LIFELINE_BIN=$(abspath $(BIN)) /usr/bin/python3 -m pytest -q \
		--basetemp=$(abspath $(BUILD))/pytest-serial -p no:cacheprovider \
		-m serial --junitxml=$(BUILD)/junit-serial.xml tests/integration

# The soak alone, with its summary line (-s); DURATION in seconds.
DURATION ?= 180
soak: $(BIN)
	LIFELINE_BIN=$(abspath $(BIN)) SOAK_DURATION=$(DURATION) \
		/usr/bin/python3 -m pytest -q -s tests/integration/test_soak.py

# The whole suite, plain then sanitized.  This is what CI runs.
check: test-deps
	@scripts/check.sh

# The unit names /usr/sbin/lifeline and /etc/lifeline/lifeline.conf: both
# are rewritten to where this install puts them.  An existing configuration
# file is never overwritten (the shipped one is deploy/lifeline.conf, the
# 'minimal' preset written out).
CONF := $(DESTDIR)$(SYSCONFDIR)/lifeline/lifeline.conf
install: $(BIN)
	install -d $(DESTDIR)$(SBINDIR) $(DESTDIR)$(MANDIR)/man8 \
		$(DESTDIR)$(MANDIR)/man5 $(DESTDIR)$(UNITDIR) \
		$(DESTDIR)$(SYSCONFDIR)/lifeline
	install -m 0755 $(BIN) $(DESTDIR)$(SBINDIR)/lifeline
	install -m 0644 docs/lifeline.8 $(DESTDIR)$(MANDIR)/man8/lifeline.8
	install -m 0644 docs/lifeline.conf.5 $(DESTDIR)$(MANDIR)/man5/lifeline.conf.5
	sed -e 's|/usr/sbin/lifeline|$(SBINDIR)/lifeline|g' \
		-e 's|/etc/lifeline/|$(SYSCONFDIR)/lifeline/|g' \
		deploy/systemd/lifeline.service >$(DESTDIR)$(UNITDIR)/lifeline.service.tmp
	chmod 0644 $(DESTDIR)$(UNITDIR)/lifeline.service.tmp
	mv $(DESTDIR)$(UNITDIR)/lifeline.service.tmp $(DESTDIR)$(UNITDIR)/lifeline.service
	@if [ -e $(CONF) ]; then \
		echo "install: $(CONF) exists, kept (the shipped one is deploy/lifeline.conf)"; \
	else \
		echo "install -m 0644 deploy/lifeline.conf $(CONF)"; \
		install -m 0644 deploy/lifeline.conf $(CONF); \
	fi

# The configuration goes only when it is the one shipped, unchanged.
uninstall:
	rm -f $(DESTDIR)$(SBINDIR)/lifeline $(DESTDIR)$(MANDIR)/man8/lifeline.8 \
		$(DESTDIR)$(MANDIR)/man5/lifeline.conf.5 \
		$(DESTDIR)$(UNITDIR)/lifeline.service
	@if [ -e $(CONF) ] && ! cmp -s deploy/lifeline.conf $(CONF); then \
		echo "uninstall: $(CONF) was changed, kept"; \
	else \
		rm -f $(CONF); \
		rmdir $(DESTDIR)$(SYSCONFDIR)/lifeline 2>/dev/null || true; \
	fi

clean:
	rm -rf build build-san build-fuzz build-mutate

FORMAT_FILES = src/*.c src/*.h tests/*.h tests/unit/*.c tests/unit/*.h tests/fuzz/*.c \
	tests/tools/*.c bench/*.c

format:
	clang-format -i $(FORMAT_FILES)

format-check:
	clang-format --dry-run -Werror $(FORMAT_FILES)
