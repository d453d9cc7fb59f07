"""IRG Motion: text to motion on your armature, inside Blender.

The Blender shell of the project: preferences, properties, operators, the
N-panel, the backend client and the job that applies the backend's events.
Submodules that need bpy are imported inside register() so that the plain
Python parts (client.py) import anywhere. No torch, ever: the model runs in a
separate backend process (see client.py).
"""
from __future__ import annotations


def _modules():
    from . import operators, prefs, props, retarget_ops, ui
    return prefs, props, operators, retarget_ops, ui


def _classes() -> tuple:
    # Order matters: property groups before the classes that point to them, panels last.
    prefs, props, operators, retarget_ops, ui = _modules()
    return (*prefs.CLASSES, *props.CLASSES, *operators.CLASSES, *ui.CLASSES)


def register() -> None:
    """Register every class and attach the properties."""
    import bpy
    from . import props, retarget_ops
    for cls in _classes():
        bpy.utils.register_class(cls)
    props.register_properties()
    retarget_ops.register()


def unregister() -> None:
    """Stop the job and the backends, detach the properties, unregister every class."""
    import bpy
    from . import client, jobs, props, remote_client, retarget_ops
    jobs.manager.shutdown()
    client.shutdown_all()
    remote_client.shutdown_all()
    retarget_ops.unregister()
    props.unregister_properties()
    for cls in reversed(_classes()):
        if getattr(cls, "is_registered", False):
            bpy.utils.unregister_class(cls)
