"""IRG Motion: text to motion on your armature, inside Blender.

The Blender shell of the project: preferences, properties, operators, the
N-panel, the backend client and the job that applies the backend's events.
Submodules that need bpy are imported inside register() so that the plain
Python parts (client.py) import anywhere. No torch, ever: the model runs in a
separate backend process (see client.py).
"""
from __future__ import annotations


def _modules():
    from . import operators, prefs, props, ui
    return prefs, props, operators, ui


def register() -> None:
    """Register every class and attach the properties."""
    import bpy
    prefs, props, operators, ui = _modules()
    for cls in (*prefs.CLASSES, *props.CLASSES, *operators.CLASSES, *ui.CLASSES):
        bpy.utils.register_class(cls)
    props.register_properties()


def unregister() -> None:
    """Stop the job and the backends, detach the properties, unregister every class."""
    import bpy
    from . import client, jobs
    prefs, props, operators, ui = _modules()
    jobs.manager.shutdown()
    client.shutdown_all()
    props.unregister_properties()
    for cls in reversed((*prefs.CLASSES, *props.CLASSES, *operators.CLASSES, *ui.CLASSES)):
        if getattr(cls, "is_registered", False):
            bpy.utils.unregister_class(cls)
