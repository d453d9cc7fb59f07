"""IRG Motion: text to motion on your armature, inside Blender.

The Blender shell of the project, in layers (docs/architecture.md): `ui` (panels,
operators, preferences) -> `jobs` (requests in progress, pumped by a timer) -> `rig`,
`anim`, `backend` (the backend clients: plain Python), `settings`, `props` -> the numpy
part of model_backend (through `core`). `api` is the scripting API over `jobs`.
No torch, ever: the model runs in a separate backend process (backend/).

Registration is one loop over FEATURES: each feature module owns its classes and its
register()/unregister(). Modules that need bpy are imported inside register(), so the
plain Python parts (backend/) import anywhere.
"""
from __future__ import annotations

import importlib

# In registration order: property groups before what points to them, the Generate panel
# before its sub-panels (their order is the sidebar's).
FEATURES = ("ui.prefs", "props", "ui.generate", "ui.versions", "ui.thumbnails", "ui.review", "ui.retarget", "ui.backend", "ui.batch")


def feature_modules() -> list:
    """The feature modules, in registration order."""
    return [importlib.import_module(f".{name}", __name__) for name in FEATURES]


def register() -> None:
    """Register every feature."""
    for module in feature_modules():
        module.register()


def unregister() -> None:
    """Stop the running job, any setup task and the backends, then unregister every feature (reverse order)."""
    from .backend import registry
    from .jobs.base import manager
    from .jobs.tasks import tasks
    manager.shutdown()
    tasks.shutdown()  # stops a running "Set up backend" / "Convert model"
    registry.shutdown_all()  # local processes and remote connections
    for module in reversed(feature_modules()):
        module.unregister()
