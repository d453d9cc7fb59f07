"""Preferences > Add-ons > IRG Motion: the backend, the model, the generation defaults.

The settings they feed are merged by settings.get_settings; the backend's state and the
running setup/convert task are drawn with ui.backend's helpers.
"""
from __future__ import annotations

import bpy
from bpy.props import BoolProperty, EnumProperty, FloatProperty, IntProperty, StringProperty

from ..registration import register_classes, unregister_classes
from ..backend import token_store
from ..settings import ADDON_ID, DEVICES, MAX_BATCH_PARALLEL, MODES, PRECISIONS, default_model_text, env_dir_text
from .backend import draw_backend_status, draw_task

TORCH_BUILDS = (("auto", "Auto", "The CUDA build when an NVIDIA GPU is found, else the CPU build"),
                ("cpu", "CPU", "The CPU build of torch"),
                ("cuda", "CUDA", "The CUDA build of torch (an NVIDIA GPU and driver)"),
                ("skip", "Keep", "Install no torch explicitly: keep the one present, or the one the "
                                 "backend's dependencies bring"))



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
                    "Empty: $IRG_MODEL_DIR, else the demo model that comes with the add-on")
    device: EnumProperty(name="Device", items=DEVICES, default="auto")
    precision: EnumProperty(name="Precision", items=PRECISIONS, default="auto")
    server_url: StringProperty(
        name="Server URL",
        description="http://HOST:PORT (or https://) of an `irg-motion serve --http` server (e.g. a GPU machine): "
                    "generation runs there instead of in a local process. Empty: the local backend. "
                    "Env: $IRG_SERVER_URL")
    server_token: StringProperty(
        name="Server Token", subtype="PASSWORD", update=lambda self, _context: _keep_token(self),
        description="Your token from the server's --token-file. Kept in the OS keyring when one is available "
                    "(then this field is emptied), else in the user preferences; never shown or logged, never "
                    "in a .blend. Env: $IRG_SERVER_TOKEN")
    backend_source: StringProperty(
        name="Backend Source",
        description="What Set Up Backend installs: the IRG Motion source folder (with pyproject.toml), a wheel "
                    "(.whl) or a pip requirement such as irg-motion==0.1.0. Empty: this add-on's own source "
                    "folder when it has one, else the wheel inside the extension, else the matching release")
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
    thumbnails: BoolProperty(name="Thumbnails", default=True,
                             description="Render a strip of 4 frames of every new version (and a contact sheet "
                                         "after a batch) in a background Blender process; cached beside the "
                                         ".blend")

    batch_parallel: IntProperty(
        name="Batch Requests in Flight", default=0, min=0, max=MAX_BATCH_PARALLEL,
        description="How many of a batch's prompts are sent to the server at once. 0: automatic, 4 when the "
                    "server batches concurrent requests (vLLM engine), else 1. Raise it for several servers "
                    "behind a load balancer. The local backend bakes one at a time")

    def draw(self, context):
        draw_preferences(self.layout, self)


def _keep_token(p) -> None:
    """A token typed into the preferences moves to the OS keyring when one is usable (the field is emptied)."""
    token = p.server_token.strip()
    if token and token_store.store_token(p.server_url, token):
        p.server_token = ""


def draw_preferences(layout, p) -> None:
    """The preferences (p: the add-on's preferences) with the running task and the backend's state."""
    box = layout.box()
    box.label(text="Backend", icon="PREFERENCES")
    box.prop(p, "server_url")
    if p.server_url.strip():
        box.prop(p, "server_token")
        where = token_store.keyring_name()
        box.label(text=f"The token is kept in the OS keyring ({where})." if where else
                  "No OS keyring here (install the keyring package into Blender's Python): the token is kept "
                  "in Blender's user preferences.", icon="LOCKED")
        box.label(text="Generation runs on the server; the local backend settings are not used.", icon="URL")
        box.prop(p, "batch_parallel")
    else:
        _draw_local(box, p)
    draw_task(box)
    draw_backend_status(box)
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
    col.prop(p, "thumbnails")


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
    if not p.model_dir.strip():
        layout.label(text=default_model_text(), icon="INFO")
    row = layout.row()
    row.prop(p, "device")
    row.prop(p, "precision")


CLASSES = (IRG_AddonPreferences,)


def register() -> None:
    register_classes(CLASSES)


def unregister() -> None:
    unregister_classes(CLASSES)
