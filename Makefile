# acl-compose: `make test` and `make demo` do all set-up on a fresh Debian 12 machine.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
PYTEST_ARGS ?=

# Debian packages: the real tools acl-compose drives and the tests cross-check against.
DEB_PACKAGES := python3 python3-venv git make gnupg gpgv openssl curl ca-certificates \
	cryptsetup-bin gdisk fdisk mtools dosfstools e2fsprogs btrfs-progs erofs-utils squashfs-tools \
	bzip2 lbzip2 xz-utils zstd mmdebstrap grub-efi-amd64-bin grub-pc-bin grub-common \
	qemu-system-x86 qemu-utils ovmf openssh-client openssh-server busybox-static \
	systemd-container ignition procps skopeo \
	genisoimage udftools

.PHONY: all deps deb venv test test-unit lint demo bench fuzz clean

all: test

deps: deb venv

# Idempotent: installs only what is missing, and runs apt-get update only then.
deb:
	@missing=$$(for p in $(DEB_PACKAGES); do \
		dpkg-query -W -f='$${Status}\n' $$p 2>/dev/null | grep -q "install ok installed" || echo $$p; \
	done); \
	if [ -n "$$missing" ]; then \
		echo "installing Debian packages:" $$missing; \
		$(SUDO) apt-get update -qq && \
		DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq --no-install-recommends $$missing; \
	fi

venv: $(VENV)/.installed

$(VENV)/.installed: setup.cfg pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[test,matrix]'
	touch $@

# The whole suite: unit tests (seconds) and integration tests (testbed build, VM boots).
test: deps
	$(BIN)/pytest tests $(PYTEST_ARGS)

test-unit: deps
	$(BIN)/pytest tests -m "not integration" $(PYTEST_ARGS)

# The parsers' property tests with many random examples (make test runs a short fixed-seed set).
fuzz: venv
	HYPOTHESIS_PROFILE=fuzz $(BIN)/pytest tests -m property $(PYTEST_ARGS)

lint: venv
	$(BIN)/ruff check acl_compose tests qemu-tests
	$(BIN)/ruff format --check acl_compose tests qemu-tests

# The main job on the embedded testbed default (grows as stages land).
demo: deps
	$(BIN)/python examples/demo.py

bench: deps
	for b in tests/bench/bench_*.py; do $(BIN)/python $$b || exit 1; done

clean:
	rm -rf $(VENV) build dist *.egg-info .pytest_cache .hypothesis demo-out
