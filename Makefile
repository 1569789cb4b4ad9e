# Steward developer entry points. Every target installs what it needs first.
SHELL := /bin/bash
.DEFAULT_GOAL := help

PYTHON ?= python3
UV_VERSION := 0.13.9
UV := .uv/bin/uv
VENV := .venv
STAMP := $(VENV)/.installed
HOST ?= 127.0.0.1
PORT ?= 8000
export UV_PYTHON_DOWNLOADS := never
export UV_PROJECT_ENVIRONMENT := $(VENV)

.PHONY: help install run test lint audit format bench clean

help: ## List the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  %-10s %s\n", $$1, $$2}'

$(UV):
	$(PYTHON) -m venv .uv
	.uv/bin/pip install --quiet --disable-pip-version-check "uv==$(UV_VERSION)"

$(STAMP): $(UV) pyproject.toml uv.lock
	$(UV) sync --frozen --python $(PYTHON)
	@touch $(STAMP)

install: $(STAMP) ## Build .venv from uv.lock (no-op when up to date)

run: install ## Start Steward: embedded engines, migrations, API, worker, beat
	HOST=$(HOST) PORT=$(PORT) $(VENV)/bin/steward run

test: install ## Run the test suite
	$(VENV)/bin/pytest

lint: install ## ruff (lint + format check) and mypy (strict on src/)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy

audit: install ## Known vulnerabilities in the locked dependencies (pip-audit)
	@$(UV) export --frozen --no-emit-project --quiet > .venv/locked-requirements.txt
	$(VENV)/bin/pip-audit --requirement .venv/locked-requirements.txt --no-deps --disable-pip \
		--progress-spinner off

format: install ## Apply ruff's fixes and formatting
	$(VENV)/bin/ruff check --fix .
	$(VENV)/bin/ruff format .

bench: install ## Load benchmarks; writes bench/RESULTS.md
	@command -v wrk >/dev/null || { apt-get update -qq && apt-get install -y -qq wrk >/dev/null; }
	$(VENV)/bin/python -m bench.run

clean: ## Remove the virtualenvs and caches (keeps .steward data)
	rm -rf .uv $(VENV) .mypy_cache .ruff_cache .pytest_cache
