# btcloan: two commands do all the set-up. `make demo` runs the service; `make test` tests it.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
export PATH := $(CURDIR)/$(VENV)/bin:$(PATH)

.PHONY: demo test faults lint typecheck djangochecks pytest flower bench clean-var

# The dev file pulls in the runtime one (`-r requirements.txt`) plus tests, lint and types.
$(VENV)/.installed: requirements.txt requirements-dev.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	@echo "installing the Python packages (a first run takes a few minutes; pip shows each one)"
	$(PY) -m pip install --progress-bar on --disable-pip-version-check -r requirements-dev.txt
	touch $@

# Versions are exact in package.json and integrity-pinned in package-lock.json (every
# platform's optional anvil binary; npm takes only this machine's).
node_modules/.installed: package.json package-lock.json
	@echo "installing anvil from npm (package-lock.json)"
	npm install --no-audit --no-fund --loglevel=error
	touch $@

setup: $(VENV)/.installed node_modules/.installed

demo: setup
	$(PY) -m btcloan.dev.demo

lint: setup
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

typecheck: setup
	$(VENV)/bin/mypy .

djangochecks: setup
	$(PY) manage.py check
	$(PY) manage.py makemigrations --check --dry-run

# `make test` leaves out the fault suite (tests/faults, about 8 minutes): its own lane,
# `make faults`, which .ci/run runs after it.
PYTEST_ARGS ?= -m "not faults"
pytest: setup
	$(VENV)/bin/pytest $(PYTEST_ARGS)

faults: setup
	$(VENV)/bin/pytest -m faults

test: lint typecheck djangochecks pytest

flower: setup
	$(VENV)/bin/celery -A btcloan flower --port=$${FLOWER_PORT:-5555}

bench: setup
	$(PY) bench/run_all.py

clean-var:
	rm -rf var
