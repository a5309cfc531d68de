# Two commands on a fresh machine with Python 3.11 and pip:
#   make book   install, run every notebook (PROFILE, default quick), build the HTML book
#   make test   install, run the test suite (which also runs the notebooks and builds the book)
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV ?= .venv
PROFILE ?= quick
BIN := $(VENV)/bin
STAMP := $(VENV)/.tdmctx-installed

.PHONY: install notebooks book test clean

install: $(STAMP)

# constraints.txt pins the whole environment; pyproject.toml names the direct dependencies.
$(STAMP): pyproject.toml constraints.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -c constraints.txt -e '.[book,dev]'
	touch $@

notebooks: install
	$(BIN)/tdmctx notebooks run --profile $(PROFILE)

book: notebooks
	$(BIN)/jupyter-book build . --warningiserror --keep-going --all
	@echo "book: $(CURDIR)/_build/html/index.html"

test: install
	$(BIN)/python -m pytest

clean:
	rm -rf _build notebooks/*.ipynb book/api/generated book/generated
