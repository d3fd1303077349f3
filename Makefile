# Two entry points for a fresh machine: `make demo` and `make test` (each sets up .venv itself).
VENV ?= .venv
PY := $(VENV)/bin/python
SHARED ?= ../shared
CACHE ?= .cache
REALMODELS ?= $(CACHE)/realmodels
export WHEEL_CACHE ?= $(abspath $(CACHE))/wheels

.PHONY: install demo test bench bench-quick realmodels lint typecheck clean

$(VENV)/.installed: pyproject.toml
	python3 -m venv $(VENV)
	$(PY) -m pip install -q --disable-pip-version-check torch==2.13.0
	$(PY) -m pip install -q --disable-pip-version-check -e '.[dev]'
	touch $@

install: $(VENV)/.installed

realmodels: install
	PYTHON=$(PY) bash $(SHARED)/realmodels/fetch_models.sh $(REALMODELS) >/dev/null

demo: install realmodels
	$(PY) -m modeltrace compare $(REALMODELS)/all-minilm-l6-v2 $(REALMODELS)/all-minilm-l6-v2-int8-onnx
	$(PY) -m modeltrace compare $(REALMODELS)/efficientnet-lite0 $(REALMODELS)/efficientnet-lite1

test: install
	MODELTRACE_REALMODELS=$(abspath $(REALMODELS)) $(PY) -m pytest -q -p no:cacheprovider

bench: install realmodels
	MODELTRACE_REALMODELS=$(abspath $(REALMODELS)) $(PY) -m modeltrace bench --out bench/results

bench-quick: install
	$(PY) -m modeltrace bench --quick --out bench/results/quick

lint: install
	$(PY) -m ruff check src tests bench

typecheck: install
	$(PY) -m mypy

clean:
	rm -rf $(VENV) build *.egg-info
