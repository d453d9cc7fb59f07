"""The pieces a user downloads, made from a fixture model folder (plain json/shutil, so the
Blender tests can use it without torch). Imported as `model_pieces` (see tests/conftest.py)."""
from __future__ import annotations

import json
import shutil
from pathlib import Path


def motion_start_id(fx: Path) -> int:
    """The id of the first motion token of a model folder (its manifest)."""
    return json.loads((fx / "manifest.json").read_text())["motion_tokens"]["start_id"]


def base_folder(fx: Path, out: Path) -> Path:
    """The released Gemma-2 base equivalent of a fixture model folder, made at `out`: its config
    and tokenizer as they were before the motion tokens were added."""
    out.mkdir()
    tokenizer = json.loads((fx / "llm/tokenizer.json").read_text())
    tokenizer["added_tokens"] = [t for t in tokenizer["added_tokens"] if "Motion" not in t["content"]]
    (out / "tokenizer.json").write_text(json.dumps(tokenizer))
    shutil.copy(fx / "llm/tokenizer_config.json", out)
    config = json.loads((fx / "llm/config.json").read_text())
    config["vocab_size"] = motion_start_id(fx)  # the base vocabulary, before the motion tokens
    (out / "config.json").write_text(json.dumps(config))
    return out
