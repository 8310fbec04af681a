# Two entry points a fresh clone needs: `make demo` and `make test`.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test lint install clean

$(STAMP): pyproject.toml package-lock.json
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]'
	# the browser page's libraries (package.json, package-lock.json), for `pneumonia-cxr web`
	npm ci --no-audit --no-fund --loglevel=error
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(BIN)/pneumonia-cxr demo

test: $(STAMP)
	$(BIN)/ruff check pneumonia_cxr tests scripts benchmarks
	$(BIN)/python -m pytest -q -ra -n auto --dist loadfile

lint: $(STAMP)
	$(BIN)/ruff check pneumonia_cxr tests scripts benchmarks
	$(BIN)/ruff format --check pneumonia_cxr tests scripts benchmarks

clean:
	rm -rf $(VENV) node_modules outputs .pytest_cache
