# The two commands a new user needs: `make run` and `make test`.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin

.PHONY: run test lint unit integration e2e bench clean

run: $(VENV)/.installed
	$(BIN)/supervisor run -c examples/quickstart.toml

# The suite mostly waits (processes starting, leases expiring), so it runs on more workers than
# cores; each worker has its own databases and ports. Tests marked server_restart stop the shared
# PostgreSQL/MariaDB server, and tests marked serial either judge start-up latency against a 2 s
# tick or keep both cores busy, so they run alone afterwards. Both runs always run; either failing
# fails `make test` (exit 5, no server_restart test collected, is not a failure).
PYTEST_WORKERS ?= 4

test: $(VENV)/.installed-test lint
	status=0; \
	$(BIN)/pytest -n $(PYTEST_WORKERS) --dist worksteal -m "not server_restart and not serial" \
		|| status=$$?; \
	$(BIN)/pytest -m "server_restart or serial" || { code=$$?; [ $$code -eq 5 ] || status=$$code; }; \
	exit $$status

lint: $(VENV)/.installed-test
	$(BIN)/ruff check supervisor tests bench examples
	$(BIN)/mypy
	$(BIN)/lint-imports

unit: $(VENV)/.installed-test
	$(BIN)/pytest tests/unit

bench: $(VENV)/.installed-test
	$(BIN)/python bench/compare.py

$(VENV)/.created:
	$(PYTHON) -c 'import sys; sys.exit(sys.version_info < (3, 11) and "Python 3.11 or newer is required")'
	$(PYTHON) -m venv $(VENV)
	touch $@

# The package alone: the quick start runs on SQLite, which needs no driver extra. The test
# extra brings both drivers (the suite runs on PostgreSQL and MariaDB too).
$(VENV)/.installed: pyproject.toml $(VENV)/.created
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -e .
	touch $@

$(VENV)/.installed-test: pyproject.toml $(VENV)/.created
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -e '.[test]'
	touch $@ $(VENV)/.installed

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache build *.egg-info
