# Fraud detection on Kubeflow Pipelines + KServe. `make help` lists the targets.
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
UV_VERSION := 0.13.9
BIN := $(VENV)/bin
FRAUD := $(BIN)/fraud
DEMO_DIR ?= demo-output
INSTALLED := $(VENV)/.installed
# checkov pins packages that clash with requirements.lock: it gets a venv of its own.
TOOLS_VENV ?= .venv-tools
TOOLS_INSTALLED := $(TOOLS_VENV)/.installed
CODE := $(wildcard src tests benchmarks components pipelines kserve drift scripts)

.DEFAULT_GOAL := help
.PHONY: help install lock test test-unit lint format demo demo-score serve pipeline-yaml bench e2e clean

help: ## List the targets
	@awk 'BEGIN {FS = ":.*## "} /^[a-zA-Z_-]+:.*## / {printf "  \033[36m%-18s\033[0m %s\n", $$1, $$2}' $(MAKEFILE_LIST)

install: $(INSTALLED) $(TOOLS_INSTALLED) ## Create .venv (and .venv-tools: checkov) with the locked dependencies (idempotent)

# --compile-bytecode: every process (servers, pipeline steps, CLI) then imports from .pyc files
# even where PYTHONDONTWRITEBYTECODE is set (about 9 s less per start that imports scikit-learn).
$(INSTALLED): pyproject.toml requirements.lock
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info[:2] == (3, 11) else "Python 3.11 is required (set PYTHON=...)")'
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check uv==$(UV_VERSION)
	$(BIN)/uv pip install --quiet --compile-bytecode --python $(BIN)/python -r requirements.lock
	$(BIN)/uv pip install --quiet --python $(BIN)/python --no-deps -e .
	@touch $@

# checkov for the offline manifest and Dockerfile checks (tests/unit/test_manifests.py,
# tests/unit/test_dockerfiles.py), pinned in requirements-tools.lock.
$(TOOLS_INSTALLED): requirements-tools.lock $(INSTALLED)
	$(PYTHON) -m venv $(TOOLS_VENV)
	$(BIN)/uv pip install --quiet --compile-bytecode --python $(TOOLS_VENV)/bin/python -r requirements-tools.lock
	@touch $@

lock: ## Re-resolve requirements.lock from pyproject.toml (then commit it)
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check uv==$(UV_VERSION)
	$(BIN)/uv pip compile pyproject.toml --extra dev --python-version 3.11 --upgrade -o requirements.lock
	$(BIN)/uv pip compile requirements-tools.in --python-version 3.11 --upgrade -o requirements-tools.lock

# FRAUD_REQUIRE_TOOLS=1: a missing checkov or hadolint fails the manifest and Dockerfile checks
# instead of skipping them.
test: install ## Run the unit and integration tests (starts and stops the broker and servers)
	FRAUD_REQUIRE_TOOLS=1 $(BIN)/pytest tests/unit tests/integration

test-unit: install ## Run the fast unit tests only
	FRAUD_REQUIRE_TOOLS=1 $(BIN)/pytest tests/unit

lint: $(INSTALLED) ## ruff check and format check
	$(BIN)/ruff check $(CODE)
	$(BIN)/ruff format --check $(CODE)

format: $(INSTALLED) ## Apply ruff fixes and formatting
	$(BIN)/ruff check --fix $(CODE)
	$(BIN)/ruff format $(CODE)

demo: $(INSTALLED) ## The whole loop on generated data: train, serve, replay with delayed labels, monitor, retrain on drift, promote (about 5 minutes)
	$(FRAUD) demo --out $(DEMO_DIR)

demo-score: $(INSTALLED) ## Generate data, train and gate it with the pipeline (kfp.local), serve it, score held-out transactions (about 2 minutes)
	$(FRAUD) generate --out $(DEMO_DIR)/transactions.parquet --transactions 200000 --cards 4000 --days 60 \
		--holdout-days 2 --holdout-out $(DEMO_DIR)/holdout.parquet
	$(FRAUD) validate $(DEMO_DIR)/transactions.parquet
	$(FRAUD) pipeline run --data $(DEMO_DIR)/transactions.parquet --output-dir $(DEMO_DIR)/run \
		--registry $(DEMO_DIR)/registry
	$(FRAUD) model list --registry $(DEMO_DIR)/registry
	$(FRAUD) demo-score --data $(DEMO_DIR)/holdout.parquet --count 300 --registry $(DEMO_DIR)/registry

serve: $(INSTALLED) ## Serve the registry's current model (transformer on :8080) until Ctrl-C
	$(FRAUD) serve

pipeline-yaml: $(INSTALLED) ## Recompile pipelines/fraud_training_pipeline.yaml and components/*.yaml
	$(BIN)/python pipelines/fraud_training_pipeline.py

bench: $(INSTALLED) ## Run the benchmarks and print their figures (the serving and handbook ones in their --quick form)
	@for script in benchmarks/bench_*.py; do \
		args=; case "$$script" in benchmarks/bench_serving.py|benchmarks/bench_handbook.py) args=--quick;; esac; \
		echo "== $$script $$args"; $(BIN)/python $$script $$args || exit 1; done

e2e: $(INSTALLED) ## On a new kind cluster: install KServe, Kubeflow Pipelines, the manifests; train, deploy, score, schedule (needs Docker, kind, kubectl; KEEP_CLUSTER=1 keeps it)
	scripts/kind-e2e.sh

clean: ## Remove generated outputs (keeps .venv)
	rm -rf $(DEMO_DIR) .pytest_cache .ruff_cache e2e-logs
