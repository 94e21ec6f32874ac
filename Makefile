# Two commands: `make demo` (the quickstart on digits) and `make test` (`make lint` first in CI). All create or reuse .venv.
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
# Opt-in, for a laptop without an NVIDIA GPU: `make demo TORCH_INDEX=cpu` installs torch and torchvision from
# PyTorch's CPU wheel index (https://download.pytorch.org/whl/<TORCH_INDEX>) before the project, so the .venv
# holds no CUDA libraries (with the default Linux wheel it is 6.8 GB). Acts only when the stamp rule runs (a new
# .venv, or a changed pyproject.toml). Empty by default: pip's default index, as CI installs.
TORCH_INDEX ?=
TORCH_PINS := torch==2.14.1 torchvision==0.29.1

.PHONY: demo test test-fast lint bench clean

$(STAMP): pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(if $(TORCH_INDEX),$(PY) -m pip install --quiet --disable-pip-version-check $(TORCH_PINS) --index-url https://download.pytorch.org/whl/$(TORCH_INDEX))
	$(PY) -m pip install --quiet --disable-pip-version-check -e '.[test]'
	touch $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/pclc sweep sweeps/configs/quickstart.yaml
	$(VENV)/bin/pclc analyze --experiment quickstart

# Two workers, a test file each at a time (module fixtures such as a private Ray stay per file): about
# half of the suite waits on Ray, servers and subprocesses, so two workers roughly halve its wall time.
PYTEST_WORKERS ?= 2

test: $(STAMP)
	$(PY) -m pytest -q -n $(PYTEST_WORKERS) --dist loadfile --no-loadscope-reorder

lint: $(STAMP)
	$(VENV)/bin/ruff check . && $(VENV)/bin/ruff format --check .

test-fast: $(STAMP)
	$(PY) -m pytest -q -n $(PYTEST_WORKERS) --dist loadfile --no-loadscope-reorder -m "not slow"

bench: $(STAMP)
	$(PY) benchmarks/run_all.py

clean:
	rm -rf ray_results reports runs mlflow.db
