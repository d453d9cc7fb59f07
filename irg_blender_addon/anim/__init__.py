"""Animation data: versions as Actions (actions.py) and the Blender-version differences (compat.py)."""
