"""IRG Motion, the Blender extension (this folder is the extension package).

The add-on itself lives in irg_blender_addon/; the numpy-only parts of
model_backend/ ship alongside it (see blender_manifest.toml [build] paths).
Nothing is imported until Blender calls register(): pytest imports this file as
the repository's package, and that must not load a second copy of the add-on.
"""


def register() -> None:
    """Blender calls this when the extension is enabled."""
    from .irg_blender_addon import register as register_addon
    register_addon()


def unregister() -> None:
    """Blender calls this when the extension is disabled or Blender quits."""
    from .irg_blender_addon import unregister as unregister_addon
    unregister_addon()
