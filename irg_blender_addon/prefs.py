"""Add-on preferences (backend, model, generation defaults) and the merged Settings.

Where a setting comes from, highest first: a keyword passed to `get_settings`
(scripts, operators) > the add-on preferences > the environment variables
IRG_BACKEND_PYTHON / IRG_MODEL_DIR (only for those two paths, when the
preference is empty) > the built-in default.
"""
from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass

import bpy
from bpy.props import EnumProperty, FloatProperty, IntProperty, StringProperty

# The add-on's module name: `bl_ext.<repo>.irg_motion` when installed as an extension
# (this package is then its `irg_blender_addon` sub-package), `irg_blender_addon` in tests.
ADDON_ID = __package__.rpartition(".")[0] or __package__

DEVICES = (("auto", "Auto", "CUDA when available, else CPU"),
           ("cpu", "CPU", "Always run on the CPU (slow for the real model)"),
           ("cuda", "CUDA", "An NVIDIA GPU"))
PRECISIONS = (("auto", "Auto", "4-bit NF4 on CUDA, fp32 on CPU"),
              ("nf4", "NF4 (4-bit)", "About 2.2 GB of GPU memory; CUDA only"),
              ("int8", "INT8", "8-bit weights; CUDA only"),
              ("bf16", "BF16", "16-bit weights, about 5.2 GB"),
              ("fp32", "FP32", "Full precision"))
MODES = (("interleaved", "Reason & refine", "The model analyses the prompt, generates, assesses and refines "
          "(each refinement becomes a version)"),
         ("direct", "Direct", "One motion, no reasoning trace (fastest)"))

ENV_PYTHON = "IRG_BACKEND_PYTHON"
ENV_MODEL = "IRG_MODEL_DIR"


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

    def generate_request(self, prompt: str, mode: str | None = None) -> dict:
        """The `generate` request fields for this prompt (docs/protocol.md)."""
        return {"type": "generate", "prompt": prompt, "mode": mode or self.mode,
                "max_rounds": self.max_rounds, "max_motion_tokens": self.max_motion_tokens,
                "max_new_tokens": self.max_trace_tokens,
                "temperature": self.temperature, "top_p": self.top_p, "seed": self.seed}


_CHOICES = {"device": [d[0] for d in DEVICES], "precision": [p[0] for p in PRECISIONS],
            "mode": [m[0] for m in MODES]}


class IRG_AddonPreferences(bpy.types.AddonPreferences):
    """Preferences > Add-ons > IRG Motion."""

    bl_idname = ADDON_ID

    backend_python: StringProperty(
        name="Backend Python", subtype="FILE_PATH",
        description="The python executable of the backend environment (with torch), "
                    "e.g. .venv-backend/bin/python. Empty: $IRG_BACKEND_PYTHON")
    model_dir: StringProperty(
        name="Model Folder", subtype="DIR_PATH",
        description="A folder made by `irg-motion convert` (holds manifest.json). Empty: $IRG_MODEL_DIR")
    device: EnumProperty(name="Device", items=DEVICES, default="auto")
    precision: EnumProperty(name="Precision", items=PRECISIONS, default="auto")
    mode: EnumProperty(name="Mode", items=MODES, default="interleaved")
    max_rounds: IntProperty(name="Max Rounds", default=5, min=1, max=5,
                            description="Most generate/assess/refine rounds in one trace")
    max_motion_tokens: IntProperty(name="Max Motion Tokens", default=49, min=2, max=50,
                                   description="Longest motion: one token is 4 frames (0.2 s)")
    max_trace_tokens: IntProperty(name="Max Trace Tokens", default=1300, min=64, max=8192,
                                  description="Token budget of a reasoning trace, prompt included "
                                              "(the authors use 1300)")
    temperature: FloatProperty(name="Temperature", default=0.0, min=0.0, max=2.0,
                               description="0 is greedy decoding (as the model was evaluated)")
    top_p: FloatProperty(name="Top P", default=1.0, min=0.01, max=1.0)
    seed: IntProperty(name="Seed", default=-1, min=-1, description="-1: a new random seed each time")

    def draw(self, context):
        layout = self.layout
        col = layout.column()
        col.label(text="Backend")
        col.prop(self, "backend_python")
        col.prop(self, "model_dir")
        row = col.row()
        row.prop(self, "device")
        row.prop(self, "precision")
        col.separator()
        col.label(text="Generation defaults")
        col.prop(self, "mode")
        row = col.row()
        row.prop(self, "max_rounds")
        row.prop(self, "max_motion_tokens")
        col.prop(self, "max_trace_tokens")
        row = col.row()
        row.prop(self, "temperature")
        row.prop(self, "top_p")
        row.prop(self, "seed")


def addon_preferences() -> IRG_AddonPreferences | None:
    """This add-on's preferences, or None when it is registered without being enabled."""
    addon = bpy.context.preferences.addons.get(ADDON_ID)
    return addon.preferences if addon is not None else None


def get_settings(**overrides) -> Settings:
    """Preferences merged with keyword overrides (keyword > preferences > environment).

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
    for name, env in (("backend_python", ENV_PYTHON), ("model_dir", ENV_MODEL)):
        if not values[name]:
            values[name] = os.environ.get(env, "")
    values.update({k: v for k, v in overrides.items() if v is not None or k == "seed"})
    for name in ("backend_python", "model_dir"):
        values[name] = bpy.path.abspath(str(values[name])) if values[name] else ""
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
    if s.seed is not None and s.seed < 0:
        raise ValueError(f"seed must be >= 0 or None, not {s.seed}")
    return s


CLASSES = (IRG_AddonPreferences,)
