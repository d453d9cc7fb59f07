"""The language-model stage of the demo model: token clips + VQ-VAE folder -> a model folder.

Input: `tokens.npz` of the motion stage (per clip: codebook indices, content and style
labels, held-out flag) and its VQ-VAE folder. Steps: cut every training clip to a window
whose decoded motion shows its label (`exemplars`), build the tokenizer on the captions and
every fixed prompt string, train the LLM, write the model folder.
"""
from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from . import captions as C
from . import tasks as T
from .folder import write_model_folder
from .llm import LLMConfig, train_llm

__all__ = ["load_token_clips", "read_labels", "select_labels", "build_demo_tokenizer", "run_lm_stage",
           "TOKENIZER_VOCAB"]

TOKENIZER_VOCAB = 1024   # text tokens before the 514 motion tokens (BPE stops earlier if the corpus runs out)


def load_token_clips(path: str | Path) -> list[T.Clip]:
    """Clips of the motion stage's tokens file: flat `tokens` with `offsets` (N+1), `names`,
    `contents`, `styles` and `heldout` (N,)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no motion tokens; run the VQ-VAE stage first")
    with np.load(path, allow_pickle=False) as z:
        missing = [k for k in ("tokens", "offsets", "names", "contents", "styles", "heldout") if k not in z]
        if missing:
            raise ValueError(f"{path} lacks {', '.join(missing)}: not a tokens file of the motion stage")
        codes, offsets = z["tokens"], z["offsets"]
        names, contents, styles, heldout = z["names"], z["contents"], z["styles"], z["heldout"]
    return [T.Clip(str(names[i]), tuple(int(k) for k in codes[offsets[i]:offsets[i + 1]]), str(contents[i]),
                   str(styles[i]), "test" if heldout[i] else "train") for i in range(len(names))]


def build_demo_tokenizer(contents: Sequence[str], styles: Sequence[str]) -> Any:
    """The demo tokenizer: Gemma-like BPE on `tasks.tokenizer_corpus`, then the 514 motion tokens in order."""
    from ..convert.fixture import build_tokenizer

    return build_tokenizer(T.tokenizer_corpus(contents, styles), TOKENIZER_VOCAB)


def select_labels(clips: Sequence[T.Clip], labels: Sequence[str] | None) -> list[T.Clip]:
    """The clips of `labels` (all clips when None); every label must have training clips."""
    if labels is None:
        return list(clips)
    kept = [c for c in clips if c.content in set(labels)]
    empty = [name for name in labels if not any(c.content == name and c.split == "train" for c in kept)]
    if empty:
        raise ValueError(f"no training clips of {', '.join(empty)} in the tokens file")
    return kept


def read_labels(path: str | Path) -> list[str]:
    """The content labels of the motion stage's labels.json (`{"labels": [{"label": ...}, ...]}`)."""
    import json

    data = json.loads(Path(path).read_text(encoding="utf-8"))
    return [str(entry["label"]) for entry in data["labels"]]


def run_lm_stage(clips: Sequence[T.Clip], vq_dir: str | Path, out_dir: str | Path, config: LLMConfig,
                 progress: bool = True, labels: Sequence[str] | None = None) -> tuple[Path, dict[str, Any]]:
    """Tokenizer, training and folder for the clips of `labels` (default: every label in `clips`);
    returns (folder, the training summary written to the manifest)."""
    from .exemplars import select_exemplars
    from .vq_train import load_vq_codec

    started = time.monotonic()
    clips, shown = select_exemplars(select_labels(clips, labels), load_vq_codec(vq_dir))
    contents = sorted({c.content for c in clips})
    styles = sorted({c.style for c in clips})
    for name in contents:
        C.label(name)
    for name in styles:
        C.style(name)
    tokenizer = build_demo_tokenizer(contents, styles)
    model, generation, result = train_llm(tokenizer, clips, config, progress=progress)
    summary = {
        "clips": {"train": sum(c.split == "train" for c in clips), "held_out": sum(c.split != "train" for c in clips)},
        "train_clips_showing_their_label": shown,
        "text_tokens": len(tokenizer) - 514, "steps": result.steps, "tokens_seen": result.tokens,
        "train_seconds": result.seconds, "final_loss": result.final_loss, "held_out_loss": result.eval_loss,
        "config": result.config,
    }
    heldout = C.heldout_prompts(contents, styles, seed=config.seed)
    folder = write_model_folder(out_dir, llm=model, generation=generation, tokenizer=tokenizer, vq_dir=vq_dir,
                                contents=contents, styles=styles, heldout=heldout, training=summary,
                                seed=config.seed)
    summary["stage_seconds"] = round(time.monotonic() - started, 1)
    return folder, summary
