"""Registration, preferences and the extension package (manifest, build paths, no torch)."""
from __future__ import annotations

import ast
import os
import subprocess
import sys
import textwrap
import tomllib
import zipfile
from pathlib import Path

import bpy
import pytest

import irg_blender_addon
from irg_blender_addon.ui import prefs
from irg_blender_addon import settings
from irg_blender_addon.core import manifest as model_manifest

ROOT = Path(__file__).resolve().parents[2]
MANIFEST = ROOT / "blender_manifest.toml"
HEAVY = ("torch", "transformers", "bitsandbytes", "accelerate", "safetensors")


def irg_types() -> list[str]:
    return sorted(n for n in dir(bpy.types) if n.startswith("IRG_"))


@pytest.fixture()
def registered():
    irg_blender_addon.register()
    yield
    irg_blender_addon.unregister()


def addon_classes() -> list[type]:
    return [cls for module in irg_blender_addon.feature_modules() for cls in module.CLASSES]


def test_register_unregister_leaves_nothing_behind():
    bpy.ops.wm.read_homefile(use_empty=True)
    assert irg_types() == []
    classes = addon_classes()
    assert {c.__name__ for c in classes} >= {"IRG_OT_generate", "IRG_OT_cancel", "IRG_PT_generate",
                                            "IRG_PG_scene", "IRG_PG_runtime", "IRG_AddonPreferences"}
    for _ in range(2):  # register again after unregister works
        irg_blender_addon.register()
        try:
            assert all(c.is_registered for c in classes)
            assert {"IRG_OT_generate", "IRG_OT_cancel", "IRG_PT_generate", "IRG_PT_versions"} <= set(irg_types())
            assert hasattr(bpy.ops.irg, "generate")
            bpy.context.scene.irg_motion.prompt = "a person walks"
            assert bpy.context.window_manager.irg_motion.status == ""
        finally:
            irg_blender_addon.unregister()
        assert irg_types() == []
        assert not any(c.is_registered for c in classes)
        assert not hasattr(bpy.types.Scene, "irg_motion")
        assert not hasattr(bpy.types.WindowManager, "irg_motion")


def test_tests_import_the_addon_as_a_top_level_package():
    assert settings.ADDON_ID == "irg_blender_addon"
    assert prefs.IRG_AddonPreferences.bl_idname == "irg_blender_addon"
    # pytest imports the repository root's __init__.py (the extension's) as a package; it must
    # not pull in a second copy of the add-on (its classes would clash with these).
    copies = [name for name in sys.modules if name.endswith(".irg_blender_addon") or ".irg_blender_addon." in name]
    assert copies == [], f"a second copy of the add-on was imported: {copies}"


def test_settings_precedence_keyword_over_prefs_over_environment(registered, monkeypatch, tmp_path):
    demo = tmp_path / "demo-model"
    demo.mkdir()
    (demo / "manifest.json").write_text("{}")
    monkeypatch.setattr(model_manifest, "default_model_dir", lambda: demo)
    monkeypatch.delenv("IRG_MODEL_DIR", raising=False)
    assert settings.get_settings().model_dir == str(demo)  # nothing set: the demo model
    assert "the demo model that comes with the add-on" in settings.default_model_text()
    monkeypatch.setenv("IRG_BACKEND_PYTHON", "/env/python")
    monkeypatch.setenv("IRG_MODEL_DIR", "/env/model")
    s = settings.get_settings()  # add-on registered but not enabled: no preferences -> environment
    assert (s.backend_python, s.model_dir, s.mode, s.max_motion_tokens, s.seed) == \
        ("/env/python", "/env/model", "interleaved", 49, None)
    assert settings.default_model_text() == "Empty: $IRG_MODEL_DIR (/env/model)"
    addons = bpy.context.preferences.addons
    entry = addons.new()
    entry.module = settings.ADDON_ID
    try:
        p = settings.addon_preferences()
        assert p is not None
        p.model_dir = str(tmp_path)
        p.max_motion_tokens, p.seed, p.mode = 8, 7, "direct"
        s = settings.get_settings()
        assert s.backend_python == "/env/python"  # preference empty -> environment
        assert s.model_dir == str(tmp_path)  # preference wins over the environment
        assert (s.max_motion_tokens, s.seed, s.mode) == (8, 7, "direct")
        s = settings.get_settings(model_dir="/kw/model", seed=None, max_motion_tokens=4)
        assert (s.model_dir, s.seed, s.max_motion_tokens) == ("/kw/model", None, 4)
        req = s.generate_request("a jump")
        assert req["type"] == "generate" and req["mode"] == "direct" and req["max_motion_tokens"] == 4
    finally:
        addons.remove(entry)
    with pytest.raises(ValueError, match="unknown setting"):
        settings.get_settings(nonsense=1)
    with pytest.raises(ValueError, match="max_motion_tokens must be 2..50"):
        settings.get_settings(max_motion_tokens=51)
    with pytest.raises(ValueError, match="mode must be one of interleaved, direct"):
        settings.get_settings(mode="fast")


def test_importing_the_addon_imports_no_torch():
    code = textwrap.dedent(f"""
        import sys
        sys.path.insert(0, {str(ROOT)!r})
        import importlib, pkgutil
        import irg_blender_addon
        for found in pkgutil.walk_packages(irg_blender_addon.__path__, "irg_blender_addon."):
            importlib.import_module(found.name)
        irg_blender_addon.register()
        irg_blender_addon.unregister()
        heavy = [m for m in {HEAVY!r} if m in sys.modules]
        assert not heavy, heavy
        print("ok", len(sys.modules))
    """)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.startswith("ok")


def test_client_module_needs_no_bpy():
    code = (f"import sys; sys.path.insert(0, {str(ROOT)!r}); "
            "import irg_blender_addon.backend.local, irg_blender_addon.backend.remote, "
            "irg_blender_addon.backend.registry, irg_blender_addon.backend.setup, irg_blender_addon.backend.convert; "
            "assert 'bpy' not in sys.modules, 'the backend package imported bpy'")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr


# -- the extension package ------------------------------------------------------------------

def manifest() -> dict:
    return tomllib.loads(MANIFEST.read_text(encoding="utf-8"))


def test_manifest_fields():
    m = manifest()
    assert m["schema_version"] == "1.0.0" and m["id"] == "irg_motion" and m["name"] == "IRG Motion"
    assert m["type"] == "add-on" and m["blender_version_min"] == "4.5.0"
    assert m["license"] == ["SPDX:GPL-3.0-or-later"] and m["tags"] == ["Animation"]
    assert len(m["tagline"]) < 64 and m["tagline"][-1].isalnum()
    # network only for a configured server URL, backend setup (pip) and hub downloads in Convert model.
    assert set(m["permissions"]) == {"files", "network"}


def test_build_paths_are_the_folders_that_ship():
    """The zip's contents follow from folders (tools/build_paths.py): the add-on, the presets,
    and from model_backend only rig_math/ and wire/."""
    from tools.build_paths import shipped_paths
    paths = manifest()["build"]["paths"]
    assert paths == shipped_paths(), "run `python tools/build_paths.py --write`"
    missing = [p for p in paths if not (ROOT / p).is_file()]
    assert missing == [], f"listed in [build] paths but absent: {missing}"
    backend = [p for p in paths if p.startswith("model_backend/")]
    assert "model_backend/rig_math/solver.py" in backend and "model_backend/wire/protocol.py" in backend
    assert all(p == "model_backend/__init__.py" or p.startswith(("model_backend/rig_math/", "model_backend/wire/"))
               for p in backend)
    assert "irg_blender_addon/backend/registry.py" in paths and "presets/rigs/mixamo.json" in paths
    assert not any(p.startswith("presets/models/") for p in paths)  # weights: only in `make extension`'s zip
    assert all(p.startswith(("irg_blender_addon/", "model_backend/", "presets/")) or p == "__init__.py"
               for p in paths)


def module_name(path: str) -> str:
    """'model_backend/rig_math/quat.py' -> 'model_backend.rig_math.quat' (a package: its folder's name)."""
    parts = list(Path(path).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imported_modules(path: str) -> tuple[set[str], set[str]]:
    """(top-level names of absolute imports, the full names of the modules relative imports reach)."""
    package = module_name(path) if path.endswith("__init__.py") else module_name(path).rpartition(".")[0]
    absolute, relative = set(), set()
    for node in ast.walk(ast.parse((ROOT / path).read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            absolute |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom) and not node.level:
            absolute.add(node.module.split(".")[0])
        elif isinstance(node, ast.ImportFrom):
            base = package.split(".")[:len(package.split(".")) - node.level + 1]
            parent = ".".join(base + ([node.module] if node.module else []))
            for alias in node.names:  # `from . import quat` reaches a module, `from .quat import x` the parent
                relative.add(f"{parent}.{alias.name}" if not node.module else parent)
    return absolute, relative


def test_shipped_backend_modules_import_no_torch_and_only_shipped_siblings():
    paths = [p for p in manifest()["build"]["paths"] if p.startswith("model_backend/")]
    shipped = {module_name(p) for p in paths}
    assert {"model_backend", "model_backend.rig_math.skeleton", "model_backend.wire.protocol"} <= shipped
    for p in paths:
        absolute, relative = imported_modules(p)
        assert not absolute & set(HEAVY), f"{p} imports {absolute & set(HEAVY)}"
        assert relative <= shipped, f"{p} imports {relative - shipped}, which the package does not ship"
    # And they really import in this environment, which has no torch.
    mods = ", ".join(module_name(p) for p in paths if not p.endswith("__init__.py"))
    code = f"import sys; sys.path.insert(0, {str(ROOT)!r}); import {mods}; assert 'torch' not in sys.modules"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr


def blender_ext() -> Path:
    path = Path(bpy.utils.system_resource("SCRIPTS")) / "addons_core" / "bl_pkg" / "cli" / "blender_ext.py"
    if not path.is_file():
        pytest.skip(f"Blender's extension tool is not at {path}")
    return path


def test_blender_validates_and_builds_the_package(tmp_path):
    tool = blender_ext()
    out = subprocess.run([sys.executable, str(tool), "validate", str(ROOT)], capture_output=True, text=True,
                         timeout=60)
    assert out.returncode == 0 and "FATAL" not in out.stdout + out.stderr, out.stdout + out.stderr
    zip_path = tmp_path / "irg_motion.zip"
    out = subprocess.run([sys.executable, str(tool), "build", "--source-dir", str(ROOT),
                          "--output-filepath", str(zip_path)], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0 and zip_path.is_file(), out.stdout + out.stderr
    names = set(zipfile.ZipFile(zip_path).namelist())
    assert names == set(manifest()["build"]["paths"]) | {"blender_manifest.toml"}
    assert not any("test" in n.split("/")[0] or n.endswith(".pyc") for n in names)


def test_installed_extension_registers_under_its_extension_name(tmp_path):
    """Install the built zip as a real extension in a fresh Blender and enable it."""
    tool = blender_ext()
    zip_path = tmp_path / "irg_motion.zip"
    subprocess.run([sys.executable, str(tool), "build", "--source-dir", str(ROOT),
                    "--output-filepath", str(zip_path)], check=True, capture_output=True, timeout=120)
    code = textwrap.dedent(f"""
        import sys, bpy, addon_utils
        bpy.ops.extensions.package_install_files(filepath={str(zip_path)!r}, repo="user_default",
                                                 enable_on_install=True)
        name = "bl_ext.user_default.irg_motion"
        assert name in bpy.context.preferences.addons, list(bpy.context.preferences.addons.keys())
        mod = sys.modules[name + ".irg_blender_addon.settings"]
        assert mod.ADDON_ID == name, mod.ADDON_ID
        assert bpy.context.preferences.addons[name].preferences is not None
        assert hasattr(bpy.types.Scene, "irg_motion")
        core = sys.modules[name + ".irg_blender_addon.core"]
        assert core.skeleton.__name__ == name + ".model_backend.rig_math.skeleton"  # the packaged copy, not a checkout
        assert "torch" not in sys.modules
        addon_utils.disable(name)
        assert not hasattr(bpy.types.Scene, "irg_motion")
        print("ok")
    """)
    env = dict(os.environ, BLENDER_USER_RESOURCES=str(tmp_path / "user"))
    # Run outside the repository so the checkout's own packages are not importable.
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=180, env=env,
                         cwd=tmp_path)
    assert out.returncode == 0 and "ok" in out.stdout, out.stdout[-3000:] + out.stderr[-3000:]
