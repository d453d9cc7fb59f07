"""Running one Engine task from the command line: a worker thread (Ctrl-C cancels it), progress or
`--json` event lines, and the inputs the model commands share."""
from __future__ import annotations

import argparse
import contextlib
import sys
import threading
import time
from pathlib import Path
from typing import Any, Callable, Iterator, TextIO

import numpy as np

from ..rig_math.skeleton import to_blender
from ..wire.manifest import read_manifest
from ..wire.protocol import error_event
from .common import EXIT_NO_RESULT, EXIT_USAGE, CliError
from .files import model_dir, read_joints, read_tokens

class Sink:
    """Receives a task's events: keeps them, prints them as JSON lines (`--json`) or progress."""

    def __init__(self, json_out: TextIO | None, progress: bool):
        self.events: list[dict[str, Any]] = []
        self.json_out = json_out
        self.progress = progress
        self.started = time.monotonic()
        self.tokens = 0
        self.where = "starting"
        self._drawn = 0.0
        if json_out is not None:
            from ..serve.server import LineWriter, to_wire

            self._to_wire, self._write = to_wire, LineWriter(json_out)

    def __call__(self, event: dict[str, Any]) -> None:
        self.events.append(event)
        if self.json_out is not None:
            self._write(self._to_wire(event))
        if self.progress:
            self._draw(event)

    def _draw(self, event: dict[str, Any]) -> None:
        kind = event.get("event")
        if kind == "text":
            self.tokens += 1
            self.where = f"round {event.get('round', 0)} {event.get('section', '')}"
        elif kind == "motion_tokens":
            self.tokens += len(event.get("tokens", ()))
            self.where = f"round {event.get('round', 1)} motion"
        now = time.monotonic()
        if kind == "done" or now - self._drawn >= 0.1:
            self._drawn = now
            end = "\n" if kind == "done" else ""
            sys.stderr.write(f"\r{now - self.started:6.1f} s  {self.where:<22} ~{self.tokens} tokens{end}")
            sys.stderr.flush()

    def of(self, kind: str) -> list[dict[str, Any]]:
        return [e for e in self.events if e.get("event") == kind]

    @property
    def done(self) -> dict[str, Any]:
        found = self.of("done")
        return found[-1] if found else {}

def run_task(method: Callable[..., None], *args: Any, json_out: TextIO | None = None, progress: bool = False,
             **kwargs: Any) -> Sink:
    """Run one Engine task on a worker thread (Ctrl-C cancels it cleanly); return its collected events.

    EngineError becomes a CliError (also written as an `error` line with `--json`).
    """
    from ..llm.engine import EngineError

    sink = Sink(json_out, progress)
    cancel = threading.Event()
    failure: list[BaseException] = []

    def work() -> None:
        try:
            method(*args, **kwargs, emit=sink, cancel=cancel)
        except BaseException as exc:  # handed to the main thread below
            failure.append(exc)

    thread = threading.Thread(target=work, name="irg-motion-task", daemon=True)
    thread.start()
    try:
        while thread.is_alive():
            thread.join(0.1)
    except KeyboardInterrupt:
        cancel.set()
        sys.stderr.write("\ninterrupted: stopping the model...\n")
        thread.join()
        raise
    if failure:
        exc = failure[0]
        if isinstance(exc, EngineError):
            if json_out is not None:
                sink(error_event(exc.code, exc.message))
            status = EXIT_USAGE if exc.code in ("bad_request", "bad_array") else EXIT_NO_RESULT
            raise CliError(f"{exc.message} [{exc.code}]", status)
        raise exc
    return sink

@contextlib.contextmanager
def json_stdout(enabled: bool) -> Iterator[TextIO | None]:
    """With --json, stdout carries only the JSON lines (stray prints go to stderr)."""
    if not enabled:
        yield None
        return
    from ..serve.server import reserved_stdout

    with reserved_stdout() as out:
        yield out

def report(text: str, as_json: bool) -> None:
    """Human-readable results: stdout normally, stderr when stdout carries JSON lines."""
    print(text, file=sys.stderr if as_json else sys.stdout, flush=True)

def load_engine(args: argparse.Namespace) -> Any:
    from ..serve.server import StartupError, load_engine

    folder = model_dir(args.model)
    try:
        return load_engine(folder, args.device, args.precision)
    except StartupError as exc:
        raise CliError(exc.message) from None

def sampling_options(args: argparse.Namespace) -> dict[str, Any]:
    out = {"temperature": args.temperature, "top_p": args.top_p, "seed": args.seed}
    if args.max_new_tokens is not None:
        out["max_new_tokens"] = args.max_new_tokens
    return out

def report_warnings(sink: Sink, as_json: bool) -> None:
    for warning in sink.done.get("warnings", []):
        report(f"warning: {warning}", as_json)

def fixture_note(engine: Any, as_json: bool) -> None:
    if engine.info.get("model", {}).get("fixture"):
        report("note: this is an untrained fixture model: its motion and text are noise", as_json)

def given_motion(args: argparse.Namespace) -> dict[str, Any]:
    """--tokens, or --joints (Blender axes) with their fps: read and checked before the model loads."""
    if args.tokens is not None:
        return {"tokens": read_tokens(args.tokens)}
    joints, fps = given_joints(args)
    return {"joints": joints, "fps": fps}

def as_tokens(engine: Any, motion: dict[str, Any], args: argparse.Namespace) -> list[int]:
    """The motion as codebook indices (joints encoded with the model's VQ-VAE)."""
    if "tokens" in motion:
        return motion["tokens"]
    from ..llm.engine import EngineError

    try:
        return engine.encode_tokens(motion["joints"], motion["fps"])
    except EngineError as exc:
        raise CliError(f"cannot encode {args.joints}: {exc.message}") from None

def given_joints(args: argparse.Namespace) -> tuple[np.ndarray, float]:
    """--joints in Blender axes and their fps (--fps, else the model's), checked against the model folder."""
    manifest = read_manifest(Path(args.model).expanduser())
    joints = read_joints(args.joints, int(manifest["num_joints"]))
    if args.axes != "blender":
        joints = to_blender(joints).astype(np.float32)
    return joints, args.fps if args.fps is not None else float(manifest["fps"])
