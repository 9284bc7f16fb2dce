# The two entry points of the README: `make demo` and `make test`.
# Each creates its virtual environment on first use and installs what it needs: the demo only numpy,
# scipy and matplotlib (.venv-demo); the tests everything (.venv).
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.chords-installed
DEMO_VENV  ?= .venv-demo
DEMO_PY    := $(DEMO_VENV)/bin/python
DEMO_STAMP := $(DEMO_VENV)/.chords-installed

.PHONY: demo test lint bench clean

$(STAMP): pyproject.toml Makefile
	$(PYTHON) -m venv $(VENV)
	# the CPU build of torch; an unpinned torch would pull a multi-GB CUDA build
	$(PY) -m pip install -q --disable-pip-version-check 'torch==2.13.0'
	$(PY) -m pip install -q --disable-pip-version-check -e '.[test,torch,jax,plots,progress,diffusers,bench,notebooks]'
	# a real pretrained network (tests/test_terrain.py, benchmarks/terrain.py): onnxruntime (CPU) with its
	# dependencies, then the terrain UNet's wheel without them (its metadata asks for onnxruntime-gpu on Linux)
	$(PY) -m pip install -q --disable-pip-version-check 'onnxruntime>=1.18'
	$(PY) -m pip install -q --disable-pip-version-check --no-deps 'adaptive-terrain-diffusion==0.4.2'
	touch $(STAMP)

$(DEMO_STAMP): pyproject.toml Makefile
	$(PYTHON) -m venv $(DEMO_VENV)
	$(DEMO_PY) -m pip install -q --disable-pip-version-check -e '.[plots]'
	touch $(DEMO_STAMP)

demo: $(DEMO_STAMP)
	$(DEMO_PY) -m chords_core demo $(ARGS)

# lint and type checks first (configured in pyproject.toml); any failure fails the target. The suite runs
# on two pytest-xdist workers, a test file each at a time (files keep their module-level state together)
test: $(STAMP)
	$(PY) -m ruff check .
	$(PY) -m mypy
	$(PY) -m pytest -q -p no:cacheprovider -n 2 --dist loadfile $(ARGS)

lint: $(STAMP)
	$(PY) -m ruff check .
	$(PY) -m mypy

bench: $(STAMP)
	$(PY) benchmarks/overhead.py

clean:
	rm -rf $(VENV) $(DEMO_VENV) demo-output
