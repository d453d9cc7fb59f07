"""Motion without the language model: decode and encode with the VQ-VAE, to-bvh with the numpy solver."""
from __future__ import annotations

import argparse
import sys
from typing import Any

from .common import MODEL_HELP, CliError, add_foot_lock, positive, subparser
from .files import (describe_motion, model_dir, motion_arrays, motion_file, output_path, read_tokens, write_motion_bvh,
                    write_npz, write_tokens)
from .run import given_joints

def _codec(model: str) -> Any:
    from ..vq.codec import MotionCodec

    return MotionCodec.from_dir(model_dir(model))

def cmd_decode(args: argparse.Namespace) -> int:
    tokens = read_tokens(args.tokens)
    out = output_path(args.out)
    codec = _codec(args.model)
    try:
        motion = codec.decode(tokens)
    except ValueError as exc:
        raise CliError(f"cannot decode these tokens: {exc}") from None
    event = {"tokens": motion.tokens, "features": motion.features, "joints": motion.joints_blender,
             "contacts": motion.contacts, "fps": motion.fps, "round": 1}
    write_npz(out, motion_arrays(event))
    print(f"{describe_motion(event)}\nwrote {out}")
    return 0

def cmd_encode(args: argparse.Namespace) -> int:
    out = output_path(args.out) if args.out else None
    joints, fps = given_joints(args)
    codec = _codec(args.model)
    try:
        tokens = codec.encode_joints(joints, fps)
    except ValueError as exc:
        raise CliError(f"cannot encode {args.joints}: {exc}") from None
    if out is None:
        print(",".join(str(t) for t in tokens))
    else:
        write_tokens(out, tokens)
        print(f"{len(tokens)} tokens ({len(joints)} frames at {fps:g} fps) written to {out}", file=sys.stderr)
    return 0

def cmd_to_bvh(args: argparse.Namespace) -> int:
    out = output_path(args.out)
    joints, fps, contacts = motion_file(args.motion, args.fps, args.axes)
    print(write_motion_bvh(out, joints, fps, contacts, foot_lock=args.foot_lock, smooth=args.smooth,
                           source=args.motion))
    return 0


def add_decode(subs: Any, p: dict[str, argparse.ArgumentParser]) -> None:
    """The `decode` command and its arguments."""
    v, model, motion, sampling = p["verbose"], p["model"], p["motion"], p["sampling"]
    sub = subparser(subs, "decode", "motion tokens to joints with the VQ-VAE; writes an .npz", [v], cmd_decode)
    sub.add_argument("--model", metavar="DIR", help=MODEL_HELP)
    sub.set_defaults(model_argument="model")
    sub.add_argument("--tokens", required=True, metavar="FILE_OR_LIST",
                     help="a .npy/.npz/.json/.txt file or a list such as '12,7,99'")
    sub.add_argument("--out", required=True, metavar="FILE.npz", help="output file")


def add_encode(subs: Any, p: dict[str, argparse.ArgumentParser]) -> None:
    """The `encode` command and its arguments."""
    v, model, motion, sampling = p["verbose"], p["model"], p["motion"], p["sampling"]
    sub = subparser(subs, "encode", "joint positions to motion tokens with the VQ-VAE", [v], cmd_encode)
    sub.add_argument("--model", metavar="DIR", help=MODEL_HELP)
    sub.set_defaults(model_argument="model")
    sub.add_argument("--joints", required=True, metavar="FILE.npy",
                     help="joint positions (frames, joints, 3) in metres (.npy, or an .npz with 'joints')")
    sub.add_argument("--fps", type=positive, default=None, help="frame rate of the joints (default: the model's, 20)")
    sub.add_argument("--axes", choices=("humanml3d", "blender"), default="humanml3d",
                     help="humanml3d (Y up, facing +Z; default) or blender (Z up, facing -Y)")
    sub.add_argument("--out", metavar="FILE", default=None,
                     help="write the tokens to .npy, .json or text (default: print them comma separated)")


def add_to_bvh(subs: Any, p: dict[str, argparse.ArgumentParser]) -> None:
    """The `to-bvh` command and its arguments."""
    v, model, motion, sampling = p["verbose"], p["model"], p["motion"], p["sampling"]
    sub = subparser(subs, "to-bvh", "a motion (.npz or joints .npy) to a BVH file with solved rotations", [v],
                     cmd_to_bvh)
    sub.add_argument("motion", metavar="MOTION", help=".npz written by generate/refine/decode, or a .npy of "
                                                      "joints (frames, 22, 3) in metres")
    sub.add_argument("--out", required=True, metavar="FILE.bvh", help="output file (written atomically)")
    sub.add_argument("--fps", type=positive, default=None, metavar="FPS",
                     help="frame rate (default: the .npz's, else 20)")
    sub.add_argument("--axes", choices=("humanml3d", "blender"), default="humanml3d",
                     help="axes of the joints: humanml3d (Y up, facing +Z; default) or blender (Z up, facing -Y)")
    add_foot_lock(sub)
    sub.add_argument("--smooth", action="store_true",
                     help="Savitzky-Golay smoothing of the positions (window 11, order 5) before solving")
