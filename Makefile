# Two commands do everything on a fresh machine: `make run` starts the app, `make test` runs
# every check. Both bootstrap a virtualenv in .venv from the pinned requirements.lock.

PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: run test check lint typecheck pytest e2e host-deps bench screenshots icons bundle \
        install-desktop lock clean appimage appimage-wrap glibc-floor \
        bundle-bullseye appimage-bullseye

run: $(STAMP)
	$(BIN)/nixos-kexec-wizard $(ARGS)

test: host-deps $(STAMP) lint typecheck pytest

check: test

host-deps:
	@bash tests/setup-host.sh

$(STAMP): requirements.lock pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -r requirements.lock
	$(BIN)/python -m pip install --quiet --disable-pip-version-check --no-deps --no-build-isolation -e .
	touch $@

lint: $(STAMP)
	$(BIN)/ruff check app tests bench scripts
	$(BIN)/ruff format --check app tests bench scripts

typecheck: $(STAMP)
	$(BIN)/mypy

pytest: $(STAMP)
	$(BIN)/pytest $(PYTEST_ARGS)

e2e: host-deps $(STAMP)
	$(BIN)/pytest -m vm $(PYTEST_ARGS)

screenshots: host-deps $(STAMP)
	QT_QPA_PLATFORM=xcb xvfb-run -a -s "-screen 0 1280x1000x24" $(BIN)/python scripts/screenshots.py

bench: host-deps $(STAMP)
	$(BIN)/python -m bench --write docs/benchmarks.md

icons: $(STAMP)
	$(BIN)/python scripts/make_icons.py

# A one-dir PyInstaller bundle in dist/ and a Linux tarball with the launcher and install.sh.
bundle: $(STAMP)
	PYTHON=$(BIN)/python bash packaging/build-bundle.sh

# A type-2 AppImage of the bundle: dist/NixOS_Kexec_Wizard-VERSION-ARCH.AppImage (our runtime,
# packaging/appimage/runtime.c, in front of a zstd squashfs of the AppDir).
appimage: bundle appimage-wrap

# The AppImage of the bundle already in dist/ (the tests build the bundle once for both).
appimage-wrap: $(STAMP)
	PYTHON=$(BIN)/python bash packaging/appimage/build-appimage.sh

# The bundle and AppImage built in a Debian 11 root (root only; slow the first time): they need
# glibc 2.30, with PySide6 6.9.3, the newest whose wheels are manylinux_2_28.
bundle-bullseye:
	bash packaging/bullseye/build-bundle.sh

appimage-bullseye: $(STAMP) bundle-bullseye
	PYTHON=$(BIN)/python BUNDLE=build/bullseye/dist/nixos-kexec-wizard \
	  OUT=build/bullseye/NixOS_Kexec_Wizard-$$($(BIN)/python -c 'import app; print(app.__version__)')-$$(uname -m).AppImage \
	  bash packaging/appimage/build-appimage.sh

# The highest GLIBC_ symbol version any ELF in the bundle needs (objdump -T), against MAX.
glibc-floor:
	@bash packaging/glibc-floor.sh dist/nixos-kexec-wizard $(MAX)

# The menu entry and icons for a pip/pipx install (the command must be on PATH).
install-desktop:
	@sh packaging/install-desktop.sh

lock:
	rm -rf .lockvenv && $(PYTHON) -m venv .lockvenv
	.lockvenv/bin/pip install --quiet 'setuptools>=77' && .lockvenv/bin/pip install --quiet -e '.[test]'
	{ echo "# Exact versions of every runtime and test dependency (make lock regenerates this file)."; \
	  .lockvenv/bin/pip freeze --all --exclude-editable | grep -v '^pip==' | sort -f; } > requirements.lock
	rm -rf .lockvenv

clean:
	rm -rf $(VENV) build dist *.egg-info .mypy_cache .ruff_cache .pytest_cache
