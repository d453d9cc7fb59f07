"""`irg-motion extend`: continue a motion (its last seconds forced as the start of the model's next one)."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

import numpy as np

from ..rig_math.skeleton import FRAMES_PER_TOKEN, HUMANML3D, from_blender, to_blender
from .common import EXIT_NO_RESULT, CliError, positive, subparser
from ..wire.protocol import decode_array
from .files import describe_motion, motion_arrays, output_path, read_joints, read_tokens, write_npz
from .run import fixture_note, given_joints, json_stdout, load_engine, report, report_warnings, run_task, \
    sampling_options


def _source(args: argparse.Namespace, engine: Any) -> tuple[np.ndarray, str]:
    """The motion to continue, Blender axes at the model's rate, and where it came from.

    An .npz with joints (generate, refine, extend) gives its joints, the whole motion as
    written; tokens alone are decoded; --joints are read as for refine."""
    from ..motion.features import resample

    rate = float(engine.codec.fps)
    if args.joints is not None:
        joints, fps = given_joints(args)
        return resample(joints.astype(np.float64), fps, rate), args.joints
    path = Path(args.tokens).expanduser()
    if path.suffix == ".npz" and path.is_file():
        with np.load(path, allow_pickle=False) as data:
            has_joints, fps = "joints" in data, float(data["fps"]) if "fps" in data else rate
        if has_joints:
            joints = to_blender(read_joints(str(path), HUMANML3D.num_joints)).astype(np.float64)
            return resample(joints, fps, rate), str(path)
    return engine.codec.decode(read_tokens(args.tokens)).joints_blender.astype(np.float64), args.tokens


def cmd_extend(args: argparse.Namespace) -> int:
    out = output_path(args.out)
    if args.tokens is not None:
        read_tokens(args.tokens)  # a bad --tokens fails before the model loads
    engine = load_engine(args)
    from ..llm.constraints import MAX_MOTION_TOKENS
    from ..rig_math.seam import join, seam_report, tail_slice

    source, origin = _source(args, engine)
    rate = float(engine.codec.fps)
    try:
        tail = source[tail_slice(len(source), rate, args.tail)]
    except ValueError as exc:
        raise CliError(f"cannot extend {origin}: {exc}") from None
    prefix = engine.encode_tokens(tail, rate)
    limit = len(prefix) + max(2, int(round(args.seconds * rate / FRAMES_PER_TOKEN)))
    if limit > MAX_MOTION_TOKENS:
        raise CliError(f"--seconds {args.seconds:g} after a {args.tail:g} s tail ({len(prefix)} tokens) needs "
                       f"{limit} tokens in one motion, more than the model's {MAX_MOTION_TOKENS}: "
                       f"ask for at most {(MAX_MOTION_TOKENS - len(prefix)) * FRAMES_PER_TOKEN / rate:g} s")
    with json_stdout(args.json) as json_out:
        sink = run_task(engine.generate, args.prompt, mode=args.mode, max_rounds=args.rounds,
                        max_motion_tokens=limit, prefix_tokens=prefix, **sampling_options(args), json_out=json_out,
                        progress=not args.json and sys.stderr.isatty())
    motions = sink.of("motion")
    report_warnings(sink, args.json)
    fixture_note(engine, args.json)
    if not motions:
        raise CliError(f"the model produced no continuation (stop reason: {sink.done.get('stop_reason')}); "
                       "nothing was written", EXIT_NO_RESULT)
    chosen = motions[-1]
    joined = join(source, decode_array(chosen["joints"]), len(prefix))
    arrays = {**motion_arrays(chosen, args.prompt), "joints": from_blender(joined.joints).astype(np.float32),
              "prefix_tokens": np.int32(prefix), "seam_frame": np.int32(joined.seam), "parent": np.str_(origin)}
    for name in ("features", "contacts"):  # the continuation's own, not the joined motion's
        arrays.pop(name)
    write_npz(out, arrays)
    figures = seam_report(joined)
    report(f"{describe_motion(chosen)}: {len(prefix)} forced from the last {len(tail) - 1} frames of {origin}\n"
           f"the new motion starts at frame {joined.seam} of {len(joined.joints)} ({rate:g} fps); joint jumps "
           f"across the seam p95 {figures['seam_p95'] * 100:.1f} cm/frame against the motion's own "
           f"{figures['motion_p95'] * 100:.1f} cm/frame\nwrote {out}", args.json)
    return 0


def add_extend(subs: Any, p: dict[str, argparse.ArgumentParser]) -> None:
    """The `extend` command and its arguments."""
    v, model, motion, sampling = p["verbose"], p["model"], p["motion"], p["sampling"]
    sub = subparser(subs, "extend", "continue a motion: its last seconds start the model's next motion; writes an "
                                    ".npz of the whole", [v, model, motion, sampling], cmd_extend)
    sub.add_argument("prompt", metavar="PROMPT", help="what happens next, e.g. 'then he sits down'")
    sub.add_argument("--out", required=True, metavar="FILE.npz", help="output file: the source, then the new motion")
    sub.add_argument("--seconds", type=positive, default=4.0, metavar="S",
                     help="length of the new motion (default 4 s; with the tail at most 10 s in all)")
    sub.add_argument("--tail", type=positive, default=2.0, metavar="S",
                     help="seconds at the end of the source that are encoded and forced (default 2)")
    sub.add_argument("--mode", choices=("interleaved", "direct", "stage1_loop"), default="interleaved",
                     help="interleaved reasoning trace with assessment and refinement (default), or direct")
    sub.add_argument("--rounds", type=int, default=5, metavar="N", help="most motions (refinement rounds), default 5")
