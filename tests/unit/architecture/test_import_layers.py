"""The house plan, checked on the source: no import cycles (imports inside functions count) and
every import goes down the layers of docs/architecture.md.

    irg_blender_addon: ui -> jobs -> {rig, anim, backend, settings, props} -> core -> model_backend.{rig_math, wire}
                       api -> jobs (never ui); backend/ never imports bpy
    model_backend:     rig_math and wire (shipped in the extension) import only each other, numpy and the stdlib

Nothing here imports the code: the imports are read with ast, so the test also covers modules
that need bpy or torch.
"""
from __future__ import annotations

import ast
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[3]
PACKAGES = ("irg_blender_addon", "model_backend")
HEAVY = {"torch", "transformers", "bitsandbytes", "accelerate", "safetensors", "tokenizers", "sentencepiece"}
# Add-on layers, lowest first; a module may import its own layer and the ones below.
ADDON_LAYERS = (
    ("core",),
    ("rig", "anim", "backend", "settings", "props", "registration"),
    ("jobs",),
    ("ui", "api"),
)
SHIPPED = ("model_backend.rig_math", "model_backend.wire")


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def all_modules() -> dict[str, Path]:
    return {module_name(p): p for pkg in PACKAGES for p in sorted((ROOT / pkg).rglob("*.py"))
            if "__pycache__" not in p.parts}


MODULES = all_modules()


def imports_of(name: str) -> list[tuple[str, int]]:
    """(imported module, line) for every import in the module, inside functions too; relative
    imports resolved, `from pkg import mod` resolved to the module when it is one."""
    path = MODULES[name]
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found += [(alias.name, node.lineno) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[:len(package.split(".")) - node.level + 1]
                parent = ".".join(base + ([node.module] if node.module else []))
            else:
                parent = node.module
            for alias in node.names:
                sub = f"{parent}.{alias.name}"
                found.append((sub if sub in MODULES else parent, node.lineno))
    return found


def internal_graph() -> dict[str, set[str]]:
    """module -> the project modules it imports (a package's __init__ counts as the package)."""
    graph = {}
    for name in MODULES:
        graph[name] = {target for target, _ in imports_of(name) if target in MODULES and target != name}
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return stack[stack.index(nxt):] + [nxt]
            if nxt not in state and (cycle := visit(nxt)):
                return cycle
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (cycle := visit(node)):
            return cycle
    return None


def addon_layer(name: str) -> int | None:
    """The layer of an add-on module (None for the package's own __init__, the registration loop)."""
    parts = name.split(".")
    if parts[0] != "irg_blender_addon" or len(parts) < 2:
        return None
    for rank, layer in enumerate(ADDON_LAYERS):
        if parts[1] in layer:
            return rank
    raise AssertionError(f"{name} is in no layer of ADDON_LAYERS: add its folder to one")


def test_the_graph_sees_the_packages():
    assert {"irg_blender_addon.ui.generate", "irg_blender_addon.jobs.base", "model_backend.rig_math.solver",
            "model_backend.cli"} <= set(MODULES)
    assert "irg_blender_addon.jobs.base" in internal_graph()["irg_blender_addon.ui.generate"]


def test_no_import_cycles():
    assert find_cycle(internal_graph()) is None


def test_a_cycle_is_found():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None


def addon_problems(name: str) -> list[str]:
    """What in an add-on module's imports goes against the layers."""
    problems, mine = [], addon_layer(name)
    for target, line in imports_of(name):
        where = f"{MODULES[name].relative_to(ROOT)}:{line} imports {target}"
        top = target.split(".")[0]
        if top in HEAVY:
            problems.append(f"{where}: the add-on never imports torch or the model")
        elif top == "model_backend" and not (name == "irg_blender_addon.core" and target.startswith(SHIPPED)):
            problems.append(f"{where}: only core reaches model_backend, and only its shipped rig_math and wire")
        elif top == "bpy" and name.startswith("irg_blender_addon.backend"):
            problems.append(f"{where}: the backend clients are plain Python")
        elif top == "irg_blender_addon" and mine is not None:
            theirs = addon_layer(target)
            if theirs is None or theirs > mine:
                problems.append(f"{where}, a layer above it (docs/architecture.md)")
            elif name == "irg_blender_addon.api" and target.startswith("irg_blender_addon.ui"):
                problems.append(f"{where}: scripting never needs the UI")
    return problems


def backend_problems(name: str) -> list[str]:
    """What in a model_backend module's imports breaks the packaging rule or reaches Blender."""
    problems = []
    for target, line in imports_of(name):
        where = f"{MODULES[name].relative_to(ROOT)}:{line} imports {target}"
        top = target.split(".")[0]
        if top in ("bpy", "irg_blender_addon"):
            problems.append(f"{where}: the backend knows nothing of Blender")
        elif name.startswith(SHIPPED) and top == "model_backend" and not target.startswith(SHIPPED) \
                and target != "model_backend":
            problems.append(f"{where}, which the extension zip does not ship")
        elif name.startswith(SHIPPED) and top != "model_backend" and top not in sys.stdlib_module_names \
                and top not in ("numpy", "__future__"):
            problems.append(f"{where}: the shipped parts use the stdlib and numpy only")
    return problems


def test_addon_imports_go_down_the_layers():
    problems = [p for name in MODULES if name.startswith("irg_blender_addon.") for p in addon_problems(name)]
    assert problems == []


def test_backend_imports_keep_the_shipped_parts_light():
    problems = [p for name in MODULES if name.startswith("model_backend") for p in backend_problems(name)]
    assert problems == []


def test_the_checks_catch_what_they_guard(monkeypatch):
    """Each rule fails on an import against it (fake modules, checked like the real ones)."""
    fake = {
        "irg_blender_addon.jobs.fake": "from ..ui import generate\n",
        "irg_blender_addon.api": "from .ui import generate\n",
        "irg_blender_addon.backend.fake": "def f():\n    import bpy\n",
        "irg_blender_addon.rig.fake": "import torch\nfrom model_backend.llm import engine\n",
        "model_backend.rig_math.fake": "from ..llm import vocab\nimport scipy\n",
        "model_backend.serve.fake": "import bpy\n",
    }
    paths = {}
    for name, source in fake.items():
        path = ROOT / "tests" / "unit" / "architecture" / f"_{name.replace('.', '_')}.py"
        paths[name] = path
        monkeypatch.setitem(MODULES, name, path)
    sources = {paths[n]: s for n, s in fake.items()}
    real_read = Path.read_text
    monkeypatch.setattr(Path, "read_text",
                        lambda self, *a, **k: sources[self] if self in sources else real_read(self, *a, **k))
    assert "a layer above it" in addon_problems("irg_blender_addon.jobs.fake")[0]
    assert "scripting never needs the UI" in addon_problems("irg_blender_addon.api")[0]
    assert "plain Python" in addon_problems("irg_blender_addon.backend.fake")[0]
    rig = addon_problems("irg_blender_addon.rig.fake")
    assert "never imports torch" in rig[0] and "only core reaches model_backend" in rig[1]
    shipped = backend_problems("model_backend.rig_math.fake")
    assert "does not ship" in shipped[0] and "stdlib and numpy only" in shipped[1]
    assert "knows nothing of Blender" in backend_problems("model_backend.serve.fake")[0]
