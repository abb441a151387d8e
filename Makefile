# Everything is installed into ./.venv from nothing; the constraints file pins the resolved set.
# --no-compile: Python compiles a module's bytecode when it is first imported; compiling every file of every
# package up front (Airflow's and MLflow's included) took most of the install's time.
PYTHON ?= python3.11
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: install test up lint bench clean

# uv (from PyPI, pinned) installs the same pinned set as pip in about 10 s where pip takes 80; pip is the
# fallback when uv cannot be had or cannot reach the index (uv does not compile bytecode either)
UV     := uv==0.13.9
EXTRAS := .[test,airflow,postgres,dask]
WORKERS ?= $(shell echo $$(( $$(nproc 2>/dev/null || echo 1) + 1 )))

$(STAMP): setup.cfg pyproject.toml constraints.txt
	@command -v $(PYTHON) >/dev/null || { echo "need $(PYTHON) on PATH (PyCaret 3.3 supports Python <= 3.11)"; exit 1; }
	$(PYTHON) -m venv $(VENV)
	{ $(BIN)/pip install --quiet "$(UV)" && \
	  $(BIN)/uv pip install --quiet --python $(BIN)/python -c constraints.txt -e "$(EXTRAS)"; } || \
	{ echo "uv unavailable: installing with pip"; $(BIN)/pip install --quiet --upgrade "pip>=24" && \
	  $(BIN)/pip install --quiet --no-compile -c constraints.txt -e "$(EXTRAS)"; }
	touch $(STAMP)

install: $(STAMP)  ## create .venv and install the project with its pinned dependencies

test: $(STAMP)  ## run the whole test suite, one process per CPU (installs first when needed)
	scripts/ensure-postgres
	@# bytecode is compiled on first import (install --no-compile) and must be kept: PYTHONDONTWRITEBYTECODE, set
	@# on some machines, would make every test process compile every module it imports again
	@# loadfile as tests/conftest.py refines it: the long modules first; those of independent tests test by test
	@# one worker more than CPUs: the tests wait on servers, daemons and clusters about a sixth of their time
	PYTHONDONTWRITEBYTECODE= $(BIN)/python -m pytest -n $(WORKERS) --dist loadfile --no-loadscope-reorder --durations=25

up: $(STAMP)  ## bring the loop up on the embedded SQLite registry (Ctrl-C stops it)
	$(BIN)/mlops up

lint: $(STAMP)
	$(BIN)/ruff check .

bench: $(STAMP)
	$(BIN)/python bench/psi.py

clean:
	rm -rf $(VENV) build *.egg-info
