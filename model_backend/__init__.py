"""IRG Motion backend: the engine behind the Blender add-on and the `irg-motion` command."""

__version__ = "0.1.0"
