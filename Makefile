# imagekit: build, smoke-test and publish ML training images.
VENV     := .venv
PY       := $(VENV)/bin/python
IMAGEKIT := $(VENV)/bin/imagekit
PYTEST   := $(VENV)/bin/pytest
DEMO     ?= ocr-cpu

.PHONY: install engine base demo test unit lint bench clean

install: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	python3 -m venv $(VENV)
	$(VENV)/bin/pip install -q --upgrade pip
	$(VENV)/bin/pip install -q -e '.[test]'
	touch $@

engine:
	@bash scripts/engine.sh

# The offline preparation this machine needs: a local base image made
# from Debian's mirror (no registry) and a wheelhouse filled by the host's pip.
base: install engine
	$(IMAGEKIT) base bootstrap

demo: base
	$(IMAGEKIT) fetch $(DEMO)
	$(IMAGEKIT) build $(DEMO)
	$(IMAGEKIT) smoke $(DEMO)

test: install engine
	$(PYTEST) tests

unit: install
	$(PYTEST) tests/unit

lint: install
	$(VENV)/bin/ruff check imagekit tests
	$(IMAGEKIT) lint --all

bench: install engine
	$(PY) bench/run.py

clean:
	rm -rf $(VENV) .imagekit
