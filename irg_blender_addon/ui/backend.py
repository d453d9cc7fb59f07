"""The Backend sub-panel and the backend's operators: start, stop, ping, show its log;
Set Up Backend, Convert Model and cancelling them (run as jobs.tasks tasks)."""
from __future__ import annotations

import sys
from pathlib import Path

import bpy
from bpy.props import BoolProperty, EnumProperty, StringProperty

from ..backend import registry
from ..backend.base import BackendError
from ..backend.convert import DATASETS, ConvertJob
from ..backend.setup import BackendSetupJob
from ..jobs.base import manager
from ..jobs.tasks import PrefsTask, store, tasks
from ..settings import addon_preferences, default_backend_source, default_env_dir, get_settings
from ..registration import register_classes, unregister_classes
from .widgets import SubPanel, refuse, wrapped_labels


def draw_task(layout) -> None:
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


def draw_backend_status(layout) -> None:
    """The backend's state and its buttons (start/restart, stop, ping, log); never raises."""
    try:
        found = registry.find_client(get_settings())
        text = describe_backend(found)
    except (ValueError, BackendError) as exc:
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

def _start_task(op, task: PrefsTask) -> set[str]:
    """Start a setup/convert task (a UI timer pumps it, except in background mode); a task
    refused at its start is reported by the operator."""
    task = tasks.start(task, timer=not bpy.app.background)
    if task.job.state == "failed":
        return refuse(op, task.error)
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
        return _start_task(self, PrefsTask("Set up backend", job, store("backend_python", "Backend environment ready")))


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
            return refuse(self, exc)
        base = self.base.strip()
        if base.startswith("//"):
            base = bpy.path.abspath(base)
        job = ConvertJob(python or "", bpy.path.abspath(self.checkpoint), base,
                         bpy.path.abspath(self.vqvae) if self.vqvae.strip() else None,
                         bpy.path.abspath(self.mean), bpy.path.abspath(self.std), bpy.path.abspath(self.out_dir),
                         stage=None if self.stage == "AUTO" else int(self.stage), dataset=self.dataset,
                         dtype=self.dtype, token=self.token or None)
        return _start_task(self, PrefsTask("Convert model", job, store("model_dir", "Model converted")))


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
    return registry.client_for(settings) if create else registry.find_client(settings)


class IRG_OT_backend_start(bpy.types.Operator):
    """Start the backend now (it loads the model and stays warm); restart it when it runs"""

    bl_idname = "irg.backend_start"
    bl_label = "Start Backend"

    def execute(self, context):
        if manager.busy():
            return refuse(self, "A generation is running: cancel it before restarting the backend.")
        try:
            backend = _current_client(create=True)
            if backend.state in ("starting", "ready"):
                backend.stop()
            backend.ensure_started()
        except (ValueError, BackendError) as exc:
            return refuse(self, exc)
        self.report({"INFO"}, "Backend starting: the model loads in the background.")
        return {"FINISHED"}


class IRG_OT_backend_stop(bpy.types.Operator):
    """Stop the backend and free its memory (the next request starts it again)"""

    bl_idname = "irg.backend_stop"
    bl_label = "Stop Backend"

    @classmethod
    def poll(cls, context):
        return not manager.busy()

    def execute(self, context):
        registry.shutdown_all()
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
                raise BackendError("The backend is not running: it starts on the first request "
                                          "(or press Start).")
            seconds = found.ping(timeout=3.0) if hasattr(found, "ping") else None
        except (ValueError, BackendError) as exc:
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
    found = registry.find_client(settings)
    if settings.remote:
        if found is None:
            raise BackendError("No connection to the server yet: it opens on the first request.")
        return f"# Connection log of {found.url}\n{found.log_tail(10_000)}\n"
    path = found.log_path if found is not None else registry.default_log_path(
        registry.registry_key(settings.backend_python, settings.model_dir, settings.device, settings.precision))
    try:
        data = Path(path).read_bytes()[-LOG_MAX_CHARS:].decode("utf-8", "replace")
    except OSError:
        raise BackendError("The backend has not run yet in this Blender session: its log appears when "
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
                    raise BackendError("Set Up Backend and Convert Model have not run in this session.")
                content = tasks.task.job.log_tail(10_000) + "\n"
            else:
                content = backend_log_text()
        except (ValueError, BackendError) as exc:
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


class IRG_PT_backend(SubPanel, bpy.types.Panel):
    """The backend's state, start/stop/ping and its log."""

    bl_label = "Backend"
    bl_options = {"DEFAULT_CLOSED"}

    def draw(self, context):
        try:
            remote = get_settings().remote
        except ValueError as exc:
            wrapped_labels(self.layout, str(exc), icon="ERROR")
            return
        self.layout.label(text="Server" if remote else "Local process", icon="URL" if remote else "CONSOLE")
        draw_backend_status(self.layout)
        draw_task(self.layout)


CLASSES = (IRG_OT_setup_backend, IRG_OT_convert_model, IRG_OT_cancel_task, IRG_OT_backend_start,
           IRG_OT_backend_stop, IRG_OT_backend_ping, IRG_OT_show_backend_log, IRG_PT_backend)


def register() -> None:
    register_classes(CLASSES)


def unregister() -> None:
    unregister_classes(CLASSES)
