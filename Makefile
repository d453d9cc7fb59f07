# IRG Motion: every target builds what it needs from nothing, under .venv*/.
# `make demo` runs the real pipeline headless; `make test` runs every test.

PYTHON      ?= python3.11
TORCH_VER   := 2.13.0
BPY_VERSIONS := 5.0.1 4.5.*
VENV_BACKEND := .venv-backend
VENV_BPY50   := .venv-bpy50
VENV_BPY45   := .venv-bpy45
PROMPT      ?= a person walks forward and waves with the right hand
FIXTURE_DIR := out/fixture-model

# Tests never write to the user's config or reach a hub.
export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1
export PYTHONDONTWRITEBYTECODE := 1

.PHONY: all envs test test-unit test-blender demo fixture bench clean extension

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
