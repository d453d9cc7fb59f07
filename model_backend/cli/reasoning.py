"""The commands that run the language model: generate, critique, refine, caption."""
from __future__ import annotations

import argparse
import sys
from typing import Any

import numpy as np

from .common import EXIT_NO_RESULT, CliError, add_foot_lock, subparser
from .files import describe_motion, motion_arrays, output_path, write_motion_bvh, write_npz
from .run import (as_tokens, fixture_note, given_motion, json_stdout, load_engine, report, run_task, report_warnings,
                  sampling_options)

def cmd_generate(args: argparse.Namespace) -> int:
    out = output_path(args.out)
    engine = load_engine(args)
    options = {"mode": args.mode, "max_rounds": args.rounds, "max_motion_tokens": args.max_motion_tokens,
               **sampling_options(args)}
    with json_stdout(args.json) as json_out:
        sink = run_task(engine.generate, args.prompt, **options, json_out=json_out,
                        progress=not args.json and sys.stderr.isatty())
    motions = sink.of("motion")
    if not motions:
        reason = sink.done.get("stop_reason", "unknown")
        raise CliError(f"the model produced no motion (stop reason: {reason}); try another --seed with "
                       "--temperature 0.8, or --mode direct", EXIT_NO_RESULT)
    chosen = _pick_round(motions, args.version)
    arrays = motion_arrays(chosen, args.prompt)
    write_npz(out, arrays)
    if args.bvh:
        report(write_motion_bvh(output_path(args.bvh), arrays["joints"].astype(np.float64), float(arrays["fps"]),
                                 arrays["contacts"].astype(np.float64), foot_lock=args.foot_lock, smooth=False,
                                 source="the generated motion"), args.json)
    for motion in motions:
        report(describe_motion(motion) + ("  <- written" if motion is chosen else ""), args.json)
    for item in sink.of("assessment"):
        report(f"round {item['round']} assessment: {item['assessment']}\n  refinement: {item['refinement']}",
                args.json)
    done = sink.done
    report(f"stopped: {done.get('stop_reason')} after {done.get('tokens_generated')} tokens in "
            f"{done.get('elapsed_s')} s", args.json)
    report_warnings(sink, args.json)
    fixture_note(engine, args.json)
    report(f"wrote {out} (round {chosen.get('round', 1)})", args.json)
    return 0

def _pick_round(motions: list[dict[str, Any]], version: int | None) -> dict[str, Any]:
    if version is None:
        return motions[-1]
    for motion in motions:
        if motion.get("round") == version:
            return motion
    rounds = ", ".join(str(m.get("round")) for m in motions)
    raise CliError(f"--version {version}: the model wrote no round {version} (rounds: {rounds}); "
                   "nothing was written", EXIT_NO_RESULT)

def cmd_critique(args: argparse.Namespace) -> int:
    motion = given_motion(args)
    engine = load_engine(args)
    tokens = as_tokens(engine, motion, args)
    with json_stdout(args.json) as json_out:
        sink = run_task(engine.critique, args.prompt, tokens, form=args.form, **sampling_options(args),
                        json_out=json_out, progress=not args.json and sys.stderr.isatty())
    items = sink.of("assessment")
    if not items and not args.json:
        raise CliError(f"the model wrote no assessment (stop reason: {sink.done.get('stop_reason')})",
                       EXIT_NO_RESULT)
    if not args.json:
        for item in items:
            print(f"Assessment: {item['assessment']}\nRefinement: {item['refinement']}")
            print("Satisfied: " + ("yes" if item.get("satisfied") else "no"))
    report_warnings(sink, args.json)
    fixture_note(engine, args.json)
    return 0 if items else EXIT_NO_RESULT

def cmd_refine(args: argparse.Namespace) -> int:
    out = output_path(args.out)
    motion = given_motion(args)
    engine = load_engine(args)
    tokens = as_tokens(engine, motion, args)
    with json_stdout(args.json) as json_out:
        sink = run_task(engine.refine, args.prompt, tokens, instruction=args.instruction, form=args.form,
                        max_motion_tokens=args.max_motion_tokens, **sampling_options(args),
                        json_out=json_out, progress=not args.json and sys.stderr.isatty())
    for item in sink.of("assessment"):
        report(f"assessment: {item['assessment']}\nrefinement: {item['refinement']}", args.json)
    motions = sink.of("motion")
    report_warnings(sink, args.json)
    fixture_note(engine, args.json)
    if not motions:
        satisfied = sink.done.get("stop_reason") == "satisfied"
        raise CliError("the model found the motion satisfactory and did not refine it; nothing was written"
                       if satisfied else f"the model produced no refined motion (stop reason: "
                       f"{sink.done.get('stop_reason')}); nothing was written", EXIT_NO_RESULT)
    write_npz(out, motion_arrays(motions[-1], args.prompt))
    report(f"{describe_motion(motions[-1])}\nwrote {out}", args.json)
    return 0

def cmd_caption(args: argparse.Namespace) -> int:
    motion = given_motion(args)
    engine = load_engine(args)
    tokens = as_tokens(engine, motion, args)
    with json_stdout(args.json) as json_out:
        sink = run_task(engine.caption, tokens, **sampling_options(args), json_out=json_out,
                        progress=not args.json and sys.stderr.isatty())
    captions = sink.of("caption")
    if not args.json:
        for item in captions:
            print(item["text"])
    report_warnings(sink, args.json)
    fixture_note(engine, args.json)
    return 0 if captions else EXIT_NO_RESULT


def add_generate(subs: Any, p: dict[str, argparse.ArgumentParser]) -> None:
    """The `generate` command and its arguments."""
    v, model, motion, sampling = p["verbose"], p["model"], p["motion"], p["sampling"]
    sub = subparser(subs, "generate", "text to motion; writes an .npz", [v, model, sampling], cmd_generate)
    sub.add_argument("prompt", metavar="PROMPT", help="what the motion should show")
    sub.add_argument("--out", required=True, metavar="FILE.npz", help="output file (written atomically)")
    sub.add_argument("--bvh", metavar="FILE.bvh", default=None,
                     help="also write the motion as a BVH on the default SMPL-proportioned skeleton")
    add_foot_lock(sub)
    sub.add_argument("--mode", choices=("interleaved", "direct", "stage1_loop"), default="interleaved",
                     help="interleaved reasoning trace (default), direct (one motion), or stage1_loop")
    sub.add_argument("--rounds", type=int, default=5, metavar="N", help="most motions (refinement rounds), default 5")
    sub.add_argument("--max-motion-tokens", type=int, default=49, metavar="N",
                     help="longest motion in tokens of 0.2 s (default 49 = 9.8 s, at most 50)")
    sub.add_argument("--version", type=int, default=None, metavar="K",
                     help="which round to write (default: the last, the model's answer)")


def add_critique(subs: Any, p: dict[str, argparse.ArgumentParser]) -> None:
    """The `critique` command and its arguments."""
    v, model, motion, sampling = p["verbose"], p["model"], p["motion"], p["sampling"]
    sub = subparser(subs, "critique", "assess how well a motion matches a prompt", [v, model, motion, sampling],
                     cmd_critique)
    sub.add_argument("prompt", metavar="PROMPT", help="the goal text")
    sub.add_argument("--form", choices=("interleaved", "stage1"), default=None,
                     help="prompt form (default: interleaved, or stage1 for a stage-1 model)")


def add_refine(subs: Any, p: dict[str, argparse.ArgumentParser]) -> None:
    """The `refine` command and its arguments."""
    v, model, motion, sampling = p["verbose"], p["model"], p["motion"], p["sampling"]
    sub = subparser(subs, "refine", "refine a motion for a prompt; writes an .npz", [v, model, motion, sampling],
                     cmd_refine)
    sub.add_argument("prompt", metavar="PROMPT", help="the goal text")
    sub.add_argument("--out", required=True, metavar="FILE.npz", help="output file for the refined motion")
    sub.add_argument("--instruction", default=None, metavar="TEXT",
                     help="how to change the motion (default: the model decides)")
    sub.add_argument("--form", choices=("interleaved", "stage1"), default="interleaved")
    sub.add_argument("--max-motion-tokens", type=int, default=49, metavar="N", help="longest refined motion in tokens")


def add_caption(subs: Any, p: dict[str, argparse.ArgumentParser]) -> None:
    """The `caption` command and its arguments."""
    v, model, motion, sampling = p["verbose"], p["model"], p["motion"], p["sampling"]
    subparser(subs, "caption", "describe a motion in words", [v, model, motion, sampling], cmd_caption)
