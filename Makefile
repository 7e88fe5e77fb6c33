# Two commands do everything on a fresh machine: `make run` starts the app, `make test` runs
# every check. Both bootstrap a virtualenv in .venv from the pinned requirements.lock.

PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: run test check lint typecheck pytest e2e host-deps bench screenshots lock clean

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
	@bash tests/setup-host.sh screenshots
	QT_QPA_PLATFORM=xcb xvfb-run -a -s "-screen 0 1280x1000x24" $(BIN)/python scripts/screenshots.py

bench: host-deps $(STAMP)
	$(BIN)/python -m bench --write docs/benchmarks.md

lock:
	rm -rf .lockvenv && $(PYTHON) -m venv .lockvenv
	.lockvenv/bin/pip install --quiet 'setuptools>=77' && .lockvenv/bin/pip install --quiet -e '.[test]'
	{ echo "# Exact versions of every runtime and test dependency (make lock regenerates this file)."; \
	  .lockvenv/bin/pip freeze --all --exclude-editable | grep -v '^pip==' | sort -f; } > requirements.lock
	rm -rf .lockvenv

clean:
	rm -rf $(VENV) build dist *.egg-info .mypy_cache .ruff_cache .pytest_cache
