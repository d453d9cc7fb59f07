"""Model folders: converting the released checkpoints (checkpoint.py) and tiny fixture models (fixture.py)."""
