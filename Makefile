# The two entry points of the README: `make demo` and `make test`.
# Each creates the virtual environment (.venv) on first use and installs what it needs.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.chords-installed

.PHONY: demo test bench clean

$(STAMP): pyproject.toml Makefile
	$(PYTHON) -m venv $(VENV)
	# the CPU build of torch; an unpinned torch would pull a multi-GB CUDA build
	$(PY) -m pip install -q --disable-pip-version-check 'torch==2.13.0'
	$(PY) -m pip install -q --disable-pip-version-check -e '.[test,torch,jax,plots,progress,diffusers,bench,notebooks]'
	touch $(STAMP)

demo: $(STAMP)
	$(PY) -m chords_core demo $(ARGS)

test: $(STAMP)
	$(PY) -m pytest -q -p no:cacheprovider $(ARGS)

bench: $(STAMP)
	$(PY) benchmarks/overhead.py

clean:
	rm -rf $(VENV) demo-output
