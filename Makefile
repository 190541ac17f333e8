# The two commands of the README: `make demo` and `make test`. Each installs what it needs
# into a virtual environment (.venv) first, so both work on a fresh clone.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin

.PHONY: demo test clean

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet -e ".[dev]"
	touch $@

demo: $(VENV)/.installed
	$(BIN)/python -m kun_ray.smoke_models jobs/demo.yaml runs/smoke-models
	$(BIN)/kun-ray run jobs/demo.yaml
	@echo
	@echo "Read it back: runs/demo/{documents,filtered,clean}/ and runs/demo/rejects/ (Parquet), runs/demo/report.json"

test: $(VENV)/.installed
	$(BIN)/pytest

clean:
	rm -rf $(VENV) runs
