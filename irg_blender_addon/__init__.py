"""IRG Motion: text to motion on your armature, inside Blender.

The Blender shell of the project: preferences, properties, operators, the
N-panel, the backend client and the job that applies the backend's events.
Submodules that need bpy are imported inside register() so that the plain
Python parts (client.py) import anywhere. No torch, ever: the model runs in a
separate backend process (see client.py).
"""
from __future__ import annotations


def _classes() -> tuple:
    # Order matters: property groups before the classes that point to them, panels last.
    from . import operators, prefs, props, ui
    return (*prefs.CLASSES, *props.CLASSES, *operators.CLASSES, *ui.CLASSES, *prefs.PANEL_CLASSES)


def register() -> None:
    """Register every class and attach the properties."""
    import bpy
    from . import batch_ops, operators, props, retarget_ops
    for cls in _classes():
        bpy.utils.register_class(cls)
    props.register_properties()
    retarget_ops.register()
    batch_ops.register()  # after ui: its panel is a child of IRG_PT_generate
    operators.register_keymaps()  # Esc cancels in the 3D View


def unregister() -> None:
    """Stop the job and the backends, detach the properties, unregister every class."""
    import bpy
    from . import batch_ops, client, jobs, operators, prefs, props, retarget_ops
    operators.unregister_keymaps()
    jobs.manager.shutdown()
    prefs.shutdown()  # stops a running "Set up backend" / "Convert model"
    client.shutdown_all()  # local processes and remote connections
    batch_ops.unregister()
    retarget_ops.unregister()
    props.unregister_properties()
    for cls in reversed(_classes()):
        if getattr(cls, "is_registered", False):
            bpy.utils.unregister_class(cls)
