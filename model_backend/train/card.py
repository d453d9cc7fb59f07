"""The demo model folder's LICENSE and README (model card), written from what training recorded.

The weights are trained on the Bandai Namco Research Motion Dataset (CC BY-NC 4.0), so they
carry the same licence with the attribution it asks for. The card says what the model knows,
how it was made and how to make it again; the measured accuracy is in docs/benchmarks.md
(`benchmarks/demo_model.py`), as the card says.
"""
from __future__ import annotations

from typing import Any

__all__ = ["license_text", "model_card"]

DATASET = "Bandai Namco Research Motion Dataset"
DATASET_URL = "https://github.com/BandaiNamcoResearchInc/Bandai-Namco-Research-Motiondataset"
LICENSE_URL = "https://creativecommons.org/licenses/by-nc/4.0/legalcode"
PAPER = ("Kobayashi, Liao, Inoue, Yojima, Takahashi: Motion Capture Dataset for Practical Use of AI-based "
         "Motion Editing and Stylization, arXiv:2306.08861, 2023")


def license_text(name: str) -> str:
    """The folder's LICENSE: CC BY-NC 4.0, crediting the dataset the weights were trained on."""
    return f"""{name}: model weights (the files of this folder)

Licensed under the Creative Commons Attribution-NonCommercial 4.0 International
licence (CC BY-NC 4.0): {LICENSE_URL}
Non-commercial use only.

Attribution: trained by the IRG Motion project on the {DATASET}
by Bandai Namco Research Inc., licensed under CC BY-NC 4.0:
{DATASET_URL}
Paper: {PAPER}.

Changes: the dataset's BVH clips were converted to 22-joint HumanML3D motion features
at 20 fps, encoded by the VQ-VAE in this folder, and used with captions written from the
dataset's content and style labels to train the language model in this folder. No motion
capture data is included. The weights are provided as is, without warranties.
"""


def _table(rows: list[tuple[str, str]]) -> str:
    return "\n".join(f"| {k} | {v} |" for k, v in rows)


def model_card(manifest: dict[str, Any], vq_metrics: dict[str, Any] | None) -> str:
    """The folder's README.md: what the model knows, data and split, training, figures, licence."""
    training = manifest.get("training", {})
    config = training.get("config", {})
    vocab = manifest.get("vocabulary", {})
    labels = vocab.get("labels", {})
    shown = training.get("train_clips_showing_their_label", {})
    heldout = (vq_metrics or {}).get("heldout", {}).get("first_196_frames", {})
    vq = (vq_metrics or {}).get("settings", {})
    knows = "\n".join(f"- `{label}`: {', '.join(words)}" for label, words in labels.items())
    kept = _table([(label, f"{v['kept']} of {v['clips']}") for label, v in shown.items()])
    return f"""# {manifest.get('name', 'irg-tiny')}

A small IRG-MotionLLM in the real formats (Gemma-2 language model, T2M VQ-VAE, the
documented tokenizer layout and prompts), trained by the IRG Motion project on real motion
capture so that the add-on, `make demo` and the tests show motion that matches the prompt
without the gated 5 GB checkpoints. It writes the same interleaved generate / assess /
refine traces as IRG-MotionLLM. The released checkpoints remain the path to quality.

## What it knows

{len(labels)} actions, each alone (no combinations), in any of these styles:
{', '.join(vocab.get('styles', []))}. A prompt naming none of the actions gets a motion
of the nearest one it knows and a note saying so. Words that name each action:

{knows}

## Data and split

{DATASET} ({DATASET_URL}, CC BY-NC 4.0): BVH clips at 30 fps read to the 22 HumanML3D
joints, resampled to 20 fps, HumanML3D features. Held out by clip: per content label the
10 % whose sha256 of `"{{seed}}:{{clip name}}"` sorts first ({training.get('clips', {}).get('held_out', '?')}
clips of these labels); every figure is measured on them. Training clips:
{training.get('clips', {}).get('train', '?')}, each cut to the window (at most 49 codes) whose decoded
motion passes its label's kinematic check (`model_backend/train/exemplars.py`):

| label | training clips kept |
|---|---|
{kept}

Captions are written from content x style with paraphrases; held-out wordings
(`heldout_prompts.json`) use sentence frames and subjects never seen in training.

## Model and training

| part | |
|---|---|
{_table([
    ("language model", f"Gemma-2, hidden {config.get('hidden_size')}, {config.get('num_layers')} layers, "
                       f"{config.get('heads')} heads of {config.get('head_dim')}, {manifest.get('parameters', 0) / 1e6:.2f} M "
                       f"parameters, bf16 weights"),
    ("tokenizer", f"BPE on the captions and prompts ({training.get('text_tokens', '?')} text tokens), "
                  "then `<Motion>`, `</Motion>`, `<Motion_0..511>`"),
    ("VQ-VAE", f"width {vq.get('width', '?')}, 512 codes, {vq.get('steps', '?')} steps; held-out MPJPE "
               f"{heldout.get('root_relative_mm', '?')} mm root-aligned, {heldout.get('global_mm', '?')} mm global "
               "(first 196 frames)"),
    ("LLM training", f"{config.get('epochs')} epochs x {config.get('examples_per_epoch')} examples, "
                     f"{training.get('steps', '?')} steps, {training.get('tokens_seen', '?')} tokens, "
                     f"{training.get('train_seconds', '?')} s on {config.get('threads')} CPU threads; "
                     f"final loss {training.get('final_loss', '?')}"),
    ("held-out loss per task", ", ".join(f"{k} {v}" for k, v in training.get("held_out_loss", {}).items())),
])}

Rebuild it, deterministic for the seed and thread count:

    make demo-model DATA=<clone of {DATASET_URL}> SEED={manifest.get('seed', 0)}

Accuracy of its motions against their labels (kinematic checks, both modes), refinement,
critique of real clips and speed: `docs/benchmarks.md`, measured by `benchmarks/demo_model.py`
and `benchmarks/demo_critique.py`.

## Licence

CC BY-NC 4.0, see `LICENSE`: trained on the {DATASET} by Bandai Namco Research Inc.
({PAPER}).
"""
