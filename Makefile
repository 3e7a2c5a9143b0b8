.DEFAULT_GOAL := help
SHELL := /bin/bash
.SHELLFLAGS := -eu -o pipefail -c

VENV := .venv
BIN := $(CURDIR)/$(VENV)/bin
UV := $(shell command -v uv 2>/dev/null || echo "python3 -m uv")
STAMP := $(VENV)/.synced
PYTEST_ARGS ?=

# Every tool runs from the locked environment; nothing phones home.
export PATH := $(BIN):$(PATH)
export MLFLOW_DISABLE_TELEMETRY := true
export DO_NOT_TRACK := true
export UV_LINK_MODE := copy
export STACK

.PHONY: help setup test test-e2e test-rollout test-stack test-compose test-scale images repro-check lint format repro backtest bench bench-smoke bench-scale bench-poison up down secrets status logs drift-demo concept-demo screenshots clean

help: ## show this help
	@awk 'BEGIN {FS = ":.*## "; printf "bitloop: make <target>\n\n"} \
	     /^[a-zA-Z_-]+:.*## / {printf "  \033[36m%-12s\033[0m %s\n", $$1, $$2}' $(MAKEFILE_LIST)

setup: $(STAMP) ## install uv if missing and create .venv from uv.lock (no-op when current)

$(STAMP): uv.lock pyproject.toml
	@command -v uv >/dev/null 2>&1 || python3 -m uv --version >/dev/null 2>&1 || \
	  { echo "installing uv with pip"; python3 -m pip install --quiet "uv>=0.5"; }
	$(UV) sync --frozen --compile-bytecode
	@touch $@

test: $(STAMP) ## run the test suite (unit, property, integration against real servers)
	$(BIN)/pytest -m "not stack and not compose and not scale and not repro and not rollout and not e2e" $(PYTEST_ARGS)

test-e2e: $(STAMP) ## the loop's long flows end to end: DAG runs through DVC and MLflow, outcomes to retraining, a registry outage
	$(BIN)/pytest -m e2e -n 2 $(PYTEST_ARGS)  # independent flows, two at a time

test-rollout: $(STAMP) ## canary rollouts under load: two model servers, MLflow, Prometheus, good and bad candidates
	$(BIN)/pytest -m rollout $(PYTEST_ARGS)

test-stack: $(STAMP) ## smoke-test the local stack: make up, probe every service, the drift and concept demos, make down; three models on one stack
	$(BIN)/pytest -m stack $(PYTEST_ARGS)

test-compose: $(STAMP) ## build every image with podman, run the compose stack, smoke-test it, remove it all
	$(BIN)/pytest -m "compose and not repro" -s $(PYTEST_ARGS)

test-scale: $(STAMP) ## the compose stack scaled out (3 model servers, 2 Celery workers) through SIGKILLs under load
	$(BIN)/pytest -m scale -s $(PYTEST_ARGS)

images: ## build the service images and load them into docker/podman (BUILDER=nix|dockerfile, BASE_IMAGE=...)
	bash ops/docker/build.sh

repro-check: $(STAMP) ## uv.lock is current; dvc repro (on one machine or alternating between two), registered versions and image layers reproduce bit for bit
	$(UV) lock --check
	$(BIN)/pytest -m "repro" -n 2 $(PYTEST_ARGS)  # independent runs, two at a time

lint: $(STAMP) ## ruff (lint + format check) and mypy
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

format: $(STAMP) ## apply ruff's fixes and formatting
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

repro: $(STAMP) ## run the DVC pipeline (needs MLflow: `make up`), pushing each new data version to the DVC remote
	$(BIN)/python -m pipeline repro

backtest: $(STAMP) ## replay 8 simulated histories and the canary trial x 20 seeds through the whole loop (about 22 minutes); writes docs/backtest.md
	$(BIN)/python -m pipeline backtest --scenario all --seeds 20 --first-seed 1

bench: $(STAMP) ## benchmark the model server, with each runtime, against mlflow models serve, and serving three models against one (needs wrk); writes docs/benchmarks.md and docs/models.md
	$(BIN)/python bench/serving.py
	$(BIN)/python bench/models.py

bench-smoke: $(STAMP) ## bitloop vs mlflow models serve vs the no-model ceilings, three short passes (about 2 minutes, needs wrk): fails when a figure of docs/benchmarks.md falls to half
	$(BIN)/python bench/smoke.py

bench-poison: $(STAMP) ## valid throughput alone and beside a stream of records the model refuses (about a minute); writes docs/poison.md
	$(BIN)/python bench/poison.py

bench-scale: $(STAMP) ## how cost grows with data: training at 10k-1M rows, drift, log writes, 30 min of load (about 45 min); writes docs/scale.md
	$(BIN)/python -m bench.scale

up: $(STAMP) ## start the stack (compose with a Docker engine, else local; STACK=compose|local), print every URL
	$(BIN)/python -m ops.local.stack up

down: $(STAMP) ## stop every service (compose or local)
	$(BIN)/python -m ops.local.stack down

secrets: $(STAMP) ## write the compose stack's missing secret files (.bitloop/secrets/, or BITLOOP_SECRETS_DIR)
	$(BIN)/python -m ops.local.stack secrets

status: $(STAMP) ## show the state of each service
	$(BIN)/python -m ops.local.stack status

logs: $(STAMP) ## follow the logs of every service (Ctrl-C to stop)
	$(BIN)/python -m ops.local.stack logs

drift-demo: $(STAMP) ## with the stack up: drift the world, send its traffic, watch drift retrain and swap the champion
	$(BIN)/python -m ops.local.drift_demo

concept-demo: $(STAMP) ## with the stack up: move the world's concept, watch live quality fall, retrain and recover
	$(BIN)/python -m ops.local.concept_demo

screenshots: $(STAMP) ## the README's pictures in docs/img/ (needs chromium; starts the stack when it is down)
	$(BIN)/python -m ops.local.screenshots $(if $(GRAFANA_URL),--grafana-url $(GRAFANA_URL))

clean: ## stop the stack and remove its state (.bitloop/) and the pipeline outputs
	@if [ -x $(BIN)/python ]; then $(BIN)/python -m ops.local.stack down; fi
	rm -rf .bitloop data models reports metrics.json
