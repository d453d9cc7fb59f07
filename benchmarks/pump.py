"""Main-thread cost of a streamed generation: how long each GenerateJob.pump() takes.

Blender's UI thread calls pump() every 0.05 s while tokens stream; everything it does
(draining events, keying the live preview, writing the finished version) blocks the
UI for that long. This script runs the product's path headless (bpy, the add-on, the
real backend subprocess with the tiny fixture model, direct mode, live preview on),
pumps like the UI timer does, times every pump() and prints a markdown table: all
pumps, then split by what the pump did (token and text events only, a preview
write, the motion event that starts the version's solve in a worker, the final
version write from the solved channels). The goal: no single pump over 10 ms.

Then the versions' thumbnails (jobs/thumbnails.py): every ThumbnailJob.pump() timed
while the strips of all the versions made above are rendered again by the worker
process, alone and in the same timer ticks as one more live generation (as in the UI,
where both timers run), split by what the pump did (the rig written to a temporary
.blend, a version's F-Curves sampled, the worker started, a report taken, waiting).

Two streams:
- live: the backend as fast as it goes. The warm fixture model streams 49 tokens
  in about 0.1 s, so most events arrive in one or two pumps (a stress case).
- paced: the events of one live generation, recorded, then handed to the job at
  --pace motion tokens per second (a real model's speed), through a stand-in client
  that releases each recorded event at its time; everything else is the product's.
Usage (the Blender environment's Python):
    .venv-bpy50/bin/python benchmarks/pump.py [--tokens 49] [--runs 3] [--fps 24] [--pace 20]
        [--backend-python .venv-backend/bin/python] [--model DIR]
Without --model a fixture model is built in a temporary folder (and deleted).
"""
from __future__ import annotations

import argparse
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))
os.environ.setdefault("BLENDER_USER_RESOURCES", tempfile.mkdtemp(prefix="irg-bench-user-"))

import bpy  # noqa: E402  (after the environment is set)
import numpy as np  # noqa: E402

import irg_blender_addon  # noqa: E402
from irg_blender_addon.backend import local as client
from irg_blender_addon.backend import registry
from irg_blender_addon.jobs import base as jobs
from irg_blender_addon.anim import actions
from irg_blender_addon.jobs import generate as generate_jobs
from irg_blender_addon.jobs import thumbnails
from irg_blender_addon.settings import get_settings
from irg_blender_addon.rig import armature as rig  # noqa: E402

TIMER = jobs.TIMER_INTERVAL
PROMPT = "a person walks forward and waves with the right hand"


def build_fixture(python: Path, folder: Path) -> Path:
    out = subprocess.run([str(python), "-m", "model_backend", "make-fixture", str(folder), "--seed", "0"],
                         capture_output=True, text=True, env=dict(os.environ, HF_HUB_OFFLINE="1"))
    if out.returncode != 0:
        sys.exit(f"make-fixture failed:\n{out.stderr[-3000:]}")
    return folder


class ReplayClient:
    """Recorded backend events released at a fixed motion-token rate (the paced stream)."""

    state = "ready"

    def __init__(self, events: list[dict], ready_info: dict, pace: float):
        self.ready_info = ready_info
        self._events = events
        self._pace = pace
        self._start = 0.0
        self._next = 0

    def ensure_started(self) -> None:
        pass

    def send(self, request: dict) -> str:
        self._start, self._next = time.monotonic(), 0
        return self._events[0]["id"]

    def poll(self, max_events: int = 100) -> list[dict]:
        """The recorded events whose time has come: event k after the motion tokens before it."""
        tokens_due = (time.monotonic() - self._start) * self._pace
        out = []
        while self._next < len(self._events) and len(out) < max_events:
            event = self._events[self._next]
            if event.get("tokens_before", 0) > tokens_due:
                break
            out.append(event)
            self._next += 1
        return out


def record(settings: dict) -> tuple[list[dict], dict]:
    """The events of one live generation (with preview), each marked with the motion tokens before it."""
    job = generate_jobs.start_generation(bpy.context, PROMPT, preview=True, **settings)
    events, seen = [], 0
    deadline = time.monotonic() + 600
    while True:
        for event in job.client.poll(1000):
            if event.get("id") == job.request_id:
                seen += len(event.get("tokens") or ()) if event.get("event") == "motion_tokens" else 0
                events.append({**event, "tokens_before": seen})
        if events and events[-1].get("event") in ("done", "error"):
            break
        if time.monotonic() > deadline:
            sys.exit("recording the generation took over 600 s")
        time.sleep(0.01)
    job.cancel()
    job.cancel()  # the job never saw its events: end it (the backend is restarted by the next run)
    return events, job.client.ready_info or {}


def timed_run(settings: dict, preview: bool, replay: ReplayClient | None = None,
              side: Callable[[], None] | None = None) -> list[tuple[float, str]]:
    """One generation pumped like the UI timer; (seconds, what the pump did) for every pump().
    `side` runs in every tick after the timed pump (another timer's work)."""
    if replay is None:
        job = generate_jobs.start_generation(bpy.context, PROMPT, preview=preview, **settings)
    else:
        job = generate_jobs.GenerateJob(replay, rig.find_target_armature(bpy.context).name, PROMPT,
                               get_settings(**settings), preview=preview)
        jobs.manager.start(job, timer=False)
    kinds: list[str] = []
    poll = job.client.poll

    def recording_poll(max_events: int = 100):
        events = poll(max_events)
        kinds.extend(e.get("event", "?") for e in events)
        return events
    job.client.poll = recording_poll
    samples = []
    try:
        running = True
        while running:
            kinds.clear()
            previews, versions, solving = job.previews_written, len(job.action_names), job.version_pending
            t0 = time.perf_counter()
            running = job.pump()
            dt = time.perf_counter() - t0
            if len(job.action_names) > versions:
                what = "final version write"
            elif job.version_pending and not solving:
                what = "motion (solve started)"
            elif job.previews_written > previews:
                what = "preview write"
            else:
                what = "events only" if kinds else "idle"
            samples.append((dt, what))
            if side is not None:
                side()
            time.sleep(TIMER)
    finally:
        job.client.poll = poll
    if job.state != "done":
        sys.exit(f"the generation did not finish: {job.status}")
    return samples


def row(stream: str, name: str, values: list[float]) -> str:
    if not values:
        return f"| {stream} | {name} | 0 | - | - | - | - |"
    ms = np.asarray(values) * 1000.0
    return (f"| {stream} | {name} | {len(ms)} | {ms.max():.2f} | {np.percentile(ms, 99):.2f} | {ms.mean():.2f} | "
            f"{np.median(ms):.2f} |")


THUMB_STEPS = ("rig write", "version samples", "worker start", "report", "waiting", "cached")


def timed_thumbnails(names: list[str], side: Callable[[], None] | None = None) -> list[tuple[float, str]]:
    """The strips of `names` made (force: rendered again) like the UI timer makes them:
    (seconds, what the pump did) for every ThumbnailJob.pump(); `side` runs between pumps."""
    job = thumbnails.ThumbnailJob(names, force=True)
    samples = []
    while job.running:
        t0 = time.perf_counter()
        job.pump()
        samples.append((time.perf_counter() - t0, job.last_step))
        if side is not None:
            side()
        time.sleep(TIMER)
    if job.state != "done" or job.errors:
        sys.exit(f"the thumbnails were not made: {job.errors}")
    return samples


def thumbnails_during_generation(settings: dict, preview: bool, names: list[str]):
    """A live generation and the strips of `names` pumped in the same timer ticks, as in the UI:
    (generation samples, thumbnail samples)."""
    job = thumbnails.ThumbnailJob(names, force=True)
    strips: list[tuple[float, str]] = []

    def side() -> None:
        if job.running:
            t0 = time.perf_counter()
            job.pump()
            strips.append((time.perf_counter() - t0, job.last_step))
    generation = timed_run(settings, preview, side=side)
    while job.running:
        side()
        time.sleep(TIMER)
    if job.errors:
        sys.exit(f"the thumbnails were not made: {job.errors}")
    return generation, strips


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tokens", type=int, default=49)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--fps", type=int, default=24)
    parser.add_argument("--backend-python", type=Path,
                        default=Path(os.environ.get("IRG_BACKEND_PYTHON", ROOT / ".venv-backend" / "bin" / "python")))
    parser.add_argument("--model", type=Path, default=None)
    parser.add_argument("--no-preview", action="store_true")
    parser.add_argument("--pace", type=float, default=20.0, help="motion tokens per second of the paced stream")
    args = parser.parse_args()

    temp = Path(tempfile.mkdtemp(prefix="irg-bench-"))
    try:
        model = args.model or build_fixture(args.backend_python, temp / "fixture")
        irg_blender_addon.register()
        bpy.ops.wm.read_homefile(use_empty=True)
        scene = bpy.context.scene
        scene.render.fps, scene.render.fps_base = args.fps, 1.0
        rig.create_default_rig(bpy.context)
        settings = dict(backend_python=str(args.backend_python), model_dir=str(model), device="cpu",
                        mode="direct", max_motion_tokens=args.tokens, temperature=0.0, seed=0)
        backend = registry.get_client(args.backend_python, model, "cpu", "auto")
        backend.wait_ready(600)
        preview = not args.no_preview
        timed_run(settings, preview)  # warm-up: first-call costs of the model and of Blender
        live = [s for _ in range(args.runs) for s in timed_run(settings, preview)]
        events, info = record(settings)
        replay = ReplayClient(events, info, args.pace)
        paced = [s for _ in range(args.runs) for s in timed_run(settings, preview, replay)]
        names = [a.name for a in actions.versions(rig.find_target_armature(bpy.context))]
        strips_alone = timed_thumbnails(names)
        during, strips_during = thumbnails_during_generation(settings, preview, names)
        irg_blender_addon.unregister()
    finally:
        shutil.rmtree(temp, ignore_errors=True)

    print(f"pump() durations, ms, per {args.runs} generations of {args.tokens} motion tokens "
          f"({4 * args.tokens} frames at 20 fps -> {args.fps} fps keys, default rig), direct mode, live preview "
          f"{'off' if args.no_preview else 'on'}, pumped every {TIMER * 1000:.0f} ms like the UI timer; "
          f"model: {(info.get('model') or {}).get('name', model)}; bpy {bpy.app.version_string}, "
          f"Python {platform.python_version()}, {platform.machine()}, {os.cpu_count()} CPUs, "
          f"load average {os.getloadavg()[0]:.1f}")
    print()
    print("| stream | pumps | count | max | p99 | mean | median |")
    print("|---|---|---|---|---|---|---|")
    for stream, samples in (("live", live), (f"paced, {args.pace:g} tokens/s", paced)):
        print(row(stream, "all", [dt for dt, _ in samples]))
        for what in ("idle", "events only", "preview write", "motion (solve started)", "final version write"):
            print(row(stream, what, [dt for dt, w in samples if w == what]))
    print()
    print(f"ThumbnailJob.pump() durations, ms: the strips of {len(names)} versions ({thumbnails.FRAMES} frames of "
          f"{thumbnails.WIDTH}x{thumbnails.HEIGHT} each), rendered by the worker process")
    print()
    print("| when | pumps | count | max | p99 | mean | median |")
    print("|---|---|---|---|---|---|---|")
    for when, samples in (("alone", strips_alone), ("during a live generation", strips_during)):
        print(row(when, "all", [dt for dt, _ in samples]))
        for what in THUMB_STEPS:
            print(row(when, what, [dt for dt, w in samples if w == what]))
    print(row("generation pumps in the same ticks", "all", [dt for dt, _ in during]))


if __name__ == "__main__":
    main()
