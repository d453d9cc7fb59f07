"""What every `irg-motion` command shares: exit statuses, CliError, the common option groups and
the subparser helper (each command module adds its own commands with them)."""
from __future__ import annotations

import argparse
from typing import Any, Callable

import numpy as np

from ..wire.manifest import DEMO_MODEL, MODEL_ENV, resolve_model_dir

EXIT_NO_RESULT, EXIT_USAGE, EXIT_INTERRUPTED = 1, 2, 130

DEVICE_HELP = "auto (CUDA when available, else CPU), cpu, cuda or cuda:N (default: auto)"

PRECISIONS = ("auto", "nf4", "int8", "bf16", "fp32")

MODEL_HELP = (f"model folder (docs/model-folder.md); default: ${MODEL_ENV}, else the demo model "
              f"{'/'.join(DEMO_MODEL)}")


class CliError(Exception):
    """A problem the user can fix; `status` is the exit status (2: bad input, 1: no result)."""

    def __init__(self, message: str, status: int = EXIT_USAGE):
        super().__init__(message)
        self.status = status


EXAMPLES = {
    "make-fixture": "example:\n  irg-motion make-fixture out/fixture-model --seed 0",
    "serve": ("examples:\n  irg-motion serve --stdio --model ~/models/irg-hml3d-stage3 --device cuda --precision nf4\n"
              "  irg-motion serve --http 127.0.0.1:7700 --model ~/models/irg-hml3d-stage3\n"
              "  irg-motion serve --http 0.0.0.0:7700 --token-file ~/.irg-tokens --tls-cert cert.pem --tls-key key.pem \\\n"
              "      --model ~/models/irg-hml3d-stage3"),
    "generate": ('examples:\n'
                 '  irg-motion generate "a person walks forward and waves" --model MODEL --out walk.npz\n'
                 '  irg-motion generate "a man jumps" --model MODEL --out jump.npz --mode direct --seed 3 '
                 '--temperature 0.8\n'
                 '  irg-motion generate "someone dances" --model MODEL --out dance.npz --json > events.jsonl'),
    "inspect": "examples:\n  irg-motion inspect MODEL\n  irg-motion inspect MODEL --json",
    "decode": ('examples:\n  irg-motion decode --model MODEL --tokens "12,7,99,401" --out motion.npz\n'
               '  irg-motion decode --model MODEL --tokens tokens.npy --out motion.npz'),
    "encode": ('examples:\n  irg-motion encode --model MODEL --joints walk_joints.npy\n'
               '  irg-motion encode --model MODEL --joints take.npy --fps 30 --axes blender --out take_tokens.json'),
    "critique": ('example:\n  irg-motion critique "a person walks forward" --model MODEL --tokens walk.npz'),
    "refine": ('examples:\n  irg-motion refine "a person walks forward" --model MODEL --tokens walk.npz '
               '--out walk_v2.npz\n  irg-motion refine "a person waves" --model MODEL --joints take.npy '
               '--instruction "raise the right hand higher" --out wave_v2.npz'),
    "extend": ('examples:\n  irg-motion extend --model MODEL --tokens walk.npz "then he sits down" --out sit.npz\n'
               '  irg-motion extend --model MODEL --joints take.npy --fps 30 "then she waves" --seconds 3 '
               '--mode direct --out wave.npz'),
    "caption": "example:\n  irg-motion caption --model MODEL --tokens walk.npz",
    "to-bvh": ("examples:\n  irg-motion to-bvh walk.npz --out walk.bvh\n"
               "  irg-motion to-bvh take_joints.npy --fps 30 --foot-lock --out take.bvh"),
}


def positive(text: str) -> float:
    """argparse type: a positive, finite number."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not (value > 0 and np.isfinite(value)):
        raise argparse.ArgumentTypeError(f"must be a positive number, not {text}")
    return value

def fill_in_model(args: argparse.Namespace) -> None:
    """Give a command that takes a model folder, and was given none, the default one (the commands
    that take one name its argument in `model_argument`, the model parent's default)."""
    name = getattr(args, "model_argument", None)
    if name is None:
        return
    found = resolve_model_dir(getattr(args, name))
    if found is None:
        how = "give the folder as DIR" if name == "dir" else "give one with --model DIR"
        raise CliError(f"no model folder: {how} or set {MODEL_ENV} (this installation has no demo model "
                       f"in {'/'.join(DEMO_MODEL)})")
    setattr(args, name, found)


def subparser(subs: Any, name: str, help_text: str, parents: list[argparse.ArgumentParser],
               run: Callable[[argparse.Namespace], int]) -> argparse.ArgumentParser:
    parser = subs.add_parser(name, help=help_text, description=help_text, parents=parents,
                             epilog=EXAMPLES.get(name), formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.set_defaults(run=run)
    return parser

def common_parents() -> dict[str, argparse.ArgumentParser]:
    verbose = argparse.ArgumentParser(add_help=False)
    verbose.add_argument("-v", "--verbose", action="store_true", help="log progress details to stderr")
    model = argparse.ArgumentParser(add_help=False)
    model.add_argument("--model", metavar="DIR", help=MODEL_HELP)
    model.set_defaults(model_argument="model")
    model.add_argument("--device", default="auto", metavar="D", help=DEVICE_HELP)
    model.add_argument("--precision", default="auto", choices=PRECISIONS,
                       help="weight precision (default: auto, chosen from the free memory)")
    motion = argparse.ArgumentParser(add_help=False)
    given = motion.add_mutually_exclusive_group(required=True)
    given.add_argument("--tokens", metavar="FILE_OR_LIST",
                       help="motion tokens: a .npy/.npz/.json/.txt file or a list such as '12,7,99'")
    given.add_argument("--joints", metavar="FILE.npy",
                       help="joint positions (frames, joints, 3) in metres, encoded with the VQ-VAE")
    motion.add_argument("--fps", type=positive, default=None, metavar="FPS",
                        help="frame rate of --joints (default: the model's)")
    motion.add_argument("--axes", choices=("humanml3d", "blender"), default="humanml3d",
                        help="axes of --joints: humanml3d (Y up, facing +Z; default) or blender (Z up, facing -Y)")
    sampling = argparse.ArgumentParser(add_help=False)
    sampling.add_argument("--temperature", type=float, default=0.0, metavar="T",
                          help="0 = greedy (default), > 0 samples")
    sampling.add_argument("--top-p", type=float, default=1.0, metavar="P", help="nucleus sampling mass (default 1.0)")
    sampling.add_argument("--seed", type=int, default=None, metavar="S", help="seed for sampling (default: random)")
    sampling.add_argument("--max-new-tokens", type=int, default=None, metavar="N",
                          help="cap on the tokens the model writes (default 1300, prompt included)")
    sampling.add_argument("--json", action="store_true",
                          help="print the event stream as JSON lines on stdout (docs/protocol.md)")
    return {"verbose": verbose, "model": model, "motion": motion, "sampling": sampling}

def add_foot_lock(sub: argparse.ArgumentParser) -> None:
    sub.add_argument("--foot-lock", action=argparse.BooleanOptionalAction, default=True,
                     help="BVH output: pin feet during ground contacts (two-bone leg IK) before solving "
                          "(default on; --no-foot-lock keeps the positions exactly)")
