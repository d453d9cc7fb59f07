"""Command line of the demo-model training: the language-model stage, or every stage from the dataset.

    python -m model_backend.train lm --tokens ART/tokens.npz --vq ART/vq --out ART/irg-tiny
    python -m model_backend.train all DATA --work out/demo-model --out out/demo-model/irg-tiny

`all` runs the motion stages (dataset cache, VQ-VAE, motion tokens) and then `lm`; every
stage draws its own progress bar and everything follows from `--seed`.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import fields
from pathlib import Path

from .llm import LLMConfig

__all__ = ["main"]


def _config(args: argparse.Namespace) -> LLMConfig:
    overrides = {f.name: getattr(args, f.name) for f in fields(LLMConfig)
                 if getattr(args, f.name, None) is not None}
    return LLMConfig(**overrides)


def _lm(args: argparse.Namespace, tokens: Path, vq_dir: Path, labels: list[str] | None) -> int:
    from .lm_stage import load_token_clips, run_lm_stage

    folder, summary = run_lm_stage(load_token_clips(tokens), vq_dir, args.out, _config(args),
                                   progress=not args.quiet, labels=labels)
    print(json.dumps({k: v for k, v in summary.items() if k != "config"}, indent=1))
    print(f"wrote {folder}")
    return 0


def cmd_lm(args: argparse.Namespace) -> int:
    from .lm_stage import read_labels

    return _lm(args, Path(args.tokens), Path(args.vq), read_labels(args.labels) if args.labels else None)


def cmd_all(args: argparse.Namespace) -> int:
    from . import motion_stages
    from .label_checks import supported_labels

    started = time.monotonic()
    tokens, vq_dir = motion_stages.run(args.data, args.work, seed=args.seed, threads=args.threads or LLMConfig.threads)
    code = _lm(args, tokens, vq_dir, supported_labels())  # the labels a kinematic check can verify
    print(f"all stages: {time.monotonic() - started:.0f} s")
    return code


def _llm_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", required=True, help="the model folder to write")
    parser.add_argument("--seed", type=int, default=0, help="seed of everything (default 0)")
    parser.add_argument("--threads", type=int, default=None, help=f"torch threads (default {LLMConfig.threads})")
    parser.add_argument("--epochs", type=int, default=None, help=f"default {LLMConfig.epochs}")
    parser.add_argument("--examples-per-epoch", dest="examples_per_epoch", type=int, default=None,
                        help=f"default {LLMConfig.examples_per_epoch}")
    parser.add_argument("--hidden-size", dest="hidden_size", type=int, default=None)
    parser.add_argument("--num-layers", dest="num_layers", type=int, default=None)
    parser.add_argument("--quiet", action="store_true", help="no progress bars")


def main(argv: list[str] | None = None) -> int:
    """Entry point of `python -m model_backend.train`."""
    parser = argparse.ArgumentParser(prog="python -m model_backend.train", description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    subs = parser.add_subparsers(dest="command", required=True)
    lm = subs.add_parser("lm", help="train the LLM on motion tokens and write the model folder")
    lm.add_argument("--tokens", required=True, help="tokens.npz of the motion stage")
    lm.add_argument("--vq", required=True, help="the motion stage's VQ-VAE folder (vqvae.safetensors, mean/std)")
    lm.add_argument("--labels", help="the motion stage's labels.json: train on these content labels only "
                                     "(default: every label in the tokens file)")
    _llm_options(lm)
    lm.set_defaults(func=cmd_lm)
    every = subs.add_parser("all", help="every stage from a clone of the Bandai Namco dataset")
    every.add_argument("data", help="a clone of BandaiNamcoResearchInc/Bandai-Namco-Research-Motiondataset")
    every.add_argument("--work", required=True, help="folder for the intermediate files")
    _llm_options(every)
    every.set_defaults(func=cmd_all)
    args = parser.parse_args(argv)
    try:
        return args.func(args)
    except (OSError, ValueError, KeyError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
