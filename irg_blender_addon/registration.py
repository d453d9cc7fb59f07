"""Registering a feature module's Blender classes: idempotent both ways, so a feature can be
registered on its own (tests) or by the add-on's one loop (irg_blender_addon.register)."""
from __future__ import annotations

import bpy


def register_classes(classes) -> None:
    """Register the classes not registered yet, in order."""
    for cls in classes:
        if not getattr(cls, "is_registered", False):
            bpy.utils.register_class(cls)


def unregister_classes(classes) -> None:
    """Unregister the registered ones, in reverse order."""
    for cls in reversed(classes):
        if getattr(cls, "is_registered", False):
            bpy.utils.unregister_class(cls)
