"""The backend process: one loaded Engine serving the protocol of docs/protocol.md.

Two layers, so another transport (a loopback socket, say) can reuse the first:

- `Dispatcher` takes request dicts and an `emit(event)` function. Control requests
  (`cancel`, `ping`, `info`, `shutdown`) are answered at once by the caller's thread;
  work requests are validated, acknowledged, queued and run one at a time by a worker
  thread, which adds the request id to every event the engine emits. Every accepted
  request ends with exactly one `done` or `error` event.
- `serve_stdio` wires stdin/stdout to a Dispatcher: it keeps the real stdout for
  protocol lines only (everything else, including C libraries writing to fd 1, goes
  to stderr), loads the model once, sends the `ready` handshake and reads lines
  until `shutdown` or end of input.
"""
from __future__ import annotations

import collections
import contextlib
import importlib.metadata
import logging
import math
import os
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, TextIO

import numpy as np

from ..wire import protocol
from ..llm.constraints import DEFAULT_MAX_MOTION_TOKENS, MAX_MOTION_TOKENS
from ..llm.engine import GENERATE_MODES, MAX_ROUNDS, MIN_MOTION_TOKENS, REFINE_FORMS, Engine, EngineError
from ..llm.loader import LoaderError
from ..wire.manifest import ModelFolderError
from ..wire.limits import (DEFAULT_CONTEXT, MAX_FPS, MAX_ID_CHARS, MAX_LINE_BYTES, MAX_MOTION_TOKENS_IN,
                           MAX_TEXT_CHARS, MIN_FPS, LimitError, check, check_joints_size)
from ..wire.protocol import CONTROL_TYPES, PROTOCOL_VERSION, WORK_TYPES, ProtocolError, error_event
from ..llm.vocab import NUM_MOTION_CODES

__all__ = ["Dispatcher", "LineWriter", "StartupError", "backend_version", "reserved_stdout", "load_engine",
           "ready_event", "serve_stdio", "to_wire", "validate_request", "WORK_TYPES"]

log = logging.getLogger("irg_motion.server")

Emit = Callable[[dict[str, Any]], None]

MAX_QUEUED = 16          # more waiting work than this is a client bug: answer `busy`
CLOSE_TIMEOUT_S = 30.0   # how long shutdown waits for a cancelled job to stop


def backend_version() -> str:
    """The installed irg-motion version ('dev' when running from a bare source tree)."""
    try:
        return importlib.metadata.version("irg-motion")
    except importlib.metadata.PackageNotFoundError:
        return "dev"


# ---------------------------------------------------------------- request validation

def _bad(request_type: str, message: str) -> ProtocolError:
    return ProtocolError("bad_request", f"{request_type}: {message} (see docs/protocol.md)")


class DuplicateId(ProtocolError):
    """A work request whose id an unfinished request uses: refused with `id` null and `refused_id`,
    so the running request's events (and its one terminal event) stay its own."""


def _is_int(value: Any) -> bool:
    return isinstance(value, (int, np.integer)) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    """A finite int or float (JSON may hold integers too big for a float: they are finite)."""
    if _is_int(value):
        return True
    return isinstance(value, (float, np.floating)) and math.isfinite(value)


class _Fields:
    """Typed access to one request's fields; every problem is a `bad_request` naming the field.

    A field that is absent or null is left out of the engine's arguments, so the
    engine's defaults (listed in docs/protocol.md) apply.
    """

    def __init__(self, request: dict[str, Any], num_joints: int, fps: float, context: int):
        self.request = request
        self.type = request["type"]
        self.used = {"type", "id"}
        self.args: dict[str, Any] = {}
        self.num_joints, self.fps, self.context = num_joints, fps, context

    def _get(self, name: str) -> Any:
        self.used.add(name)
        return self.request.get(name)

    def _check(self, name: str, ok: bool, what: str) -> None:
        if not ok:
            raise _bad(self.type, f'"{name}" must be {what}, got {self.request[name]!r:.60}')

    def text(self, name: str, *, required: bool = False) -> None:
        value = self._get(name)
        if value is None:
            if required:
                raise _bad(self.type, f'"{name}" is required (a non-empty string)')
            return
        self._check(name, isinstance(value, str) and bool(value.strip()), "a non-empty string")
        check(f'"{name}"', len(value), MAX_TEXT_CHARS, "MAX_TEXT_CHARS", " characters")
        self.args[name] = value

    def choice(self, name: str, options: tuple[str, ...]) -> None:
        value = self._get(name)
        if value is not None:
            self._check(name, value in options, f"one of {', '.join(options)}")
            self.args[name] = value

    def integer(self, name: str, lo: int, hi: int) -> None:
        value = self._get(name)
        if value is not None:
            self._check(name, _is_int(value) and lo <= value <= hi, f"an integer in {lo}..{hi}")
            self.args[name] = int(value)

    def number(self, name: str, lo: float, hi: float, *, lo_open: bool = False) -> None:
        value = self._get(name)
        if value is not None:
            inside = _is_number(value) and (value > lo if lo_open else value >= lo) and value <= hi
            self._check(name, inside, f"a number in {'(' if lo_open else '['}{lo}, {hi}]")
            self.args[name] = float(value)

    def flag(self, name: str) -> None:
        value = self._get(name)
        if value is not None:
            self._check(name, isinstance(value, bool), "true or false")
            self.args[name] = value

    def sampling(self) -> None:
        """temperature, top_p, seed and max_new_tokens: shared by every task the model writes."""
        self.number("temperature", 0.0, 10.0)
        self.number("top_p", 0.0, 1.0, lo_open=True)
        self.integer("seed", 0, 2**63 - 1)
        value = self._get("max_new_tokens")
        if value is not None:
            self._check("max_new_tokens", _is_int(value) and value >= 1, "a positive integer")
            check('"max_new_tokens"', int(value), self.context, "the model's context (max_position_embeddings)")
            self.args["max_new_tokens"] = int(value)

    def tokens(self, name: str = "tokens", *, required: bool = True, most: int | None = None) -> None:
        """Codebook indices as a JSON list of integers or an int32 array object (`most`: at most that many)."""
        value = self._get(name)
        if value is None and not required:
            return
        if isinstance(value, dict):
            array = protocol.decode_array(value)
            self._check(name, array.dtype.kind in "iu", "an int32 array")
            value = array.ravel().tolist()
        if isinstance(value, list):  # the bound first: 2 million tokens are not inspected one by one
            check(f'"{name}"', len(value), MAX_MOTION_TOKENS_IN, "MAX_MOTION_TOKENS_IN", " tokens")
        if not isinstance(value, list) or not value or not all(_is_int(t) for t in value):
            raise _bad(self.type, f'"{name}" must be a non-empty list of codebook indices (integers)')
        bad = [t for t in value if not 0 <= t < NUM_MOTION_CODES]
        if bad:
            raise _bad(self.type, f'"{name}" must be codebook indices 0..{NUM_MOTION_CODES - 1}, got {bad[0]}')
        if most is not None and len(value) > most:
            raise _bad(self.type, f'"{name}" holds {len(value)} tokens; at most {most} fit')
        self.args[name] = [int(t) for t in value]

    def joints(self) -> None:
        """`joints`: a float32 array object (T, num_joints, 3) in Blender axes, and its `fps`.

        The frame count, the fps and the frame count after resampling to the model's fps are
        checked against their bounds before anything is resampled or encoded.
        """
        num_joints = self.num_joints
        value = self._get("joints")
        if not isinstance(value, dict):
            raise _bad(self.type, f'"joints" must be an array object {{"dtype", "shape", "b64"}} of shape '
                                  f"(frames, {num_joints}, 3)")
        self.args["fps"] = self.fps
        self.number("fps", MIN_FPS, MAX_FPS)
        array = protocol.decode_array(value)
        if array.ndim != 3 or array.shape[1:] != (num_joints, 3) or array.shape[0] < 1:
            raise _bad(self.type, f'"joints" must have shape (frames, {num_joints}, 3) for this model, '
                                  f"got {tuple(array.shape)}")
        check_joints_size(array.shape[0], self.args["fps"], self.fps)
        if not np.isfinite(array).all():
            raise _bad(self.type, '"joints" holds NaN or infinite values')
        self.args["joints"] = array.astype(np.float32)

    def motion(self, allowed: tuple[str, ...] = ("tokens", "joints")) -> None:
        """Exactly one of the `allowed` motion forms: `tokens`, or `joints` with `fps`."""
        given = [name for name in ("tokens", "joints") if self.request.get(name) is not None]
        if len(given) != 1 or given[0] not in allowed:
            forms = {"tokens": '"tokens" (codebook indices)',
                     "joints": '"joints" (frames, joints, 3; Blender axes) with "fps"'}
            need = " or ".join(forms[a] for a in allowed)
            raise _bad(self.type, f"give the motion as {'exactly one of ' if len(allowed) > 1 else ''}{need}")
        if given[0] == "tokens":
            self.tokens()
        else:
            self.joints()

    def reject_unknown(self) -> None:
        extra = sorted(set(self.request) - self.used)
        if extra:
            known = ", ".join(sorted(self.used - {"type", "id"})) or "no fields"
            raise _bad(self.type, f"unknown field(s) {', '.join(extra)}; this request takes: {known}")


def _check_room(f: _Fields) -> None:
    """A generate's prefix_tokens must leave max_motion_tokens room for MIN_MOTION_TOKENS new codes."""
    prefix = f.args.get("prefix_tokens")
    limit = f.args.get("max_motion_tokens", DEFAULT_MAX_MOTION_TOKENS)
    if prefix and len(prefix) + MIN_MOTION_TOKENS > limit:
        raise _bad(f.type, f'"prefix_tokens" holds {len(prefix)} tokens but "max_motion_tokens" ({limit}) counts '
                           f"them too and must leave at least {MIN_MOTION_TOKENS} new ones: raise it (at most "
                           f"{MAX_MOTION_TOKENS}) or send a shorter prefix")


def validate_request(request: dict[str, Any], num_joints: int = 22, fps: float = 20.0,
                     context: int = DEFAULT_CONTEXT) -> dict[str, Any]:
    """Check one work request (type, fields, types, ranges, bounds) and return the engine's keyword arguments.

    The one validator every transport uses. `num_joints`, `fps` and `context` (the positions
    the model attends to) are the loaded model's. Every size is checked against its bound
    (model_backend.wire.limits, docs/protocol.md#bounds) before anything is allocated for it.
    Absent or null optional fields are left out (the engine's defaults apply). Raises
    ProtocolError (`bad_request`, `bad_array`, `unknown_type`) with a message naming the
    field and what it must be, or the bound and the value.
    """
    try:
        return _validate(_Fields(request, num_joints, fps, context))
    except LimitError as exc:
        raise _bad(request["type"], str(exc)) from None


def _validate(f: _Fields) -> dict[str, Any]:
    kind = f.type
    if kind not in WORK_TYPES:
        raise ProtocolError("unknown_type", f"unknown request type {kind!r}")
    if kind in ("generate", "critique", "refine"):
        f.text("prompt", required=True)
    if kind in ("critique", "refine", "caption"):
        f.motion()
        f.sampling()
    if kind in ("generate", "refine"):
        f.integer("max_motion_tokens", MIN_MOTION_TOKENS, MAX_MOTION_TOKENS)
        f.flag("preview")
    if kind == "generate":
        f.choice("mode", GENERATE_MODES)
        f.integer("max_rounds", 1, MAX_ROUNDS)
        f.sampling()
        f.tokens("prefix_tokens", required=False, most=MAX_MOTION_TOKENS - MIN_MOTION_TOKENS)
        _check_room(f)
    elif kind in ("critique", "refine"):
        f.choice("form", REFINE_FORMS)
        if kind == "refine":
            f.text("instruction")
    elif kind == "encode":
        f.motion(allowed=("joints",))
    elif kind == "decode":
        f.motion(allowed=("tokens",))
    f.reject_unknown()
    return f.args


# ---------------------------------------------------------------- engine calls

def _motion_tokens(engine: Engine, args: dict[str, Any]) -> dict[str, Any]:
    """The arguments with a `joints` motion replaced by its codebook indices (the tasks take tokens)."""
    if "joints" in args:
        args["tokens"] = engine.encode_tokens(args.pop("joints"), args.pop("fps"))
    return args


def _run_engine(engine: Engine, kind: str, args: dict[str, Any], emit: Emit, cancel: threading.Event) -> None:
    """Call the engine method for one validated work request."""
    if kind == "generate":
        engine.generate(args.pop("prompt"), **args, emit=emit, cancel=cancel)
    elif kind == "encode":
        engine.encode(args["joints"], args["fps"], emit=emit, cancel=cancel)
    elif kind == "decode":
        engine.decode(args["tokens"], emit=emit, cancel=cancel)
    elif kind == "critique":
        args = _motion_tokens(engine, args)
        engine.critique(args.pop("prompt"), args.pop("tokens"), **args, emit=emit, cancel=cancel)
    elif kind == "refine":
        args = _motion_tokens(engine, args)
        engine.refine(args.pop("prompt"), args.pop("tokens"), **args, emit=emit, cancel=cancel)
    elif kind == "caption":
        args = _motion_tokens(engine, args)
        engine.caption(args.pop("tokens"), **args, emit=emit, cancel=cancel)
    else:  # validate_request only lets WORK_TYPES through
        raise AssertionError(kind)


def to_wire(value: Any) -> Any:
    """An event value made JSON-safe: numpy arrays as array objects, numpy scalars as Python numbers."""
    if isinstance(value, np.ndarray):
        return protocol.encode_array(value)
    if isinstance(value, dict):
        return {k: to_wire(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [to_wire(v) for v in value]
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, Path):
        return str(value)
    return value


# ---------------------------------------------------------------- the dispatcher

@dataclass
class Job:
    """One accepted work request."""

    id: Any
    type: str
    args: dict[str, Any]
    cancel: threading.Event = field(default_factory=threading.Event)
    accepted: float = field(default_factory=time.monotonic)
    ended: bool = False  # its done/error went out: the id is free again


def check_work_request(engine: Any, request: dict[str, Any]) -> dict[str, Any]:
    """A work request's engine arguments, checked before anything is queued: the one validator of every
    transport (stdio and HTTP). Its `id` must be given; fields and bounds are `validate_request`'s, then
    the engine's token counts. Raises ProtocolError."""
    kind, rid = request.get("type"), request.get("id")
    if rid is None:
        raise ProtocolError("bad_request", f'{kind}: "id" is required (a string the events will carry)')
    model = engine.info.get("model", {})
    args = validate_request(request, int(model.get("num_joints") or 22), float(model.get("fps") or 20.0),
                            int(getattr(engine, "context_length", DEFAULT_CONTEXT)))
    try:
        engine.check_request(args)  # token counts, before anything is queued
    except EngineError as exc:
        raise ProtocolError(exc.code, f"{kind}: {exc.message}") from None
    return args


def cancelled_done(job: Job) -> dict[str, Any]:
    return {"event": "done", "id": job.id, "motions": 0, "stop_reason": "cancelled", "tokens_generated": 0,
            "elapsed_s": round(time.monotonic() - job.accepted, 3), "warnings": []}


def run_job(engine: Any, job: Job, send: Emit, answer: Emit | None = None) -> None:
    """Run one accepted job on `engine`, its events (with the job's id) to `send`; whatever happens it ends
    with exactly one `done` or `error` (every transport runs its jobs here). When `send` raises
    EventWriteError the request ends with an `internal` error through `answer` (default: `send`)."""
    def emit(event: dict[str, Any]) -> None:
        if job.ended:
            log.warning("dropped a %s event of %r that came after its end", event.get("event"), job.id)
            return
        job.ended = event.get("event") in ("done", "error")
        try:
            send({**event, "id": job.id})
        except EventWriteError as exc:  # end this request with an error; the session goes on
            log.error("could not write a %s event of %r: %s", event.get("event"), job.id, exc)
            job.ended = True
            job.cancel.set()
            (answer or send)(error_event("internal", f"a {event.get('event')} event of this request could not be "
                                                 f"written ({exc}), so the request was stopped; this is a bug "
                                                 "in irg-motion, please report it", job.id))

    started = time.monotonic()
    log.info("%s %r started", job.type, job.id)
    try:
        _run_engine(engine, job.type, dict(job.args), emit, job.cancel)
    except (EngineError, ProtocolError) as exc:
        if not job.ended:
            emit(error_event(exc.code, exc.message))
    except Exception as exc:  # a bug must not take the whole backend down
        log.exception("%s %r failed", job.type, job.id)
        if not job.ended:
            emit(error_event("internal", f"{job.type} failed: {type(exc).__name__}: {exc}. This is a bug "
                                         "in irg-motion (the backend keeps serving; its log has the traceback)"))
    if not job.ended:
        if job.cancel.is_set():
            emit(cancelled_done(job))
        else:
            emit(error_event("internal", f"{job.type} ended without a done event; this is a bug in irg-motion"))
    log.info("%s %r finished in %.2f s", job.type, job.id, time.monotonic() - started)


class Dispatcher:
    """Requests in, events out, one work request at a time (transport-independent).

    `handle(request)` / `handle_line(line)` may be called from one reader thread;
    `emit` is called from that thread and from the worker, never at the same time
    (a lock serialises it). Call `start()` before the first request, `close()` at the end.
    """

    def __init__(self, engine: Engine, emit: Emit, *, max_queued: int = MAX_QUEUED):
        self.engine = engine
        self._emit = emit
        self._emit_lock = threading.Lock()
        self._lock = threading.Condition()
        self._queue: collections.deque[Job] = collections.deque()
        self._running: Job | None = None
        self._closing = False
        self._bye_sent = False
        self._max_queued = max_queued
        self.shutdown_requested = threading.Event()
        model = engine.info.get("model", {})
        self._num_joints = int(model.get("num_joints", 22))
        self._fps = float(model.get("fps", 20.0))
        self._context = int(getattr(engine, "context_length", DEFAULT_CONTEXT))
        self._worker = threading.Thread(target=self._work, name="irg-motion-worker", daemon=True)

    # -- output

    def send(self, event: dict[str, Any]) -> None:
        """Emit one event, numpy values made JSON-safe (thread-safe: one event at a time).

        Raises EventWriteError when this event cannot be written but the client is still there.
        """
        wire = to_wire(event)
        with self._emit_lock:
            self._emit(wire)

    def _answer(self, event: dict[str, Any]) -> None:
        """Send an answer that is not part of a work request's stream; one that cannot be
        written is replaced by an `error` (id null) saying so."""
        try:
            self.send(event)
        except EventWriteError as exc:
            log.error("could not write a %s event: %s", event.get("event"), exc)
            self.send(error_event("internal", f"a {event.get('event')} event could not be written ({exc}); "
                                              "this is a bug in irg-motion, please report it"))

    # -- input

    def start(self) -> None:
        """Start the worker thread."""
        self._worker.start()

    def handle_line(self, line: str | bytes) -> None:
        """Parse and handle one line; a line that is not a JSON object gets a `bad_json` error."""
        if not line.strip():
            return
        try:
            request = protocol.loads(line)
        except ProtocolError as exc:
            self._answer(error_event(exc.code, f"{exc.message}; send one JSON object per line (docs/protocol.md)"))
            return
        self.handle(request)

    def handle(self, request: dict[str, Any]) -> None:
        """Answer a control request at once, or validate, acknowledge and queue a work request."""
        rid = request.get("id")
        kind = request.get("type")
        try:
            if rid is not None and not (isinstance(rid, str) and len(rid) <= MAX_ID_CHARS or _is_int(rid)):
                rid = None
                raise ProtocolError("bad_request", f'"id" must be a string (at most MAX_ID_CHARS = {MAX_ID_CHARS} '
                                                   'characters) or an integer')
            if not isinstance(kind, str):
                raise ProtocolError("bad_request", 'every request needs a "type" (a string), e.g. '
                                                   '{"type": "generate", "id": "r1", "prompt": "..."}')
            if kind in CONTROL_TYPES:
                self._control(kind, rid, request)
            elif kind in WORK_TYPES:
                self._accept(kind, rid, request)
            else:
                raise ProtocolError("unknown_type", f"unknown request type {kind!r}; known types: "
                                                    f"{', '.join(WORK_TYPES + CONTROL_TYPES)}")
        except DuplicateId as exc:
            self._answer(error_event(exc.code, exc.message, None, refused_id=rid))
        except ProtocolError as exc:
            self._answer(error_event(exc.code, exc.message, rid))
        except Exception as exc:  # a bug must not end the session: this request gets an error, the next is read
            log.exception("a request could not be handled")
            self._answer(error_event("internal", f"the request could not be handled: {type(exc).__name__}: "
                                                 f"{exc}. This is a bug in irg-motion (the backend keeps serving)",
                                     rid))

    def line_too_long(self) -> None:
        """Answer a line longer than MAX_LINE_BYTES (it was skipped; the session goes on)."""
        self._answer(error_event("line_too_long", f"a line of more than MAX_LINE_BYTES = {MAX_LINE_BYTES} bytes "
                                                  "was skipped; send smaller requests (docs/protocol.md#bounds)"))

    def _control(self, kind: str, rid: Any, request: dict[str, Any]) -> None:
        if kind == "ping":
            self._answer({"event": "pong", "id": rid, "protocol_version": PROTOCOL_VERSION})
        elif kind == "info":
            self._answer({**ready_event(self.engine), "event": "info", "id": rid})
        elif kind == "cancel":
            target = request.get("target")
            if target is None:
                raise ProtocolError("bad_request", 'cancel: "target" (the id of the request to stop) is required')
            self.cancel(target)
        elif kind == "shutdown":
            self.shutdown_requested.set()

    def _accept(self, kind: str, rid: Any, request: dict[str, Any]) -> None:
        args = check_work_request(self.engine, request)
        with self._lock:
            if self._closing:
                raise ProtocolError("busy", f"{kind}: the backend is shutting down; start it again")
            if any(j.id == rid for j in self._jobs()):
                raise DuplicateId("bad_request", f"{kind}: id {rid!r} is already in use by an unfinished "
                                                 "request; give every request its own id (this refusal carries "
                                                 "the id as refused_id)")
            if len(self._queue) >= self._max_queued:
                raise ProtocolError("busy", f"{kind}: {len(self._queue)} requests are already waiting; "
                                            "wait for one to finish or cancel some")
            job = Job(rid, kind, args)
            ahead = len(self._jobs())
            # ack goes out before the worker can see the job, so it always precedes the job's events.
            self.send({"event": "ack", "id": rid, "type": kind, "queued": ahead})
            self._queue.append(job)
            self._lock.notify()

    def _jobs(self) -> list[Job]:
        """Unfinished jobs: the running one (until its end went out) and the queued ones."""
        running = [self._running] if self._running is not None and not self._running.ended else []
        return running + list(self._queue)

    def cancel(self, target: Any) -> bool:
        """Stop request `target`: signal it if running, drop it (answering `done`) if queued.

        Returns False when there is no such unfinished request (it may have just ended).
        """
        with self._lock:
            if self._running is not None and self._running.id == target and not self._running.ended:
                self._running.cancel.set()
                return True
            for job in self._queue:
                if job.id == target:
                    self._queue.remove(job)
                    job.cancel.set()
                    self._answer(cancelled_done(job))
                    return True
        log.info("cancel: no unfinished request %r (it may have ended already)", target)
        return False

    def close(self, timeout: float = CLOSE_TIMEOUT_S) -> None:
        """Cancel the running job, drop the queued ones, wait for the worker, then emit `bye` (once)."""
        with self._lock:
            self._closing = True
            dropped = list(self._queue)
            self._queue.clear()
            if self._running is not None:
                self._running.cancel.set()
            self._lock.notify_all()
        for job in dropped:
            self._answer(cancelled_done(job))
        if self._worker.is_alive():
            self._worker.join(timeout)
            if self._worker.is_alive():
                log.warning("the running request did not stop within %.0f s of shutdown; exiting anyway", timeout)
        if not self._bye_sent:
            self._bye_sent = True
            self._answer({"event": "bye", "id": None})

    # -- the worker

    def _work(self) -> None:
        while True:
            with self._lock:
                while not self._queue and not self._closing:
                    self._lock.wait()
                if not self._queue:
                    return
                job = self._running = self._queue.popleft()
            try:
                self._run(job)
            finally:
                with self._lock:
                    self._running = None

    def _run(self, job: Job) -> None:
        run_job(self.engine, job, self.send, self._answer)


# ---------------------------------------------------------------- startup and the stdio transport

class StartupError(RuntimeError):
    """The model could not be loaded; `code` is `model_missing` or `model_load_failed`."""

    def __init__(self, code: str, message: str):
        super().__init__(message)
        self.code = code
        self.message = message


def load_engine(model_dir: str | Path, device: str = "auto", precision: str = "auto", engine: str = "transformers",
                options: dict[str, Any] | None = None) -> Engine:
    """Load the engine once (`transformers`, or `vllm` with its `options`); StartupError with a code and a
    message naming the folder and the fix."""
    folder = Path(model_dir).expanduser().absolute()
    try:
        if engine == "vllm":
            from ..llm.vllm_engine import VllmEngine

            return VllmEngine(folder, device=device, precision=precision, **(options or {}))
        return Engine(folder, device=device, precision=precision)
    except ModelFolderError as exc:
        raise StartupError("model_missing", str(exc)) from exc
    except EngineError as exc:
        raise StartupError(exc.code if exc.code.startswith("model_") else "model_load_failed", exc.message) from exc
    except LoaderError as exc:  # device or precision that cannot be served: the message says what instead
        raise StartupError("model_load_failed", f"could not load the model folder {folder}: {exc}") from exc
    except Exception as exc:  # torch / transformers / bitsandbytes errors: say which folder and what next
        log.exception("loading %s failed", folder)
        raise StartupError("model_load_failed", (
            f"could not load the model folder {folder}: {type(exc).__name__}: {exc}. Check the device and "
            "precision settings, or convert the model again with `irg-motion convert`")) from exc


def ready_event(engine: Engine) -> dict[str, Any]:
    """The handshake: protocol and backend versions, what model is loaded and where."""
    info = engine.info
    return {"event": "ready", "protocol_version": PROTOCOL_VERSION, "backend_version": backend_version(),
            "model": info.get("model", {}), "device": info.get("device", {})}


@contextlib.contextmanager
def reserved_stdout() -> Iterator[TextIO]:
    """Reserve the real stdout for protocol lines while the block runs; yield a text stream on it.

    File descriptor 1 and `sys.stdout` point at stderr inside the block, so a stray
    print (from Python or from C code) can never corrupt the protocol stream.
    Both are restored afterwards.
    """
    sys.stdout.flush()
    saved_fd, saved_stdout = os.dup(1), sys.stdout
    out = os.fdopen(os.dup(1), "w", encoding="utf-8", newline="\n")
    os.dup2(2, 1)
    sys.stdout = sys.stderr
    try:
        yield out
    finally:
        try:
            out.close()
        except OSError:  # the reader went away; nothing left to flush to
            pass
        sys.stdout = saved_stdout
        os.dup2(saved_fd, 1)
        os.close(saved_fd)


class EventWriteError(RuntimeError):
    """One event could not be serialised or written, but the client is still there: the
    request it belongs to ends with an error, the session goes on."""


class LineWriter:
    """Writes one message per line to a stream, flushed per line (thread-safe).

    A message that cannot be serialised (NaN, an unknown type: a bug) or written raises
    EventWriteError; only a closed pipe means the client has gone (logged once, then
    every message is discarded).
    """

    def __init__(self, stream: TextIO):
        self._stream = stream
        self._lock = threading.Lock()
        self.broken = False

    def __call__(self, message: dict[str, Any]) -> None:
        try:
            line = protocol.dumps(message)
        except (TypeError, ValueError) as exc:
            raise EventWriteError(f"it cannot be serialised: {exc}") from None
        with self._lock:
            if self.broken:
                return
            try:
                self._stream.write(line + "\n")
                self._stream.flush()
            except (BrokenPipeError, ConnectionError) as exc:
                self._gone(exc)
            except ValueError as exc:
                if not self._stream.closed:
                    raise EventWriteError(str(exc)) from None
                self._gone(exc)
            except OSError as exc:
                raise EventWriteError(str(exc)) from None

    def _gone(self, exc: Exception) -> None:
        self.broken = True
        log.warning("the client stopped reading our output (%s); events are discarded", exc)


def configure_logging(level: int = logging.INFO) -> None:
    """Log to stderr with timestamps (stdout belongs to the protocol)."""
    logging.basicConfig(stream=sys.stderr, level=level,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")


def serve_stdio(model_dir: str | Path, device: str = "auto", precision: str = "auto",
                stdin: Iterable[bytes] | None = None, engine: str = "transformers",
                options: dict[str, Any] | None = None) -> int:
    """Serve the protocol on stdin/stdout until `shutdown` or end of input; return the exit status.

    0 after a clean shutdown, 2 when the model cannot be loaded (after one `error` event).
    """
    configure_logging()
    with reserved_stdout() as out:
        return _serve(LineWriter(out), stdin if stdin is not None else sys.stdin.buffer,
                      model_dir, device, precision, engine, options)


def _serve(writer: LineWriter, source: Iterable[bytes], model_dir: str | Path, device: str, precision: str,
           engine_name: str = "transformers", options: dict[str, Any] | None = None) -> int:
    log.info("irg-motion %s loading %s (engine %s, device %s, precision %s)", backend_version(), model_dir,
             engine_name, device, precision)
    try:
        engine = load_engine(model_dir, device, precision, engine_name, options)
    except StartupError as exc:
        log.error("%s", exc.message)
        writer(error_event(exc.code, exc.message))
        return 2
    writer(ready_event(engine))
    dispatcher = Dispatcher(engine, writer)
    dispatcher.start()
    try:
        for line in bounded_lines(source):
            if line is None:
                dispatcher.line_too_long()
            else:
                dispatcher.handle_line(line)
            if dispatcher.shutdown_requested.is_set():
                break
        else:
            log.info("end of input: shutting down")
    except KeyboardInterrupt:
        log.info("interrupted: shutting down")
    dispatcher.close()
    return 0


def bounded_lines(source: Iterable[bytes], limit: int = MAX_LINE_BYTES) -> Iterator[bytes | None]:
    """The lines of `source` (a binary stream, or any iterable of lines); None stands for a
    line longer than `limit` bytes, which is skipped without being kept in memory."""
    readline = getattr(source, "readline", None)
    if readline is None:
        yield from source
        return
    while line := readline(limit + 1):
        if len(line) <= limit or line.endswith(b"\n"):
            yield line
            continue
        while (rest := readline(1 << 20)) and not rest.endswith(b"\n"):
            pass
        yield None
