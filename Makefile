# Quick start: `make matrix` runs the default matrix; `make test` runs the suite.
# Both set up the host first (Debian packages, Python venv) and are idempotent.

PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)

# Host packages: QEMU and image tools, kernel build tools, fio (its parser checks job files), a browser
# for report checks.
DEB_PACKAGES := qemu-system-x86 qemu-utils mmdebstrap e2fsprogs dpkg apt kmod gcc libc6-dev make \
	bc bison flex libelf-dev libssl-dev ccache dwarves cpio rsync xz-utils zstd git \
	lz4 patch iproute2 fio python3 python3-venv ca-certificates openssh-client openssh-server ovmf chromium

.PHONY: setup setup-debian setup-python matrix test lint doctor clean

setup: setup-debian setup-python

setup-debian:
	@missing=$$(for p in $(DEB_PACKAGES); do \
		dpkg-query -W -f='$${Status}\n' $$p 2>/dev/null | grep -q '^install ok installed$$' || echo $$p; done); \
	if [ -n "$$missing" ]; then \
		echo "installing Debian packages: $$missing"; \
		$(SUDO) apt-get update -qq && $(SUDO) env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $$missing; \
	fi

setup-python: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	[ -x $(BIN)/python ] || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e '.[test]'
	touch $@

matrix: setup
	$(BIN)/python -m lab run matrix

test: setup
	@# pytest exits 5 when it collected no tests: say so instead of failing obscurely.
	$(BIN)/python -m pytest $(PYTEST_ARGS); rc=$$?; \
	if [ $$rc = 5 ]; then echo "pytest collected no tests"; exit 0; fi; exit $$rc

lint: setup-python
	$(BIN)/ruff check lab tests
	$(BIN)/ruff format --check lab tests

doctor: setup
	$(BIN)/python -m lab doctor

clean:
	rm -rf $(VENV) .pytest_cache
