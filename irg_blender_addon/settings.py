"""Settings: where a generation's settings come from, merged into one frozen value.

Where a setting comes from, highest first: a keyword passed to `get_settings`
(scripts, operators) > the add-on preferences > the environment variables
IRG_BACKEND_PYTHON / IRG_MODEL_DIR / IRG_SERVER_URL / IRG_SERVER_TOKEN (only for
those, when the preference is empty) > the built-in default. The built-in model is
the demo model that comes with the add-on (model_backend.wire.manifest.shipped_model).

The server token is a PASSWORD property and is never logged or shown: Settings
leaves it out of its repr.
"""
from __future__ import annotations

import dataclasses
import os
import tomllib
from dataclasses import dataclass, field
from pathlib import Path

import bpy

from .backend.setup import BUNDLED_WHEELS, bundled_wheel
from .core import manifest

# The add-on's module name: `bl_ext.<repo>.irg_motion` when installed as an extension
# (this package is then its `irg_blender_addon` sub-package), `irg_blender_addon` in tests.
ADDON_ID = __package__.rpartition(".")[0] or __package__
PACKAGE_ROOT = Path(__file__).resolve().parents[1]  # the source checkout, or the installed extension

DEVICES = (("auto", "Auto", "CUDA when available, else CPU"),
           ("cpu", "CPU", "Always run on the CPU (slow for the real model)"),
           ("cuda", "CUDA", "An NVIDIA GPU"))
PRECISIONS = (("auto", "Auto", "CUDA: BF16 when it fits comfortably, else 4-bit NF4; CPU: FP32, else NF4"),
              ("nf4", "NF4 (4-bit)", "About 2.2 GB of GPU memory; CUDA only"),
              ("int8", "INT8", "8-bit weights; CUDA only"),
              ("bf16", "BF16", "16-bit weights, about 5.2 GB"),
              ("fp32", "FP32", "Full precision"))
MODES = (("interleaved", "Reason & refine", "The model analyses the prompt, generates, assesses and refines "
          "(each refinement becomes a version)"),
         ("direct", "Direct", "One motion, no reasoning trace (fastest)"))

MAX_BATCH_PARALLEL = 16
ENV_PYTHON = "IRG_BACKEND_PYTHON"
ENV_MODEL = manifest.MODEL_ENV
ENV_SERVER_URL = "IRG_SERVER_URL"
ENV_SERVER_TOKEN = "IRG_SERVER_TOKEN"


@dataclass(frozen=True)
class Settings:
    """Everything a generation needs, already merged (see the module docstring)."""

    backend_python: str = ""
    model_dir: str = ""
    device: str = "auto"
    precision: str = "auto"
    mode: str = "interleaved"
    max_rounds: int = 5
    max_motion_tokens: int = 49
    max_trace_tokens: int = 1300
    temperature: float = 0.0
    top_p: float = 1.0
    seed: int | None = None
    server_url: str = ""
    server_token: str = field(default="", repr=False)  # never in a repr, a log or a status line
    thumbnails: bool = True       # render a strip of each new version (jobs/thumbnails.py)
    batch_parallel: int = 0       # a batch's prompts in flight on a server; 0: 4 when it batches, else 1

    @property
    def remote(self) -> bool:
        """True when generation runs on a server (server_url set) instead of a local process."""
        return bool(self.server_url.strip())

    def sampling_fields(self) -> dict:
        """The sampling fields every model-written request shares (docs/protocol.md)."""
        return {"temperature": self.temperature, "top_p": self.top_p, "seed": self.seed,
                "max_new_tokens": self.max_trace_tokens}

    def generate_request(self, prompt: str, mode: str | None = None) -> dict:
        """The `generate` request fields for this prompt (docs/protocol.md)."""
        return {"type": "generate", "prompt": prompt, "mode": mode or self.mode,
                "max_rounds": self.max_rounds, "max_motion_tokens": self.max_motion_tokens,
                **self.sampling_fields()}


_CHOICES = {"device": [d[0] for d in DEVICES], "precision": [p[0] for p in PRECISIONS],
            "mode": [m[0] for m in MODES]}
_ENVIRONMENT = (("backend_python", ENV_PYTHON), ("model_dir", ENV_MODEL),
                ("server_url", ENV_SERVER_URL), ("server_token", ENV_SERVER_TOKEN))


def addon_preferences() -> bpy.types.AddonPreferences | None:
    """This add-on's preferences, or None when it is registered without being enabled."""
    addon = bpy.context.preferences.addons.get(ADDON_ID)
    return addon.preferences if addon is not None else None


def get_settings(**overrides) -> Settings:
    """Preferences merged with keyword overrides (keyword > preferences > environment > built-in).

    Unknown keywords or out-of-range values raise ValueError naming the valid ones."""
    fields = {f.name for f in dataclasses.fields(Settings)}
    unknown = set(overrides) - fields
    if unknown:
        raise ValueError(f"unknown setting(s) {', '.join(sorted(unknown))}; known: {', '.join(sorted(fields))}")
    values = dataclasses.asdict(Settings())
    prefs = addon_preferences()
    if prefs is not None:
        for name in fields:
            values[name] = getattr(prefs, name)
        values["seed"] = None if prefs.seed < 0 else prefs.seed
    for name, env in _ENVIRONMENT:
        if not values[name]:
            values[name] = os.environ.get(env, "")
    values.update({k: v for k, v in overrides.items() if v is not None or k == "seed"})
    if not values["model_dir"]:
        values["model_dir"] = str(manifest.shipped_model() or "")
    for name in ("backend_python", "model_dir"):
        values[name] = bpy.path.abspath(str(values[name])) if values[name] else ""
    values["server_url"] = str(values["server_url"] or "").strip()
    values["server_token"] = str(values["server_token"] or "").strip()
    return _checked(Settings(**values))


def _checked(s: Settings) -> Settings:
    """ValueError naming the field and its valid range when a setting is out of range."""
    for name, choices in _CHOICES.items():
        if getattr(s, name) not in choices:
            raise ValueError(f"{name} must be one of {', '.join(choices)}, not {getattr(s, name)!r}")
    if not 1 <= s.max_rounds <= 5:
        raise ValueError(f"max_rounds must be 1..5, not {s.max_rounds}")
    if not 2 <= s.max_motion_tokens <= 50:
        raise ValueError(f"max_motion_tokens must be 2..50 (one token is 4 frames), not {s.max_motion_tokens}")
    if not 1 <= s.max_trace_tokens <= 8192:
        raise ValueError(f"max_trace_tokens must be 1..8192, not {s.max_trace_tokens}")
    if not 0.0 <= s.temperature <= 2.0 or not 0.0 < s.top_p <= 1.0:
        raise ValueError(f"temperature must be 0..2 and top_p in (0, 1], not {s.temperature}, {s.top_p}")
    if not 0 <= s.batch_parallel <= MAX_BATCH_PARALLEL:
        raise ValueError(f"batch_parallel must be 0 (automatic) .. {MAX_BATCH_PARALLEL}, not {s.batch_parallel}")
    if s.seed is not None and s.seed < 0:
        raise ValueError(f"seed must be >= 0 or None, not {s.seed}")
    return s


# -- where Set up backend builds, and what it installs ---------------------------------------

def default_env_dir() -> Path:
    """The backend environment's folder: the extension's user folder when installed as an
    extension, else `irg_motion/backend-env` in Blender's user config folder."""
    if "." in ADDON_ID:  # bl_ext.<repo>.irg_motion
        return Path(bpy.utils.extension_path_user(ADDON_ID, path="backend-env", create=True))
    return Path(bpy.utils.user_resource("CONFIG", path="irg_motion", create=True)) / "backend-env"


def env_dir_text() -> str:
    """default_env_dir() for a label (never raises: draw() calls it)."""
    try:
        return str(default_env_dir())
    except Exception as exc:  # a redraw must not raise
        return f"unavailable ({exc})"


def default_backend_source() -> str:
    """What Set Up Backend installs by default: this add-on's source folder when it is a checkout
    (pyproject.toml); else the backend wheel the extension zip carries (`make extension`); else the
    release of the same version (`irg-motion==X`)."""
    if (PACKAGE_ROOT / "pyproject.toml").is_file():
        return str(PACKAGE_ROOT)
    try:
        version = tomllib.loads((PACKAGE_ROOT / "blender_manifest.toml").read_text(encoding="utf-8"))["version"]
    except (OSError, KeyError, tomllib.TOMLDecodeError):
        return "irg-motion"
    wheel = bundled_wheel(PACKAGE_ROOT / BUNDLED_WHEELS, version)
    return str(wheel) if wheel is not None else f"irg-motion=={version}"


def default_model_text() -> str:
    """What an empty Model Folder means now, for the preferences (never raises: draw() calls it)."""
    if os.environ.get(ENV_MODEL, "").strip():
        return f"Empty: ${ENV_MODEL} ({os.environ[ENV_MODEL]})"
    found = manifest.shipped_model()
    if found is None:
        return "Empty, and this installation has no demo model: set a model folder"
    return f"Empty: the demo model that comes with the add-on ({found})"


