"""What every panel and operator of the add-on shares: wrapped labels, one-line text, one way to refuse."""
from __future__ import annotations

import textwrap

from .. import props
from ..backend.base import BackendError

WRAP = 48  # characters per label line in the sidebar
REFUSALS = (ValueError, RuntimeError, BackendError)  # what the start_* functions raise for bad input or state


class SidebarPanel:
    """A panel in the "IRG Motion" tab of the 3D View's sidebar (mixed in before bpy.types.Panel)."""

    bl_space_type = "VIEW_3D"
    bl_region_type = "UI"
    bl_category = "IRG Motion"


class SubPanel(SidebarPanel):
    """A sub-panel of Generate, the tab's main panel."""

    bl_parent_id = "IRG_PT_generate"


def wrapped_labels(layout, text: str, *, icon: str = "NONE", width: int = WRAP, max_lines: int = 30) -> None:
    """Draw text as labels, wrapped, first line with the icon; long text keeps its end."""
    lines = [piece for para in text.splitlines() for piece in (textwrap.wrap(para, width) or [""])]
    if len(lines) > max_lines:
        lines = ["..."] + lines[-max_lines:]
    col = layout.column(align=True)
    for i, line in enumerate(lines):
        col.label(text=line, icon=icon if i == 0 else "NONE")

def one_line(text: str, width: int = 60) -> str:
    """The first line of text, shortened with an ellipsis."""
    first = (text or "").strip().splitlines()[0] if (text or "").strip() else ""
    return first if len(first) <= width else first[:width - 3] + "..."


def refuse(operator, problem: Exception | str, context=None) -> set[str]:
    """Report a refusal once: the operator's report and, given the context, the panel's status line
    (for what a generation refuses). The operator changes nothing."""
    operator.report({"ERROR"}, str(problem))
    rt = props.runtime(context) if context is not None else None
    if rt is not None:
        rt.status, rt.level, rt.running = str(problem), "ERROR", False
    return {"CANCELLED"}
