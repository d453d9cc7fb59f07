"""A recording stand-in for Blender's UILayout, the check that every recorded call is a real
UILayout call, and the context a panel's draw gets: shared by the Blender and e2e tests.

Imported as `ui_recorder` (tests/conftest.py puts this folder on sys.path); needs bpy.
"""
from __future__ import annotations

import types

import bpy

# What shows text to the user.
TEXT_CALLS = ("label", "operator", "progress")


class Recorder:
    """A layout stand-in: records every call (name, args, kwargs); every call returns itself,
    so rows, columns and boxes record into the same list."""

    def __init__(self, calls: list | None = None):
        self.calls = [] if calls is None else calls

    def __getattr__(self, name):
        def record(*args, **kwargs):
            self.calls.append((name, args, kwargs))
            return self
        return record

    def texts(self) -> list[str]:
        """The texts of labels, operators and progress bars, in drawing order."""
        return [kw.get("text", "") for name, _, kw in self.calls if name in TEXT_CALLS]

    def text(self, sep: str = "\n") -> str:
        """All shown texts as one string (sep " " joins wrapped labels back into one message)."""
        return sep.join(self.texts())

    def operators(self) -> list[str]:
        return [args[0] for name, args, _ in self.calls if name == "operator"]

    def operator_texts(self) -> list[str]:
        return [kw.get("text", "") for name, _, kw in self.calls if name == "operator"]

    def named(self, function: str) -> list[tuple]:
        """(args, kwargs) of every call of one layout function."""
        return [(args, kw) for name, args, kw in self.calls if name == function]

    def props(self) -> set[str]:
        """The property names drawn with prop()."""
        return {args[1] for name, args, _ in self.calls if name == "prop"}


def check_calls(rec: Recorder) -> None:
    """Each recorded call is a real UILayout function with real keyword names and icon names;
    a prop() of real data names a real property, a template_list() real collections."""
    functions = bpy.types.UILayout.bl_rna.functions
    icons = {i.identifier for i in functions["label"].parameters["icon"].enum_items}
    for name, args, kwargs in rec.calls:
        assert name in functions or hasattr(bpy.types.UILayout, name), f"UILayout has no {name}()"
        if name in functions:
            params = {p.identifier for p in functions[name].parameters}
            assert set(kwargs) <= params, f"{name}() has no {set(kwargs) - params}"
        assert kwargs.get("icon", "NONE") in icons, f"unknown icon {kwargs['icon']}"
        if name == "prop" and hasattr(args[0], "bl_rna"):
            assert args[1] in args[0].bl_rna.properties, args[1]
        if name == "template_list":
            assert args[3] in args[2].bl_rna.properties and args[5] in args[4].bl_rna.properties


def draw(panel_cls, context) -> Recorder:
    """Draw a Panel/Menu class on a new Recorder (checked) and return it."""
    panel = types.SimpleNamespace(layout=Recorder())
    panel_cls.draw(panel, context)
    check_calls(panel.layout)
    return panel.layout


def fake_context(active=None) -> types.SimpleNamespace:
    """What a panel's draw gets: the real scene, window manager, view layer and preferences,
    with `active` as the active (and only selected) object."""
    return types.SimpleNamespace(
        scene=bpy.context.scene, window_manager=bpy.context.window_manager, view_layer=bpy.context.view_layer,
        preferences=bpy.context.preferences, active_object=active, object=active,
        selected_objects=[active] if active is not None else [], mode="OBJECT")
