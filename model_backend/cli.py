"""`irg-motion`, the command line (also `python -m model_backend`); see docs/cli.md.

Every command that needs torch imports it when it runs, so `irg-motion inspect` and
`--help` stay fast. Commands that run the model (`generate`, `critique`, `refine`,
`caption`) load the Engine in this process and consume the same events the backend
server streams; `decode` and `encode` load only the VQ-VAE.

Exit status: 0 success, 1 the model produced nothing usable, 2 bad input (missing
files, wrong shapes, bad options), 130 interrupted.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import re
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any, BinaryIO, Callable, Iterator, TextIO

import numpy as np

from .manifest import ModelFolderError, read_manifest
from .protocol import decode_array, error_event
from .skeleton import FRAMES_PER_TOKEN, HUMANML3D, from_blender, to_blender
from .vocab import NUM_MOTION_CODES

__all__ = ["main", "build_parser", "CliError", "folder_report", "format_report", "read_tokens", "read_joints",
           "run_task", "write_npz"]

EXIT_NO_RESULT, EXIT_USAGE, EXIT_INTERRUPTED = 1, 2, 130
DEVICE_HELP = "auto (CUDA when available, else CPU), cpu, cuda or cuda:N (default: auto)"
PRECISIONS = ("auto", "nf4", "int8", "bf16", "fp32")
STAGE_USE = {1: "single-task prompts", 2: "interleaved reasoning", 3: "interleaved reasoning, refines more"}


class CliError(Exception):
    """A problem the user can fix; `status` is the exit status (2: bad input, 1: no result)."""

    def __init__(self, message: str, status: int = EXIT_USAGE):
        super().__init__(message)
        self.status = status


# ---------------------------------------------------------------- input files

def _existing_file(path: str, what: str) -> Path:
    p = Path(path).expanduser()
    if not p.is_file():
        raise CliError(f"{what} {p} not found: " + ("it is a folder, give a file" if p.is_dir() else
                                                    "check the path"))
    return p


def _model_dir(path: str) -> Path:
    """The model folder, checked (manifest and files) before anything heavy is imported."""
    folder = Path(path).expanduser()
    read_manifest(folder)  # ModelFolderError names the folder, the problem and the fix
    return folder


def _output_path(path: str) -> Path:
    out = Path(path).expanduser()
    if out.is_dir():
        raise CliError(f"output {out} is a folder: give a file name such as {out / 'motion.npz'}")
    if not out.parent.is_dir():
        raise CliError(f"the folder of the output {out} does not exist: create {out.parent} first")
    return out


def read_tokens(spec: str) -> list[int]:
    """Codebook indices from a .npy/.npz/.json/.txt file or a comma/space separated list ("12,7 99")."""
    path = Path(spec).expanduser()
    if path.is_file():
        values = _tokens_from_file(path)
    elif re.fullmatch(r"[\s,\[\]]*\d+([\s,\[\]]+\d+)*[\s,\[\]]*", spec):
        values = [int(t) for t in re.findall(r"\d+", spec)]
    else:
        raise CliError(f"--tokens {spec!r} is neither an existing file (.npy, .npz, .json, .txt) nor a list "
                       "of codebook indices such as '12,7,99'")
    if not values:
        raise CliError(f"--tokens {spec}: no tokens found")
    if not all(isinstance(v, (int, np.integer)) and not isinstance(v, bool) and 0 <= v < NUM_MOTION_CODES
               for v in values):
        raise CliError(f"--tokens {spec}: tokens must be codebook indices 0..{NUM_MOTION_CODES - 1}")
    return [int(v) for v in values]


def _tokens_from_file(path: Path) -> list[Any]:
    try:
        if path.suffix == ".npy":
            return np.load(path, allow_pickle=False).ravel().tolist()
        if path.suffix == ".npz":
            with np.load(path, allow_pickle=False) as data:
                if "tokens" not in data:
                    raise CliError(f"{path} holds no 'tokens' array (it has {', '.join(data.files)})")
                return data["tokens"].ravel().tolist()
        text = path.read_text(encoding="utf-8")
        if path.suffix == ".json":
            obj = json.loads(text)
            obj = obj.get("tokens") if isinstance(obj, dict) else obj
            if not isinstance(obj, list):
                raise CliError(f"{path} must hold a JSON list of tokens or an object with a 'tokens' list")
            return obj
        return [int(t) for t in re.findall(r"-?\d+", text)]
    except (ValueError, OSError) as exc:
        raise CliError(f"cannot read tokens from {path}: {exc}") from None


def read_joints(path: str, num_joints: int) -> np.ndarray:
    """Joint positions (T, J, 3) from a .npy file, or the `joints` array of a .npz (as written by generate)."""
    p = _existing_file(path, "joints file")
    try:
        if p.suffix == ".npz":
            with np.load(p, allow_pickle=False) as data:
                if "joints" not in data:
                    raise CliError(f"{p} holds no 'joints' array (it has {', '.join(data.files)})")
                joints = data["joints"]
        else:
            joints = np.load(p, allow_pickle=False)
    except (ValueError, OSError) as exc:
        raise CliError(f"cannot read joints from {p}: {exc}; give a .npy array of shape "
                       f"(frames, {num_joints}, 3)") from None
    if joints.ndim != 3 or joints.shape[1:] != (num_joints, 3) or joints.shape[0] < 1:
        raise CliError(f"{p} holds an array of shape {joints.shape}; this model needs (frames, {num_joints}, 3)")
    if not np.isfinite(joints).all():
        raise CliError(f"{p} holds NaN or infinite joint positions")
    return joints.astype(np.float32)


# ---------------------------------------------------------------- output files

def _write_atomic(path: Path, write: Callable[[BinaryIO], None]) -> None:
    """Call `write` on a temporary file in the same folder, then rename it into place."""
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            write(fh)
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes it private; an output file is not
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_npz(path: Path, arrays: dict[str, Any]) -> None:
    """Write an .npz atomically: a temporary file in the same folder, renamed into place."""
    _write_atomic(path, lambda fh: np.savez(fh, **arrays))


def _array(value: Any) -> np.ndarray:
    return decode_array(value) if isinstance(value, dict) else np.asarray(value)


def motion_arrays(event: dict[str, Any], prompt: str = "") -> dict[str, np.ndarray]:
    """A `motion` event as .npz arrays; joints back in HumanML3D axes (metres, Y up, facing +Z)."""
    return {
        "tokens": np.asarray(event["tokens"], dtype=np.int32),
        "features": _array(event["features"]).astype(np.float32),
        "joints": from_blender(_array(event["joints"])).astype(np.float32),
        "contacts": _array(event["contacts"]).astype(np.float32),
        "fps": np.float32(event["fps"]),
        "prompt": np.str_(prompt),
        "round": np.int32(event.get("round", 1)),
    }


def _describe_motion(event: dict[str, Any]) -> str:
    frames = FRAMES_PER_TOKEN * len(event["tokens"])
    return (f"round {event.get('round', 1)}: {len(event['tokens'])} tokens, {frames} frames "
            f"({frames / float(event['fps']):.1f} s at {float(event['fps']):g} fps)")


# ---------------------------------------------------------------- running a task with progress

class _Sink:
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
            from .server import LineWriter, to_wire

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
             **kwargs: Any) -> _Sink:
    """Run one Engine task on a worker thread (Ctrl-C cancels it cleanly); return its collected events.

    EngineError becomes a CliError (also written as an `error` line with `--json`).
    """
    from .engine import EngineError

    sink = _Sink(json_out, progress)
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
def _json_stdout(enabled: bool) -> Iterator[TextIO | None]:
    """With --json, stdout carries only the JSON lines (stray prints go to stderr)."""
    if not enabled:
        yield None
        return
    from .server import reserved_stdout

    with reserved_stdout() as out:
        yield out


def _report(text: str, as_json: bool) -> None:
    """Human-readable results: stdout normally, stderr when stdout carries JSON lines."""
    print(text, file=sys.stderr if as_json else sys.stdout, flush=True)


def _load_engine(args: argparse.Namespace) -> Any:
    from .server import StartupError, load_engine

    folder = _model_dir(args.model)
    try:
        return load_engine(folder, args.device, args.precision)
    except StartupError as exc:
        raise CliError(exc.message) from None


def _sampling(args: argparse.Namespace) -> dict[str, Any]:
    out = {"temperature": args.temperature, "top_p": args.top_p, "seed": args.seed}
    if args.max_new_tokens is not None:
        out["max_new_tokens"] = args.max_new_tokens
    return out


def _warnings(sink: _Sink, as_json: bool) -> None:
    for warning in sink.done.get("warnings", []):
        _report(f"warning: {warning}", as_json)


def _fixture_note(engine: Any, as_json: bool) -> None:
    if engine.info.get("model", {}).get("fixture"):
        _report("note: this is an untrained fixture model: its motion and text are noise", as_json)


def _given_motion(args: argparse.Namespace) -> dict[str, Any]:
    """--tokens, or --joints (Blender axes) with their fps: read and checked before the model loads."""
    if args.tokens is not None:
        return {"tokens": read_tokens(args.tokens)}
    joints, fps = _given_joints(args)
    return {"joints": joints, "fps": fps}


def _as_tokens(engine: Any, motion: dict[str, Any], args: argparse.Namespace) -> list[int]:
    """The motion as codebook indices (joints encoded with the model's VQ-VAE)."""
    if "tokens" in motion:
        return motion["tokens"]
    from .engine import EngineError

    try:
        return engine.encode_tokens(motion["joints"], motion["fps"])
    except EngineError as exc:
        raise CliError(f"cannot encode {args.joints}: {exc.message}") from None


def _given_joints(args: argparse.Namespace) -> tuple[np.ndarray, float]:
    """--joints in Blender axes and their fps (--fps, else the model's), checked against the model folder."""
    manifest = read_manifest(Path(args.model).expanduser())
    joints = read_joints(args.joints, int(manifest["num_joints"]))
    if args.axes != "blender":
        joints = to_blender(joints).astype(np.float32)
    return joints, args.fps if args.fps is not None else float(manifest["fps"])


# ---------------------------------------------------------------- commands

def cmd_make_fixture(args: argparse.Namespace) -> int:
    from .fixture import make_fixture

    try:
        path = make_fixture(args.dir, args.seed, dataset=args.dataset, stage=args.stage)
    except ValueError as exc:  # ModelFolderError too: a non-empty folder that is not a fixture
        raise CliError(str(exc)) from None
    print(f"wrote a fixture model folder to {path} (seed {args.seed}, {args.dataset}, stage {args.stage}):")
    for rel, size in _files(path):
        print(f"  {rel:<28} {_size(size):>10}")
    print("It is untrained: its motion and text are noise. Use it to test the pipeline; for real motion "
          "convert a checkpoint with `irg-motion convert` (docs/model-setup.md).")
    return 0


def cmd_serve(args: argparse.Namespace) -> int:
    if args.listen is None:
        if not args.stdio:
            raise CliError("choose a transport: --stdio (JSON lines on stdin/stdout, for the add-on's own "
                           "process) or --listen HOST:PORT (a network server, docs/protocol.md#transports)")
        if args.token_file is not None or args.allow_remote_shutdown or args.max_clients is not None:
            raise CliError("--token-file, --allow-remote-shutdown and --max-clients only apply to --listen")
        from .server import serve_stdio

        return serve_stdio(args.model, args.device, args.precision)
    from .net_server import MAX_CLIENTS, ServerConfigError, serve_tcp, server_config

    try:  # checked before torch is imported: a refused address fails at once
        config = server_config(args.listen, args.token_file, allow_remote_shutdown=args.allow_remote_shutdown,
                               max_clients=MAX_CLIENTS if args.max_clients is None else args.max_clients)
    except ServerConfigError as exc:
        raise CliError(str(exc)) from None
    return serve_tcp(args.model, args.device, args.precision, config)


def cmd_generate(args: argparse.Namespace) -> int:
    out = _output_path(args.out)
    engine = _load_engine(args)
    options = {"mode": args.mode, "max_rounds": args.rounds, "max_motion_tokens": args.max_motion_tokens,
               **_sampling(args)}
    with _json_stdout(args.json) as json_out:
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
        _report(write_motion_bvh(_output_path(args.bvh), arrays["joints"].astype(np.float64), float(arrays["fps"]),
                                 arrays["contacts"].astype(np.float64), foot_lock=args.foot_lock, smooth=False,
                                 source="the generated motion"), args.json)
    for motion in motions:
        _report(_describe_motion(motion) + ("  <- written" if motion is chosen else ""), args.json)
    for item in sink.of("assessment"):
        _report(f"round {item['round']} assessment: {item['assessment']}\n  refinement: {item['refinement']}",
                args.json)
    done = sink.done
    _report(f"stopped: {done.get('stop_reason')} after {done.get('tokens_generated')} tokens in "
            f"{done.get('elapsed_s')} s", args.json)
    _warnings(sink, args.json)
    _fixture_note(engine, args.json)
    _report(f"wrote {out} (round {chosen.get('round', 1)})", args.json)
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
    motion = _given_motion(args)
    engine = _load_engine(args)
    tokens = _as_tokens(engine, motion, args)
    with _json_stdout(args.json) as json_out:
        sink = run_task(engine.critique, args.prompt, tokens, form=args.form, **_sampling(args),
                        json_out=json_out, progress=not args.json and sys.stderr.isatty())
    items = sink.of("assessment")
    if not items and not args.json:
        raise CliError(f"the model wrote no assessment (stop reason: {sink.done.get('stop_reason')})",
                       EXIT_NO_RESULT)
    if not args.json:
        for item in items:
            print(f"Assessment: {item['assessment']}\nRefinement: {item['refinement']}")
            print("Satisfied: " + ("yes" if item.get("satisfied") else "no"))
    _warnings(sink, args.json)
    _fixture_note(engine, args.json)
    return 0 if items else EXIT_NO_RESULT


def cmd_refine(args: argparse.Namespace) -> int:
    out = _output_path(args.out)
    motion = _given_motion(args)
    engine = _load_engine(args)
    tokens = _as_tokens(engine, motion, args)
    with _json_stdout(args.json) as json_out:
        sink = run_task(engine.refine, args.prompt, tokens, instruction=args.instruction, form=args.form,
                        max_motion_tokens=args.max_motion_tokens, **_sampling(args),
                        json_out=json_out, progress=not args.json and sys.stderr.isatty())
    for item in sink.of("assessment"):
        _report(f"assessment: {item['assessment']}\nrefinement: {item['refinement']}", args.json)
    motions = sink.of("motion")
    _warnings(sink, args.json)
    _fixture_note(engine, args.json)
    if not motions:
        satisfied = sink.done.get("stop_reason") == "satisfied"
        raise CliError("the model found the motion satisfactory and did not refine it; nothing was written"
                       if satisfied else f"the model produced no refined motion (stop reason: "
                       f"{sink.done.get('stop_reason')}); nothing was written", EXIT_NO_RESULT)
    write_npz(out, motion_arrays(motions[-1], args.prompt))
    _report(f"{_describe_motion(motions[-1])}\nwrote {out}", args.json)
    return 0


def cmd_caption(args: argparse.Namespace) -> int:
    motion = _given_motion(args)
    engine = _load_engine(args)
    tokens = _as_tokens(engine, motion, args)
    with _json_stdout(args.json) as json_out:
        sink = run_task(engine.caption, tokens, **_sampling(args), json_out=json_out,
                        progress=not args.json and sys.stderr.isatty())
    captions = sink.of("caption")
    if not args.json:
        for item in captions:
            print(item["text"])
    _warnings(sink, args.json)
    _fixture_note(engine, args.json)
    return 0 if captions else EXIT_NO_RESULT


def _codec(model: str) -> Any:
    from .codec import MotionCodec

    return MotionCodec.from_dir(_model_dir(model))


def cmd_decode(args: argparse.Namespace) -> int:
    tokens = read_tokens(args.tokens)
    out = _output_path(args.out)
    codec = _codec(args.model)
    try:
        motion = codec.decode(tokens)
    except ValueError as exc:
        raise CliError(f"cannot decode these tokens: {exc}") from None
    event = {"tokens": motion.tokens, "features": motion.features, "joints": motion.joints_blender,
             "contacts": motion.contacts, "fps": motion.fps, "round": 1}
    write_npz(out, motion_arrays(event))
    print(f"{_describe_motion(event)}\nwrote {out}")
    return 0


def cmd_encode(args: argparse.Namespace) -> int:
    out = _output_path(args.out) if args.out else None
    joints, fps = _given_joints(args)
    codec = _codec(args.model)
    try:
        tokens = codec.encode_joints(joints, fps)
    except ValueError as exc:
        raise CliError(f"cannot encode {args.joints}: {exc}") from None
    if out is None:
        print(",".join(str(t) for t in tokens))
    else:
        _write_tokens(out, tokens)
        print(f"{len(tokens)} tokens ({len(joints)} frames at {fps:g} fps) written to {out}", file=sys.stderr)
    return 0


def _write_tokens(path: Path, tokens: list[int]) -> None:
    """Tokens as .npy (int32), .json (a list) or text (comma separated), atomically."""
    def write(fh: BinaryIO) -> None:
        if path.suffix == ".npy":
            np.save(fh, np.asarray(tokens, dtype=np.int32))
        elif path.suffix == ".json":
            fh.write((json.dumps(tokens) + "\n").encode())
        else:
            fh.write((",".join(map(str, tokens)) + "\n").encode())

    _write_atomic(path, write)


def _motion_file(path: str, fps: float | None, axes: str) -> tuple[np.ndarray, float, np.ndarray | None]:
    """(joints in HumanML3D axes, fps, contacts or None) from an .npz of these commands or a .npy of joints."""
    p = _existing_file(path, "motion file")
    contacts = None
    if p.suffix == ".npz":
        with np.load(p, allow_pickle=False) as data:
            if "fps" in data and fps is None:
                fps = float(data["fps"])
            if "contacts" in data:
                contacts = data["contacts"].astype(np.float64)
    joints = read_joints(path, HUMANML3D.num_joints)
    if axes == "blender":
        joints = from_blender(joints)
    return joints.astype(np.float64), fps if fps is not None else HUMANML3D.fps, contacts


def write_motion_bvh(out: Path, joints: np.ndarray, fps: float, contacts: np.ndarray | None, *,
                     foot_lock: bool, smooth: bool, source: str) -> str:
    """Solve rotations for HumanML3D joints and write them as a BVH; returns a one-line summary."""
    from .bvh import write_bvh
    from .footlock import lock_feet
    from .smoothing import savgol
    from .solver import solve

    if contacts is not None and len(contacts) != len(joints):
        contacts = None  # not the contacts of these frames: detect from the positions alone
    try:
        if smooth:
            joints = savgol(joints)
        if foot_lock:
            joints = lock_feet(joints, HUMANML3D, contacts=contacts, fps=fps)
        write_bvh(out, solve(joints, HUMANML3D), fps)
    except ValueError as exc:
        raise CliError(f"cannot convert {source} to BVH: {exc}") from None
    return (f"wrote {out}: {len(joints)} frames at {fps:g} fps, {HUMANML3D.num_joints} joints"
            + (", feet locked" if foot_lock else "") + (", smoothed" if smooth else ""))


def cmd_to_bvh(args: argparse.Namespace) -> int:
    out = _output_path(args.out)
    joints, fps, contacts = _motion_file(args.motion, args.fps, args.axes)
    print(write_motion_bvh(out, joints, fps, contacts, foot_lock=args.foot_lock, smooth=args.smooth,
                           source=args.motion))
    return 0


# ---------------------------------------------------------------- inspect (no torch)

def _files(folder: Path) -> list[tuple[str, int]]:
    return sorted((p.relative_to(folder).as_posix(), p.stat().st_size) for p in folder.rglob("*") if p.is_file())


def _size(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1000 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return ""


def safetensors_summary(paths: list[Path]) -> dict[str, Any]:
    """Parameter count, dtypes and tensor count from safetensors headers (reads no weights)."""
    params, tensors, dtypes = 0, 0, set()
    for path in paths:
        with open(path, "rb") as fh:
            size = int.from_bytes(fh.read(8), "little")
            if not 0 < size < 100_000_000:
                raise CliError(f"{path} is not a safetensors file (bad header length)")
            header = json.loads(fh.read(size))
        for name, entry in header.items():
            if name == "__metadata__":
                continue
            params += int(np.prod(entry["shape"], dtype=np.int64))
            tensors += 1
            dtypes.add(entry["dtype"])
    return {"parameters": params, "tensors": tensors, "dtypes": sorted(dtypes)}


def _llm_weight_files(llm_dir: Path) -> list[Path]:
    index = llm_dir / "model.safetensors.index.json"
    if index.is_file():
        shards = sorted(set(json.loads(index.read_text(encoding="utf-8"))["weight_map"].values()))
        return [llm_dir / s for s in shards]
    single = llm_dir / "model.safetensors"
    return [single] if single.is_file() else []


def _tokenizer_summary(llm_dir: Path, manifest: dict[str, Any]) -> dict[str, Any]:
    path = llm_dir / "tokenizer.json"
    if not path.is_file():
        return {"file": None, "note": "no llm/tokenizer.json (vocabulary not read)"}
    data = json.loads(path.read_text(encoding="utf-8"))
    vocab = data.get("model", {}).get("vocab", {})
    ids = list(vocab.values()) if isinstance(vocab, dict) else list(range(len(vocab)))
    added = {t["content"]: int(t["id"]) for t in data.get("added_tokens", [])}
    size = max([*ids, *added.values()], default=-1) + 1
    codes = sorted(i for name, i in added.items() if re.fullmatch(r"<Motion_\d+>", name))
    summary = {"file": "llm/tokenizer.json", "vocab_size": size, "motion_start_id": added.get("<Motion>"),
               "motion_end_id": added.get("</Motion>"), "motion_code_count": len(codes),
               "motion_first_id": added.get("<Motion_0>"), "motion_last_id": codes[-1] if codes else None}
    expected = manifest["motion_tokens"]
    summary["matches_manifest"] = (summary["motion_start_id"] == expected["start_id"]
                                   and summary["motion_first_id"] == expected["first_id"]
                                   and len(codes) == expected["count"])
    return summary


def folder_report(model_dir: str | Path) -> dict[str, Any]:
    """What a model folder holds (manifest, files, tokenizer, LLM, VQ-VAE), read without torch."""
    folder = Path(model_dir).expanduser().absolute()
    manifest = read_manifest(folder)
    llm_dir = folder / "llm"
    config = json.loads((llm_dir / "config.json").read_text(encoding="utf-8"))
    keys = ("model_type", "num_hidden_layers", "hidden_size", "intermediate_size", "num_attention_heads",
            "num_key_value_heads", "head_dim", "vocab_size", "tie_word_embeddings", "sliding_window")
    llm = {k: config.get(k) for k in keys}
    llm["architecture"] = (config.get("architectures") or [None])[0]
    llm["dtype"] = config.get("dtype", config.get("torch_dtype"))
    weights = _llm_weight_files(llm_dir)
    llm["weights"] = safetensors_summary(weights) if weights else None
    vq = dict(manifest["vqvae"])
    vq["weights"] = safetensors_summary([folder / vq["file"]]) if vq["file"].endswith(".safetensors") else None
    return {
        "dir": str(folder),
        "manifest": {k: manifest.get(k) for k in ("name", "stage", "dataset", "feature_size", "num_joints",
                                                  "fps", "fixture", "created_by", "created_at")},
        "sources": manifest.get("sources", []),
        "motion_tokens": manifest["motion_tokens"],
        "tokenizer": _tokenizer_summary(llm_dir, manifest),
        "llm": llm,
        "vqvae": vq,
        "files": [{"path": rel, "bytes": size} for rel, size in _files(folder)],
    }


def _params(weights: dict[str, Any] | None) -> str:
    if not weights:
        return "unknown (no safetensors file)"
    n = weights["parameters"]
    count = f"{n / 1e9:.3f} B" if n >= 1e8 else f"{n / 1e6:.2f} M"
    return f"{count} parameters in {weights['tensors']} tensors ({', '.join(weights['dtypes'])})"


def format_report(report: dict[str, Any]) -> str:
    """`folder_report` as text for people."""
    m, llm, tok, vq = report["manifest"], report["llm"], report["tokenizer"], report["vqvae"]
    lines = [f"Model folder {report['dir']}",
             f"  name        {m['name']}",
             f"  stage       {m['stage']} ({STAGE_USE.get(m['stage'], '?')})",
             f"  dataset     {m['dataset']}: {m['num_joints']} joints, {m['feature_size']} features, {m['fps']:g} fps",
             f"  fixture     {'yes: untrained, its motion is noise' if m['fixture'] else 'no'}",
             f"  created by  {m.get('created_by') or '?'}" + (f" at {m['created_at']}" if m.get("created_at") else "")]
    for src in report["sources"]:
        lines.append(f"  source      {src.get('role', '?')}: {src.get('file', '?')} "
                     f"({_size(src.get('bytes', 0))}, sha256 {str(src.get('sha256', ''))[:12]}...)")
    lines += ["LLM (llm/)",
              f"  model       {llm['architecture']} ({llm['model_type']}), {llm['num_hidden_layers']} layers, "
              f"hidden {llm['hidden_size']}, MLP {llm['intermediate_size']}",
              f"  attention   {llm['num_attention_heads']} heads / {llm['num_key_value_heads']} KV heads, "
              f"head_dim {llm['head_dim']}, sliding window {llm['sliding_window']}",
              f"  embedding   {llm['vocab_size']} rows, {'tied' if llm['tie_word_embeddings'] else 'untied'} "
              f"output head; saved as {llm['dtype']}",
              f"  weights     {_params(llm['weights'])}"]
    if tok.get("file"):
        mt = report["motion_tokens"]
        lines += ["Tokenizer (llm/tokenizer.json)",
                  f"  vocabulary  {tok['vocab_size']} tokens",
                  f"  motion ids  <Motion> {tok['motion_start_id']}, </Motion> {tok['motion_end_id']}, "
                  f"<Motion_0..{tok['motion_code_count'] - 1}> {tok['motion_first_id']}..{tok['motion_last_id']}"
                  + ("" if tok["matches_manifest"] else
                     f"  MISMATCH: the manifest says {mt['start_id']}, {mt['end_id']}, {mt['first_id']}..")]
    else:
        lines += ["Tokenizer", f"  {tok['note']}"]
    lines += [f"VQ-VAE ({vq['file']})",
              f"  shape       {vq['feature_size']} features, width {vq['width']}, code dim {vq['code_dim']}, "
              f"{vq['num_codes']} codes, depth {vq['depth']}, dilation growth {vq['dilation_growth']}, "
              f"time x{vq['stride_t'] ** vq['down_t']}",
              f"  weights     {_params(vq['weights'])}",
              "Files"]
    lines += [f"  {f['path']:<34} {_size(f['bytes']):>10}" for f in report["files"]]
    total = sum(f["bytes"] for f in report["files"])
    lines.append(f"  {'total':<34} {_size(total):>10}")
    return "\n".join(lines)


def cmd_inspect(args: argparse.Namespace) -> int:
    report = folder_report(args.dir)
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        print(format_report(report))
    return 0


# ---------------------------------------------------------------- the parser

EXAMPLES = {
    "make-fixture": "example:\n  irg-motion make-fixture out/fixture-model --seed 0",
    "serve": ("examples:\n  irg-motion serve --stdio --model ~/models/irg-hml3d-stage3 --device cuda --precision nf4\n"
              "  irg-motion serve --listen 127.0.0.1:7700 --model ~/models/irg-hml3d-stage3\n"
              "  irg-motion serve --listen 0.0.0.0:7700 --token-file ~/.irg-token --model ~/models/irg-hml3d-stage3"),
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
    "caption": "example:\n  irg-motion caption --model MODEL --tokens walk.npz",
    "to-bvh": ("examples:\n  irg-motion to-bvh walk.npz --out walk.bvh\n"
               "  irg-motion to-bvh take_joints.npy --fps 30 --foot-lock --out take.bvh"),
}


def _positive(text: str) -> float:
    """argparse type: a positive, finite number."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not (value > 0 and np.isfinite(value)):
        raise argparse.ArgumentTypeError(f"must be a positive number, not {text}")
    return value


def _subparser(subs: Any, name: str, help_text: str, parents: list[argparse.ArgumentParser],
               run: Callable[[argparse.Namespace], int]) -> argparse.ArgumentParser:
    parser = subs.add_parser(name, help=help_text, description=help_text, parents=parents,
                             epilog=EXAMPLES.get(name), formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.set_defaults(run=run)
    return parser


def _common_parents() -> dict[str, argparse.ArgumentParser]:
    verbose = argparse.ArgumentParser(add_help=False)
    verbose.add_argument("-v", "--verbose", action="store_true", help="log progress details to stderr")
    model = argparse.ArgumentParser(add_help=False)
    model.add_argument("--model", required=True, metavar="DIR", help="model folder (docs/model-folder.md)")
    model.add_argument("--device", default="auto", metavar="D", help=DEVICE_HELP)
    model.add_argument("--precision", default="auto", choices=PRECISIONS,
                       help="weight precision (default: auto, chosen from the free memory)")
    motion = argparse.ArgumentParser(add_help=False)
    given = motion.add_mutually_exclusive_group(required=True)
    given.add_argument("--tokens", metavar="FILE_OR_LIST",
                       help="motion tokens: a .npy/.npz/.json/.txt file or a list such as '12,7,99'")
    given.add_argument("--joints", metavar="FILE.npy",
                       help="joint positions (frames, joints, 3) in metres, encoded with the VQ-VAE")
    motion.add_argument("--fps", type=_positive, default=None, metavar="FPS",
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


def _add_foot_lock(sub: argparse.ArgumentParser) -> None:
    sub.add_argument("--foot-lock", action=argparse.BooleanOptionalAction, default=True,
                     help="BVH output: pin feet during ground contacts (two-bone leg IK) before solving "
                          "(default on; --no-foot-lock keeps the positions exactly)")


def build_parser() -> argparse.ArgumentParser:
    """The `irg-motion` argument parser with every subcommand."""
    parser = argparse.ArgumentParser(
        prog="irg-motion", formatter_class=argparse.RawDescriptionHelpFormatter,
        description="IRG-MotionLLM from the command line: text to motion, critique, refinement, "
                    "encoding and decoding, and the backend server the Blender add-on starts.",
        epilog="Run `irg-motion COMMAND --help` for a command's options and examples; docs/cli.md has them all.")
    subs = parser.add_subparsers(dest="command", metavar="COMMAND")
    p = _common_parents()
    v, model, motion, sampling = p["verbose"], p["model"], p["motion"], p["sampling"]

    sub = _subparser(subs, "make-fixture", "write a tiny untrained model folder for tests and demos", [v],
                     cmd_make_fixture)
    sub.add_argument("dir", metavar="DIR", help="folder to create (an earlier fixture there is replaced)")
    sub.add_argument("--seed", type=int, default=0, metavar="N",
                     help="random seed: the same seed gives identical files")
    sub.add_argument("--dataset", choices=("HumanML3D", "KIT-ML"), default="HumanML3D")
    sub.add_argument("--stage", type=int, choices=(1, 2, 3), default=2, help="training stage to imitate")

    sub = _subparser(subs, "serve", "run the backend: JSON lines on stdin/stdout or TCP (docs/protocol.md)",
                     [v, model], cmd_serve)
    transport = sub.add_mutually_exclusive_group()
    transport.add_argument("--stdio", action="store_true", help="talk over stdin/stdout (the add-on's own process)")
    transport.add_argument("--listen", metavar="HOST:PORT", default=None,
                           help="serve clients over TCP; HOST defaults to 127.0.0.1, port 0 picks a free one. "
                                "Any non-loopback HOST needs a token")
    sub.add_argument("--token-file", metavar="FILE", default=None,
                     help="with --listen: every client must send this token first (default: $IRG_SERVER_TOKEN)")
    sub.add_argument("--allow-remote-shutdown", action="store_true",
                     help="with --listen: a client's shutdown request stops the server (default: it ends only "
                          "that client's session)")
    sub.add_argument("--max-clients", type=int, default=None, metavar="N",
                     help="with --listen: most simultaneous connections (default 16)")

    sub = _subparser(subs, "generate", "text to motion; writes an .npz", [v, model, sampling], cmd_generate)
    sub.add_argument("prompt", metavar="PROMPT", help="what the motion should show")
    sub.add_argument("--out", required=True, metavar="FILE.npz", help="output file (written atomically)")
    sub.add_argument("--bvh", metavar="FILE.bvh", default=None,
                     help="also write the motion as a BVH on the default SMPL-proportioned skeleton")
    _add_foot_lock(sub)
    sub.add_argument("--mode", choices=("interleaved", "direct", "stage1_loop"), default="interleaved",
                     help="interleaved reasoning trace (default), direct (one motion), or stage1_loop")
    sub.add_argument("--rounds", type=int, default=5, metavar="N", help="most motions (refinement rounds), default 5")
    sub.add_argument("--max-motion-tokens", type=int, default=49, metavar="N",
                     help="longest motion in tokens of 0.2 s (default 49 = 9.8 s, at most 50)")
    sub.add_argument("--version", type=int, default=None, metavar="K",
                     help="which round to write (default: the last, the model's answer)")

    sub = _subparser(subs, "inspect", "show what a model folder holds (fast, no torch)", [v], cmd_inspect)
    sub.add_argument("dir", metavar="DIR", help="model folder")
    sub.add_argument("--json", action="store_true", help="machine-readable output")

    sub = _subparser(subs, "decode", "motion tokens to joints with the VQ-VAE; writes an .npz", [v], cmd_decode)
    sub.add_argument("--model", required=True, metavar="DIR", help="model folder")
    sub.add_argument("--tokens", required=True, metavar="FILE_OR_LIST",
                     help="a .npy/.npz/.json/.txt file or a list such as '12,7,99'")
    sub.add_argument("--out", required=True, metavar="FILE.npz", help="output file")

    sub = _subparser(subs, "encode", "joint positions to motion tokens with the VQ-VAE", [v], cmd_encode)
    sub.add_argument("--model", required=True, metavar="DIR", help="model folder")
    sub.add_argument("--joints", required=True, metavar="FILE.npy",
                     help="joint positions (frames, joints, 3) in metres (.npy, or an .npz with 'joints')")
    sub.add_argument("--fps", type=_positive, default=None, help="frame rate of the joints (default: the model's, 20)")
    sub.add_argument("--axes", choices=("humanml3d", "blender"), default="humanml3d",
                     help="humanml3d (Y up, facing +Z; default) or blender (Z up, facing -Y)")
    sub.add_argument("--out", metavar="FILE", default=None,
                     help="write the tokens to .npy, .json or text (default: print them comma separated)")

    sub = _subparser(subs, "critique", "assess how well a motion matches a prompt", [v, model, motion, sampling],
                     cmd_critique)
    sub.add_argument("prompt", metavar="PROMPT", help="the goal text")
    sub.add_argument("--form", choices=("interleaved", "stage1"), default=None,
                     help="prompt form (default: interleaved, or stage1 for a stage-1 model)")

    sub = _subparser(subs, "refine", "refine a motion for a prompt; writes an .npz", [v, model, motion, sampling],
                     cmd_refine)
    sub.add_argument("prompt", metavar="PROMPT", help="the goal text")
    sub.add_argument("--out", required=True, metavar="FILE.npz", help="output file for the refined motion")
    sub.add_argument("--instruction", default=None, metavar="TEXT",
                     help="how to change the motion (default: the model decides)")
    sub.add_argument("--form", choices=("interleaved", "stage1"), default="interleaved")
    sub.add_argument("--max-motion-tokens", type=int, default=49, metavar="N", help="longest refined motion in tokens")

    _subparser(subs, "caption", "describe a motion in words", [v, model, motion, sampling], cmd_caption)
    sub = _subparser(subs, "to-bvh", "a motion (.npz or joints .npy) to a BVH file with solved rotations", [v],
                     cmd_to_bvh)
    sub.add_argument("motion", metavar="MOTION", help=".npz written by generate/refine/decode, or a .npy of "
                                                      "joints (frames, 22, 3) in metres")
    sub.add_argument("--out", required=True, metavar="FILE.bvh", help="output file (written atomically)")
    sub.add_argument("--fps", type=_positive, default=None, metavar="FPS",
                     help="frame rate (default: the .npz's, else 20)")
    sub.add_argument("--axes", choices=("humanml3d", "blender"), default="humanml3d",
                     help="axes of the joints: humanml3d (Y up, facing +Z; default) or blender (Z up, facing -Y)")
    _add_foot_lock(sub)
    sub.add_argument("--smooth", action="store_true",
                     help="Savitzky-Golay smoothing of the positions (window 11, order 5) before solving")
    _add_convert(subs, v)
    return parser


def _add_convert(subs: Any, verbose: argparse.ArgumentParser) -> None:
    from .convert import add_convert_arguments, run_convert

    sub = subs.add_parser("convert", parents=[verbose], formatter_class=argparse.RawDescriptionHelpFormatter,
                          help="released IRG-MotionLLM checkpoints to a model folder",
                          description="Convert the released IRG-MotionLLM pieces into one model folder "
                                      "(docs/model-setup.md).",
                          epilog="example:\n  irg-motion convert --checkpoint stage3.pth --base gemma-2-2b-it/ "
                                 "--vqvae vqvae.pth --mean mean.npy --std std.npy --out models/irg-stage3")
    add_convert_arguments(sub)
    sub.set_defaults(run=run_convert)


def main(argv: list[str] | None = None) -> int:
    """Run `irg-motion` with `argv` (default: sys.argv[1:]); return the exit status."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help(sys.stderr)
        return EXIT_USAGE
    if args.command != "serve":  # serve configures its own logging
        logging.basicConfig(stream=sys.stderr, level=logging.INFO if args.verbose else logging.WARNING,
                            format="%(levelname)s %(name)s: %(message)s")
    try:
        return args.run(args)
    except CliError as exc:
        print(f"irg-motion {args.command}: error: {exc}", file=sys.stderr)
        return exc.status
    except ModelFolderError as exc:
        print(f"irg-motion {args.command}: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print(f"irg-motion {args.command}: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
