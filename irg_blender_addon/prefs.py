"""Add-on preferences and the merged Settings; the backend's management from the preferences.

Where a setting comes from, highest first: a keyword passed to `get_settings`
(scripts, operators) > the add-on preferences > the environment variables
IRG_BACKEND_PYTHON / IRG_MODEL_DIR / IRG_SERVER_URL / IRG_SERVER_TOKEN (only for
those, when the preference is empty) > the built-in default.

Also here: "Set up backend" (builds the backend's Python environment with
backend_setup.BackendSetupJob) and "Convert model..." (convert_job.ConvertJob). Both
run as a `PrefsTask` that a timer pumps (tests call `tasks.pump()`, timers never run
headless); the preferences draw its progress, and on success the task stores its
result (the new Python, the new model folder) in the preferences. The backend
operators (start, stop, ping, show log) and the Backend sub-panel live here too.

The server token is a PASSWORD property and is never logged or shown: Settings
leaves it out of its repr.
"""
from __future__ import annotations

import atexit
import dataclasses
import os
import sys
import time
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import bpy
from bpy.props import BoolProperty, EnumProperty, FloatProperty, IntProperty, StringProperty

from . import client
from .backend_setup import BackendSetupJob, SubprocessJob
from .convert_job import DATASETS, ConvertJob

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
TORCH_BUILDS = (("auto", "Auto", "The CUDA build when an NVIDIA GPU is found, else the CPU build"),
                ("cpu", "CPU", "The CPU build of torch"),
                ("cuda", "CUDA", "The CUDA build of torch (an NVIDIA GPU and driver)"),
                ("skip", "Keep", "Install no torch explicitly: keep the one present, or the one the "
                                 "backend's dependencies bring"))

ENV_PYTHON = "IRG_BACKEND_PYTHON"
ENV_MODEL = "IRG_MODEL_DIR"
ENV_SERVER_URL = "IRG_SERVER_URL"
ENV_SERVER_TOKEN = "IRG_SERVER_TOKEN"
TASK_INTERVAL = 0.1


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


class IRG_AddonPreferences(bpy.types.AddonPreferences):
    """Preferences > Add-ons > IRG Motion."""

    bl_idname = ADDON_ID

    backend_python: StringProperty(
        name="Backend Python", subtype="FILE_PATH",
        description="The python executable of the backend environment (with torch), "
                    "e.g. .venv-backend/bin/python, or the one Set Up Backend made. Empty: $IRG_BACKEND_PYTHON")
    model_dir: StringProperty(
        name="Model Folder", subtype="DIR_PATH",
        description="A folder made by `irg-motion convert` or Convert Model (holds manifest.json). "
                    "Empty: $IRG_MODEL_DIR")
    device: EnumProperty(name="Device", items=DEVICES, default="auto")
    precision: EnumProperty(name="Precision", items=PRECISIONS, default="auto")
    server_url: StringProperty(
        name="Server URL",
        description="tcp://HOST:PORT of an `irg-motion serve --listen` server (e.g. a GPU machine): generation "
                    "runs there instead of in a local process. Empty: the local backend. Env: $IRG_SERVER_URL")
    server_token: StringProperty(
        name="Server Token", subtype="PASSWORD",
        description="The server's token (the content of its --token-file); stored in the user preferences, "
                    "never shown or logged. Env: $IRG_SERVER_TOKEN")
    backend_source: StringProperty(
        name="Backend Source",
        description="What Set Up Backend installs: the IRG Motion source folder (with pyproject.toml), a wheel "
                    "(.whl) or a pip requirement such as irg-motion==0.1.0. Empty: this add-on's own source "
                    "folder when it has one, else the matching release")
    torch_build: EnumProperty(name="Torch Build", items=TORCH_BUILDS, default="auto")
    torch_index_url: StringProperty(
        name="Torch Index URL",
        description="Optional package index for the torch step only (e.g. the PyTorch CUDA index on Windows, "
                    "or its CPU index for a smaller download)")
    backend_env_dir: StringProperty(
        name="Environment Folder", subtype="DIR_PATH",
        description="Where Set Up Backend builds the environment. Empty: the add-on's folder in your "
                    "Blender user files")
    show_setup_options: BoolProperty(name="Setup Options", default=False)
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
        draw_preferences(self.layout, self)


def draw_preferences(layout, p) -> None:
    """The preferences (p: the add-on's preferences) with the running task and the backend's state."""
    from .ui import wrapped_labels  # ui imports this module
    box = layout.box()
    box.label(text="Backend", icon="PREFERENCES")
    box.prop(p, "server_url")
    if p.server_url.strip():
        box.prop(p, "server_token")
        box.label(text="Generation runs on the server; the local backend settings are not used.", icon="URL")
    else:
        _draw_local(box, p)
    draw_task(box, wrapped_labels)
    draw_backend_status(box, wrapped_labels)
    col = layout.box().column()
    col.label(text="Generation defaults")
    col.prop(p, "mode")
    row = col.row()
    row.prop(p, "max_rounds")
    row.prop(p, "max_motion_tokens")
    col.prop(p, "max_trace_tokens")
    row = col.row()
    row.prop(p, "temperature")
    row.prop(p, "top_p")
    row.prop(p, "seed")


def _draw_local(layout, p) -> None:
    row = layout.row(align=True)
    row.prop(p, "backend_python")
    row.operator("irg.setup_backend", text="Set Up Backend", icon="SCRIPT")
    layout.prop(p, "show_setup_options", icon="TRIA_DOWN" if p.show_setup_options else "TRIA_RIGHT", emboss=False)
    if p.show_setup_options:
        col = layout.box().column()
        col.prop(p, "backend_source")
        col.prop(p, "torch_build")
        col.prop(p, "torch_index_url")
        col.prop(p, "backend_env_dir")
        col.label(text=f"Default folder: {env_dir_text()}", icon="FILEBROWSER")
    row = layout.row(align=True)
    row.prop(p, "model_dir")
    row.operator("irg.convert_model", text="Convert Model...", icon="IMPORT")
    row = layout.row()
    row.prop(p, "device")
    row.prop(p, "precision")


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
    for name, env in _ENVIRONMENT:
        if not values[name]:
            values[name] = os.environ.get(env, "")
    values.update({k: v for k, v in overrides.items() if v is not None or k == "seed"})
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
    """This add-on's source folder when it is a checkout (pyproject.toml), else the release of the
    same version (`irg-motion==X`, from blender_manifest.toml)."""
    if (PACKAGE_ROOT / "pyproject.toml").is_file():
        return str(PACKAGE_ROOT)
    try:
        version = tomllib.loads((PACKAGE_ROOT / "blender_manifest.toml").read_text(encoding="utf-8"))["version"]
    except (OSError, KeyError, tomllib.TOMLDecodeError):
        return "irg-motion"
    return f"irg-motion=={version}"


# -- tasks run from the preferences ----------------------------------------------------------

class PrefsTask:
    """A SubprocessJob started from the preferences; when it succeeds, `apply(result)` stores what
    it made and returns the message the preferences show."""

    def __init__(self, title: str, job: SubprocessJob, apply: Callable[[str], str]):
        self.title = title
        self.job = job
        self.apply = apply
        self.message = ""
        self.finished = False

    @property
    def running(self) -> bool:
        return self.job.running

    @property
    def error(self) -> str:
        return self.job.error or ""

    def start(self) -> None:
        self.job.start()
        self._settle()

    def pump(self) -> bool:
        """Pump the job; on its end store the result. True while it runs."""
        running = self.job.pump()
        self._settle()
        return running

    def cancel(self, wait: bool = False) -> None:
        self.job.cancel(wait=wait)
        self._settle()

    def _settle(self) -> None:
        if self.finished or self.job.running:
            return
        self.finished = True
        job = self.job
        if job.state == "done" and job.result:
            try:
                self.message = self.apply(job.result)
            except Exception as exc:  # storing the result must not lose it
                self.message = f"{self.title} finished ({job.result}), but it could not be stored: {exc}"
        elif job.state == "cancelled":
            self.message = f"{self.title} cancelled; nothing changed."
        if job.warnings:
            self.message += "\nWarnings: " + "; ".join(job.warnings)


class TaskRunner:
    """Holds the one preferences task (setup or convert) and the timer that pumps it."""

    def __init__(self):
        self.task: PrefsTask | None = None

    def busy(self) -> bool:
        return self.task is not None and self.task.running

    def start(self, task: PrefsTask, *, timer: bool = True) -> PrefsTask:
        """Start the task (it fails at once, with its error, on bad input) and, in the UI, its timer."""
        if self.busy():
            raise RuntimeError(f"{self.task.title} is running: wait for it or cancel it first.")
        self.task = task
        task.start()
        if timer and task.running and not bpy.app.timers.is_registered(_tick_task):
            bpy.app.timers.register(_tick_task, first_interval=TASK_INTERVAL)
        return task

    def pump(self) -> bool:
        """What the timer does; True while the task runs."""
        return self.task.pump() if self.task is not None else False

    def cancel(self, wait: bool = False) -> None:
        if self.task is not None:
            self.task.cancel(wait=wait)

    def shutdown(self) -> None:
        """Stop the timer and the task's subprocess (add-on unregister, Blender quit)."""
        try:
            if bpy.app.timers.is_registered(_tick_task):
                bpy.app.timers.unregister(_tick_task)
        except (AttributeError, ReferenceError):  # bpy is going away at quit
            pass
        if self.busy():
            self.task.cancel(wait=True)


tasks = TaskRunner()
atexit.register(tasks.shutdown)


def _tick_task() -> float | None:
    try:
        running = tasks.pump()
    except Exception as exc:  # a timer that raises is dropped silently: end the task visibly
        if tasks.task is not None:
            tasks.task.cancel()
            tasks.task.message = f"Internal error: {exc!r}"
        running = False
    for window in getattr(bpy.context.window_manager, "windows", ()):
        for area in window.screen.areas:
            if area.type in ("PREFERENCES", "VIEW_3D"):
                area.tag_redraw()
    return TASK_INTERVAL if running else None


def _store(name: str, what: str) -> Callable[[str], str]:
    """An `apply` that stores the result in the preference `name`."""
    def apply(result: str) -> str:
        prefs = addon_preferences()
        if prefs is None:
            return f"{what}: {result}. Enable the add-on and set it in the preferences."
        setattr(prefs, name, result)
        return f"{what}: {result} (stored in the preferences)."
    return apply


def draw_task(layout, wrapped_labels) -> None:
    """The running or last setup/convert task: stage, progress, its end (never raises)."""
    task = tasks.task
    if task is None:
        return
    box = layout.box()
    job = task.job
    if task.running:
        box.label(text=f"{task.title}: {job.stage}", icon="SORTTIME")
        box.progress(factor=float(job.progress), type="BAR", text=f"{job.progress * 100:.0f}%")
        if job.detail:
            box.label(text=job.detail)
        box.operator("irg.cancel_task", text="Cancel", icon="CANCEL")
    elif job.state == "failed":
        wrapped_labels(box, task.error, icon="ERROR", width=90, max_lines=24)
        box.operator("irg.show_backend_log", text="Show Full Log", icon="TEXT").source = "TASK"
    elif task.message:
        wrapped_labels(box, task.message, icon="CHECKMARK" if job.state == "done" else "INFO", width=90)


def describe_backend(found) -> str:
    """A line about a client (local or remote; None: none yet); never raises."""
    if found is None:
        return "Not running: it starts on the first request."
    return found.status_text()


def draw_backend_status(layout, wrapped_labels) -> None:
    """The backend's state and its buttons (start/restart, stop, ping, log); never raises."""
    try:
        found = client.find_client(get_settings())
        text = describe_backend(found)
    except (ValueError, client.BackendError) as exc:
        found, text = None, str(exc)
    col = layout.column(align=True)
    wrapped_labels(col, text, icon="CHECKMARK" if found is not None and found.state == "ready" else "INFO",
                   width=60, max_lines=6)
    row = col.row(align=True)
    running = found is not None and found.state in ("starting", "ready")
    row.operator("irg.backend_start", text="Restart" if running else "Start", icon="FILE_REFRESH")
    row.operator("irg.backend_stop", text="Stop", icon="X")
    row.operator("irg.backend_ping", text="Ping", icon="URL")
    row.operator("irg.show_backend_log", text="Log", icon="TEXT").source = "BACKEND"


# -- operators -------------------------------------------------------------------------------

def _fail(op, message: str) -> set[str]:
    op.report({"ERROR"}, message)
    return {"CANCELLED"}


def _start_task(op, task: PrefsTask) -> set[str]:
    """Start a setup/convert task (a UI timer pumps it, except in background mode); a task
    refused at its start is reported by the operator."""
    task = tasks.start(task, timer=not bpy.app.background)
    if task.job.state == "failed":
        return _fail(op, task.error)
    return {"FINISHED"}


class IRG_OT_setup_backend(bpy.types.Operator):
    """Build the backend's Python environment (a virtual environment made with Blender's Python, torch and the \
backend), then use it"""

    bl_idname = "irg.setup_backend"
    bl_label = "Set Up Backend"

    force: BoolProperty(name="Rebuild", description="Rebuild even when the environment already works",
                        options={"SKIP_SAVE"})

    @classmethod
    def poll(cls, context):
        return not tasks.busy()

    def execute(self, context):
        prefs = addon_preferences()
        source = (prefs.backend_source.strip() if prefs else "") or default_backend_source()
        venv = bpy.path.abspath(prefs.backend_env_dir) if prefs and prefs.backend_env_dir else default_env_dir()
        job = BackendSetupJob(sys.executable, venv, source, prefs.torch_build if prefs else "auto",
                              torch_index_url=(prefs.torch_index_url.strip() or None) if prefs else None,
                              force=self.force)
        return _start_task(self, PrefsTask("Set up backend", job, _store("backend_python", "Backend environment ready")))


class IRG_OT_convert_model(bpy.types.Operator):
    """Convert the released IRG-MotionLLM files into a model folder, then use it"""

    bl_idname = "irg.convert_model"
    bl_label = "Convert Model"

    checkpoint: StringProperty(name="IRG Checkpoint", subtype="FILE_PATH",
                               description="The fine-tuned LLM: a .pth/.bin or .safetensors file")
    base: StringProperty(name="Gemma-2 Base", subtype="DIR_PATH",
                         description="The folder with the Gemma-2-2b-it config.json and tokenizer, or the hub id "
                                     "google/gemma-2-2b-it (then the token is used)")
    vqvae: StringProperty(name="VQ-VAE", subtype="FILE_PATH",
                          description="vqvae.pth (empty when the checkpoint carries it under net.)")
    mean: StringProperty(name="Mean", subtype="FILE_PATH", description="mean.npy of the dataset")
    std: StringProperty(name="Std", subtype="FILE_PATH", description="std.npy of the dataset")
    out_dir: StringProperty(name="Output Folder", subtype="DIR_PATH", description="A new or empty folder")
    stage: EnumProperty(name="Stage", items=(("AUTO", "From the file name", ""), ("1", "1", ""), ("2", "2", ""),
                                            ("3", "3", "")), default="AUTO")
    dataset: EnumProperty(name="Dataset", items=[(d, d, "") for d in DATASETS], default=DATASETS[0])
    dtype: EnumProperty(name="Precision", items=(("bfloat16", "BF16", "Half the size (recommended)"),
                                                 ("float32", "FP32", "Full precision")), default="bfloat16")
    token: StringProperty(name="Hugging Face Token", subtype="PASSWORD", options={"SKIP_SAVE"},
                          description="Only for a hub id as the base; passed to the converter through its "
                                      "environment, never on its command line")

    @classmethod
    def poll(cls, context):
        return not tasks.busy()

    def invoke(self, context, event):
        return context.window_manager.invoke_props_dialog(self, width=560)

    def draw(self, context):
        col = self.layout.column()
        for name in ("checkpoint", "base", "vqvae", "mean", "std", "out_dir", "stage", "dataset", "dtype", "token"):
            col.prop(self, name)

    def execute(self, context):
        try:
            python = get_settings().backend_python
        except ValueError as exc:
            return _fail(self, str(exc))
        base = self.base.strip()
        if base.startswith("//"):
            base = bpy.path.abspath(base)
        job = ConvertJob(python or "", bpy.path.abspath(self.checkpoint), base,
                         bpy.path.abspath(self.vqvae) if self.vqvae.strip() else None,
                         bpy.path.abspath(self.mean), bpy.path.abspath(self.std), bpy.path.abspath(self.out_dir),
                         stage=None if self.stage == "AUTO" else int(self.stage), dataset=self.dataset,
                         dtype=self.dtype, token=self.token or None)
        return _start_task(self, PrefsTask("Convert model", job, _store("model_dir", "Model converted")))


class IRG_OT_cancel_task(bpy.types.Operator):
    """Stop Set Up Backend or Convert Model (nothing half-made is kept)"""

    bl_idname = "irg.cancel_task"
    bl_label = "Cancel"

    @classmethod
    def poll(cls, context):
        return tasks.busy()

    def execute(self, context):
        tasks.cancel()
        return {"FINISHED"}


def _current_client(create: bool):
    """The client for the current settings (BackendError/ValueError when they are incomplete)."""
    settings = get_settings()
    return client.client_for(settings) if create else client.find_client(settings)


class IRG_OT_backend_start(bpy.types.Operator):
    """Start the backend now (it loads the model and stays warm); restart it when it runs"""

    bl_idname = "irg.backend_start"
    bl_label = "Start Backend"

    def execute(self, context):
        from .jobs import manager
        if manager.busy():
            return _fail(self, "A generation is running: cancel it before restarting the backend.")
        try:
            backend = _current_client(create=True)
            if backend.state in ("starting", "ready"):
                backend.stop()
            backend.ensure_started()
        except (ValueError, client.BackendError) as exc:
            return _fail(self, str(exc))
        self.report({"INFO"}, "Backend starting: the model loads in the background.")
        return {"FINISHED"}


class IRG_OT_backend_stop(bpy.types.Operator):
    """Stop the backend and free its memory (the next request starts it again)"""

    bl_idname = "irg.backend_stop"
    bl_label = "Stop Backend"

    @classmethod
    def poll(cls, context):
        from .jobs import manager
        return not manager.busy()

    def execute(self, context):
        client.shutdown_all()
        self.report({"INFO"}, "Backend stopped.")
        return {"FINISHED"}


class IRG_OT_backend_ping(bpy.types.Operator):
    """Check that the backend answers"""

    bl_idname = "irg.backend_ping"
    bl_label = "Ping Backend"

    def execute(self, context):
        try:
            found = _current_client(create=False)
            if found is None:
                raise client.BackendError("The backend is not running: it starts on the first request "
                                          "(or press Start).")
            seconds = found.ping(timeout=3.0) if hasattr(found, "ping") else None
        except (ValueError, client.BackendError) as exc:
            self.report({"WARNING"}, str(exc))
            return {"CANCELLED"}
        text = f"The backend answered in {seconds * 1000:.0f} ms." if seconds is not None else \
            f"Connected ({found.state})."
        self.report({"INFO"}, text)
        return {"FINISHED"}


LOG_TEXTS = {"BACKEND": "IRG Motion backend log", "TASK": "IRG Motion setup log"}
LOG_MAX_CHARS = 400_000


def backend_log_text() -> str:
    """The backend's log for the current settings: the whole file (its last 400 kB) for a local
    process, the connection log for a server. ValueError/BackendError when there is none."""
    settings = get_settings()
    found = client.find_client(settings)
    if settings.remote:
        if found is None:
            raise client.BackendError("No connection to the server yet: it opens on the first request.")
        return f"# Connection log of {found.url}\n{found.log_tail(10_000)}\n"
    path = found.log_path if found is not None else client.default_log_path(
        client.registry_key(settings.backend_python, settings.model_dir, settings.device, settings.precision))
    try:
        data = Path(path).read_bytes()[-LOG_MAX_CHARS:].decode("utf-8", "replace")
    except OSError:
        raise client.BackendError("The backend has not run yet in this Blender session: its log appears when "
                                  "it starts (press Start or Generate).") from None
    return f"# {path}\n{data}"


class IRG_OT_show_backend_log(bpy.types.Operator):
    """Open the backend's log (or the last Set Up Backend / Convert Model output) in a Text"""

    bl_idname = "irg.show_backend_log"
    bl_label = "Show Backend Log"

    source: EnumProperty(name="Log", items=(("BACKEND", "Backend", "The backend process's log"),
                                            ("TASK", "Setup", "The output of Set Up Backend / Convert Model")),
                         default="BACKEND")

    def execute(self, context):
        try:
            if self.source == "TASK":
                if tasks.task is None:
                    raise client.BackendError("Set Up Backend and Convert Model have not run in this session.")
                content = tasks.task.job.log_tail(10_000) + "\n"
            else:
                content = backend_log_text()
        except (ValueError, client.BackendError) as exc:
            self.report({"WARNING"}, str(exc))
            return {"CANCELLED"}
        name = LOG_TEXTS[self.source]
        text = bpy.data.texts.get(name) or bpy.data.texts.new(name)
        text.from_string(content)
        text.use_fake_user = False
        if not bpy.app.background:
            _show_text(context, text)
        self.report({"INFO"}, f"The log is in the text {name!r} (Text Editor).")
        return {"FINISHED"}


def _show_text(context, text) -> None:
    """Show the text in a Text Editor: an open one, else a new window (best effort)."""
    for window in context.window_manager.windows:
        for area in window.screen.areas:
            if area.type == "TEXT_EDITOR":
                area.spaces.active.text = text
                return
    try:
        bpy.ops.wm.window_new()
        area = max(context.window_manager.windows[-1].screen.areas, key=lambda a: a.width * a.height)
        area.type = "TEXT_EDITOR"
        area.spaces.active.text = text
    except (RuntimeError, ValueError, IndexError):
        pass  # the report names the text


class IRG_PT_backend(bpy.types.Panel):
    """The backend's state, start/stop/ping and its log."""

    bl_space_type = "VIEW_3D"
    bl_region_type = "UI"
    bl_category = "IRG Motion"
    bl_label = "Backend"
    bl_parent_id = "IRG_PT_generate"
    bl_options = {"DEFAULT_CLOSED"}

    def draw(self, context):
        from .ui import wrapped_labels
        try:
            remote = get_settings().remote
        except ValueError as exc:
            wrapped_labels(self.layout, str(exc), icon="ERROR")
            return
        self.layout.label(text="Server" if remote else "Local process", icon="URL" if remote else "CONSOLE")
        draw_backend_status(self.layout, wrapped_labels)
        draw_task(self.layout, wrapped_labels)


def shutdown() -> None:
    """Stop a running setup or conversion (add-on unregister)."""
    tasks.shutdown()


def wait_task(timeout: float = 600.0) -> PrefsTask | None:
    """Pump the preferences task until it ends (scripts, tests); returns it."""
    deadline = time.monotonic() + timeout
    while tasks.pump():
        if time.monotonic() > deadline:
            tasks.cancel(wait=True)
            raise TimeoutError(f"{tasks.task.title} still running after {timeout:.0f} s")
        time.sleep(0.02)
    return tasks.task


CLASSES = (IRG_AddonPreferences, IRG_OT_setup_backend, IRG_OT_convert_model, IRG_OT_cancel_task,
           IRG_OT_backend_start, IRG_OT_backend_stop, IRG_OT_backend_ping, IRG_OT_show_backend_log)
PANEL_CLASSES = (IRG_PT_backend,)  # after ui.CLASSES: a sub-panel of IRG_PT_generate
