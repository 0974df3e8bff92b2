# The two commands: `make demo` and `make test`. Each does all the set-up first.
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.earthshader-installed
# Pin PyTorch's threads: two processes each spawning a thread per core oversubscribe small machines.
export OMP_NUM_THREADS ?= 2
PYTEST_ARGS ?=
DEMO_ARGS ?=

.PHONY: setup demo test test-slow bench lint clean

setup: $(STAMP)

$(STAMP): pyproject.toml scripts/setup.sh
	VENV=$(VENV) ./scripts/setup.sh
	touch $(STAMP)

demo: $(STAMP)
	$(PY) -m earthshader.demo $(if $(QUICK),--quick,) --out demo_out $(DEMO_ARGS)

test: $(STAMP)
	$(PY) -m pytest -q $(PYTEST_ARGS)

test-slow: $(STAMP)
	$(PY) -m pytest -q -m slow $(PYTEST_ARGS)

bench: $(STAMP)
	MESA_SHADER_CACHE_DISABLE=true $(PY) bench/render.py

lint: $(STAMP)
	$(VENV)/bin/ruff check earthshader rewards scripts tests bench

clean:
	rm -rf $(VENV) demo_out .pytest_cache
