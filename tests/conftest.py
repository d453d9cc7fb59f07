"""Shared test setup: offline hubs, a private Blender config folder, shared data paths."""
from __future__ import annotations

import os
import sys
import tempfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("IRG_SHARED_DIR", ROOT.parent / "shared"))

# Before anything imports transformers or bpy: never reach a hub, never touch ~/.config/blender.
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"
os.environ.setdefault("BLENDER_USER_RESOURCES", tempfile.mkdtemp(prefix="irg-blender-user-"))
os.environ.setdefault("OMP_NUM_THREADS", "1")
# The repository (model_backend, irg_blender_addon) and this folder (shared helpers such as
# ui_recorder; the test folders are not packages) are importable from every test.
for _path in (ROOT, ROOT / "tests"):
    if str(_path) not in sys.path:
        sys.path.insert(0, str(_path))


def _shared(sub: str) -> Path:
    path = SHARED / sub
    if not path.exists():
        pytest.skip(f"shared test data not found at {path} (set IRG_SHARED_DIR to the shared/ folder)")
    return path


@pytest.fixture(scope="session")
def humanml3d_dir() -> Path:
    """../shared/data/humanml3d (skips with a reason when absent)."""
    return _shared("data/humanml3d")


@pytest.fixture(scope="session")
def bvh_dir() -> Path:
    """../shared/data/bvh (skips with a reason when absent)."""
    return _shared("data/bvh")


@pytest.fixture(scope="session")
def demo_model() -> Path:
    """The demo model shipped in presets/models, the default model (skips with a reason when absent).
    For tests that need a model whose motion matches its prompt; format tests use a fixture model."""
    from model_backend.wire.manifest import default_model_dir, shipped_model
    found = shipped_model()
    if found is None:
        pytest.skip(f"the demo model is absent (no {default_model_dir() / 'manifest.json'})")
    return found


@pytest.fixture(scope="session")
def backend_python() -> Path:
    """The Python of the backend environment (made by `make envs`)."""
    path = Path(os.environ.get("IRG_BACKEND_PYTHON", ROOT / ".venv-backend" / "bin" / "python"))
    if not path.exists():
        pytest.skip(f"backend Python not found at {path}: run `make envs` first")
    return path
