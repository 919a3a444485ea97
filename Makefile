# Entry points from nothing: `make demo`, `make ui` and `make test` create .venv on first use.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: demo ui test test-fast bench bench-quick lint typecheck clean

$(STAMP): pyproject.toml requirements.lock
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else "Python 3.11 or newer is needed")'
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -c requirements.lock -e '.[dev]'
	@touch $(STAMP)

demo: $(STAMP)
	$(BIN)/pendo-planhat demo

# The Dagster UI on the demo's data (created first if missing); UI_ARGS="--port 3001" etc.
ui: $(STAMP)
	$(BIN)/pendo-planhat ui $(UI_ARGS)

# pytest exits 5 when it collects nothing: that must never pass as green.
test: $(STAMP)
	@$(BIN)/python -m pytest -m "not bench" $(PYTEST_ARGS); rc=$$?; \
	if [ $$rc -eq 5 ]; then echo "pytest collected no tests; failing on purpose" >&2; exit 1; fi; exit $$rc

test-fast: $(STAMP)
	@$(BIN)/python -m pytest -m "not bench and not slow" $(PYTEST_ARGS); rc=$$?; \
	if [ $$rc -eq 5 ]; then echo "pytest collected no tests; failing on purpose" >&2; exit 1; fi; exit $$rc

bench: $(STAMP)
	$(BIN)/python bench/run.py

bench-quick: $(STAMP)
	$(BIN)/python bench/run.py --quick

lint: $(STAMP)
	$(BIN)/ruff check pendo_assets tests bench
	$(BIN)/ruff format --check pendo_assets tests bench

typecheck: $(STAMP)
	$(BIN)/mypy

clean:
	rm -rf $(VENV) data/*.duckdb data/exports dagster_home/storage dagster_home/history dagster_home/schedules
