# tocsin: the commands a new user and a developer run.
#   make demo    install into .venv and run the whole chain on loopback
#   make test    the test suite (some tests need root, ip netns and nft; they skip otherwise)
#   make test-faults  the long fault tests (a two-minute partition...), marked `faults`
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.tocsin-installed
# When the primary package index does not answer but mirrors are configured,
# pip uses those (tools/pip-index-env.sh) instead of timing out per package.
PIP_ENV = eval "$$(tools/pip-index-env.sh $(PYTHON))";
export PIP_DISABLE_PIP_VERSION_CHECK = 1

.PHONY: install demo test test-faults lint fmt bench bench-scorer bench-agent bench-collector model eval readme-check proto screenshots clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PIP_ENV) $(PY) -m pip install --quiet -e '.[dev]'
	touch $@

install: $(STAMP)

demo: $(STAMP)
	$(PY) tools/demo.py

test: $(STAMP)
	$(PIP_ENV) $(PY) -m pytest -q -m 'not faults'

test-faults: $(STAMP)
	$(PIP_ENV) $(PY) -m pytest -q -m faults

lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

fmt: $(STAMP)
	$(VENV)/bin/ruff format .
	$(VENV)/bin/ruff check --fix .

bench: bench-scorer bench-agent bench-collector

bench-scorer: $(STAMP)
	$(PY) bench/bench_scorer.py

bench-agent: $(STAMP)
	$(PY) bench/bench_agent.py
	$(PY) bench/bench_reads.py

# N agents on real gRPC streams against a real collector (--respond enforce) on loopback.
# BENCH_COLLECTOR_ARGS, e.g. "--agents 1000 --duration 20 --baseline main" (a git
# revision, run in the same invocation) or "--baseline results.json" (an earlier --json);
# "--scale-out": the same load through a gateway and one, then two workers (docs/scale-out.md).
BENCH_COLLECTOR_ARGS ?=
bench-collector: $(STAMP)
	$(PY) bench/bench_collector.py $(BENCH_COLLECTOR_ARGS)

# Rebuild the shipped baseline model from the committed training telemetry.
model: $(STAMP)
	$(PY) tools/benign_corpus.py --seed 0 --out models/training/benign-synthetic.jsonl
	$(VENV)/bin/tocsin train models/training/*.jsonl --seed 0 --out models/baseline --contamination-quantile 0.99

# Every simulated workload through the real agent and collector -> docs/evaluation.md.
eval: $(STAMP)
	$(PY) tools/eval.py

# The README's server section, every command as written, on a throw-away systemd
# machine (root; namespaces and an overlay: nothing reaches the disk or the network).
readme-check: $(STAMP)
	$(PY) tools/readme_check.py

# Every console page at desktop and phone width, in headless Chromium -> docs/console/.
screenshots: $(STAMP)
	$(PY) tools/screenshots.py

proto: $(STAMP)
	PATH=$(abspath $(VENV))/bin:$$PATH tools/genproto.sh

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache .mypy_cache .ruff_cache
