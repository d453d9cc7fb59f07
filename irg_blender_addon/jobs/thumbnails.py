"""Thumbnail strips of versions: made by a render worker process, shown with bpy.utils.previews.

A render takes about a second (a Workbench frame, plus the GPU start of a fresh
process), far over the 10 ms a pump may block Blender's UI. So nothing is rendered
here: `ThumbnailJob.pump()` does one small step at a time and a separate headless
Blender (render_worker.py) renders:

1. once per armature, its rig (the armature object and the meshes bound to it,
   without its Action) goes to a temporary .blend with bpy.data.libraries.write;
2. per version, its F-Curves are evaluated at the strip's frames and at a dozen
   frames of its path (for the camera), 50 curves a pump, into a small .npy: no keys
   are written out;
3. a thread starts the worker process with a JSON request (so the fork never blocks a
   pump) and reads its reports of finished strips; each report loads one PNG into the
   previews.

Strips are cached next to the .blend (`<file>_irg_thumbs/`, or Blender's temp
folder for an unsaved file), named for the version and a fingerprint of it, so
a missing cache only means missing pictures: the panel shows none and "Rebuild
Thumbnails" makes them again. `pack` keeps the PNGs inside the .blend as packed
images; `restore_packed` writes them back when the cache folder is gone.
"""
from __future__ import annotations

import hashlib
import json
import os
from queue import Empty, Queue
import re
import shutil
import subprocess
import sys
import tempfile
import threading
from pathlib import Path
from typing import Any

import bpy
import numpy as np

from ..anim import actions, compat

WORKER = Path(__file__).with_name("render_worker.py")
WIDTH, HEIGHT, FRAMES = 320, 240, 4
PATH_SAMPLES = 12            # frames sampled to frame the camera on the whole path
CURVES_PER_STEP = 50         # F-Curves evaluated per pump
PACK_MARK = "irg_thumbnail_of"  # custom property of a packed thumbnail image: the version's name
_previews = None             # bpy.utils.previews collection (made on first use)


# ---------------------------------------------------------------- where strips live

def cache_dir() -> Path:
    """`<blend>_irg_thumbs/` beside the saved .blend; Blender's temp folder for an unsaved file."""
    if bpy.data.filepath:
        path = Path(bpy.path.abspath(bpy.data.filepath))
        return path.with_name(path.stem + "_irg_thumbs")
    return Path(bpy.app.tempdir or tempfile.gettempdir()) / "irg_thumbs"


def sheet_path(name: str) -> Path:
    """Where a batch's contact sheet goes: `<blend>_<name>_contact_sheet.png` beside the .blend
    (in the thumbnail cache for an unsaved file)."""
    slug = re.sub(r"[^A-Za-z0-9_-]+", "_", name).strip("_") or "batch"
    if bpy.data.filepath:
        path = Path(bpy.path.abspath(bpy.data.filepath))
        return path.with_name(f"{path.stem}_{slug}_contact_sheet.png")
    return cache_dir() / f"{slug}_contact_sheet.png"


def fingerprint(action: bpy.types.Action) -> str:
    """Names the version's motion, not the Action: a renamed version keeps its strip."""
    info = actions.version_info(action)
    text = json.dumps([info.get("armature_id", ""), info.get("serial", 0), info.get("created", ""),
                       list(action.frame_range)] if info else [action.name, list(action.frame_range)])
    return hashlib.sha1(text.encode()).hexdigest()[:12]


def thumb_path(action: bpy.types.Action) -> Path:
    """The version's strip in the cache (it may not exist)."""
    slug = re.sub(r"[^A-Za-z0-9_-]+", "_", actions.version_info(action).get("slug", "") or action.name)[:40]
    return cache_dir() / f"{slug}-{fingerprint(action)}.png"


def has_thumbnail(action: bpy.types.Action) -> bool:
    return thumb_path(action).is_file()


def icon_id(action: bpy.types.Action) -> int:
    """The preview icon of the version's strip (0 when there is none yet)."""
    path = thumb_path(action)
    key = str(path)
    pcoll = _collection()
    if key not in pcoll:
        if not path.is_file():
            return 0
        pcoll.load(key, key, "IMAGE")
    return pcoll[key].icon_id


def _collection():
    global _previews
    if _previews is None:
        import bpy.utils.previews
        _previews = bpy.utils.previews.new()
    return _previews


def release_previews() -> None:
    """Free the preview collection (add-on unregister, or after a rebuild)."""
    global _previews
    if _previews is not None:
        import bpy.utils.previews
        bpy.utils.previews.remove(_previews)
        _previews = None


# ---------------------------------------------------------------- reading the scene in small steps

def bound_meshes(armature: bpy.types.Object) -> list[bpy.types.Object]:
    """Mesh objects deformed by the armature (an Armature modifier on it) or parented to it."""
    found = []
    for obj in bpy.data.objects:
        if obj.type != "MESH":
            continue
        uses = any(m.type == "ARMATURE" and m.object == armature for m in obj.modifiers)
        if uses or obj.parent == armature:
            found.append(obj)
    return found


def strip_frames(action: bpy.types.Action, count: int) -> list[float]:
    """`count` frames spread evenly over the Action's range, ends included."""
    start, end = action.frame_range
    return [float(start + (end - start) * k / max(1, count - 1)) for k in range(count)]


class ChannelSampler:
    """An Action's F-Curves evaluated at some frames, CURVES_PER_STEP curves per step()
    (a 22-bone version has 154 curves: about 1 ms a step)."""

    def __init__(self, action: bpy.types.Action, frames: list[float]):
        self.curves = compat.action_fcurves(action)
        self.frames = list(frames)
        self.values = np.empty((len(self.curves), len(self.frames)), dtype=np.float32)
        self.row = 0

    @property
    def done(self) -> bool:
        return self.row >= len(self.curves)

    @property
    def channels(self) -> list[list[Any]]:
        """[data_path, array index] of each row of `values`."""
        return [[c.data_path, c.array_index] for c in self.curves]

    def step(self) -> None:
        for row in range(self.row, min(self.row + CURVES_PER_STEP, len(self.curves))):
            evaluate = self.curves[row].evaluate
            self.values[row] = [evaluate(f) for f in self.frames]
        self.row = min(self.row + CURVES_PER_STEP, len(self.curves))


def write_rig(armature: bpy.types.Object, meshes: list[bpy.types.Object], path: Path) -> None:
    """The armature and its meshes to a .blend, without the Action it plays (the worker poses it)."""
    anim = armature.animation_data
    playing = anim.action if anim is not None else None
    if playing is not None:
        anim.action = None
    try:
        bpy.data.libraries.write(str(path), {armature, *meshes}, fake_user=True, compress=False)
    finally:
        if playing is not None:
            compat.assign_action(armature, playing)


def worker_command(request: Path) -> list[str]:
    """A headless Blender running the worker (or this Python, when bpy is a module)."""
    binary = bpy.app.binary_path
    if binary and "python" not in Path(binary).name.lower():
        return [binary, "-b", "--factory-startup", "--python", str(WORKER), "--", str(request)]
    return [sys.executable, str(WORKER), str(request)]


# ---------------------------------------------------------------- the job

class ThumbnailJob:
    """Makes the strips of some versions (and optionally a contact sheet); pump() never blocks.

    versions: Action names; each needs the armature it animates (its metadata's armature,
    or `armature`). force: render even when a cached strip exists. sheet: a contact sheet
    request ({"out", "title", "rows": [{"title", "status", "failed", "action"}]}) composed
    once the strips are made. State: "running", "done" or "error"; `made` lists the strips
    written, `errors` the versions that could not be rendered, and why."""

    def __init__(self, versions: list[str], *, armature: str | None = None, force: bool = False,
                 sheet: dict | None = None, frames: int = FRAMES):
        self.names = list(dict.fromkeys(versions))
        self.armature = armature
        self.force = force
        self.sheet = sheet
        self.frames = frames
        self.state = "running"
        self.made: list[str] = []
        self.errors: dict[str, str] = {}
        self.sheet_path: str | None = None
        self._scratch = Path(tempfile.mkdtemp(prefix="irg-thumbs-"))
        self._rigs: dict[str, str] = {}       # armature name -> rig file
        self._todo = list(self.names)
        self._items: list[dict[str, Any]] = []
        self._targets: dict[str, str] = {}    # key -> version name
        self._proc: subprocess.Popen | None = None
        self._started = False
        self._sampling: tuple[str, str, list[bpy.types.Object], Path, ChannelSampler] | None = None
        self._lines: Queue[str] = Queue()
        self.last_step = ""                   # what the last pump did (benchmarks/pump.py)

    @property
    def running(self) -> bool:
        return self.state == "running"

    def pump(self) -> bool:
        """One small step: prepare one version, or start the worker, or take one report. True while running."""
        if not self.running:
            return False
        self.last_step = "waiting"
        try:
            if self._sampling is not None:
                self._sample_step()
            elif self._todo:
                self._prepare(self._todo.pop(0))
            elif not self._started:
                self._start()
            else:
                self._take_report()
        except Exception as exc:  # never let a timer die silently
            self._end("error", f"{type(exc).__name__}: {exc}")
        return self.running

    def cancel(self) -> None:
        """Stop the worker and forget what it has not finished."""
        if self._proc is not None and self._proc.poll() is None:
            self._proc.kill()
        self._end("cancelled")

    # -- steps

    def _armature_of(self, action: bpy.types.Action) -> bpy.types.Object | None:
        name = self.armature or actions.version_info(action).get("armature", "")
        obj = bpy.data.objects.get(name)
        if obj is None or obj.type != "ARMATURE":
            rid = actions.version_info(action).get("armature_id")
            obj = next((o for o in bpy.data.objects if o.type == "ARMATURE" and rid and o.get(actions.RIG_ID) == rid),
                       None)
        return obj

    def _prepare(self, name: str) -> None:
        action = bpy.data.actions.get(name)
        if action is None:
            self.errors[name] = "the version no longer exists"
            return
        out = thumb_path(action)
        if out.is_file() and not self.force:
            self.last_step = "cached"
            return
        armature = self._armature_of(action)
        if armature is None:
            self.errors[name] = "the armature it animates is not in this file"
            return
        meshes = bound_meshes(armature)
        if armature.name not in self._rigs:
            rig_file = self._scratch / f"rig-{len(self._rigs)}.blend"
            write_rig(armature, meshes, rig_file)
            self.last_step = "rig write"
            self._rigs[armature.name] = str(rig_file)
            self._todo.insert(0, name)  # the samples in the next pump: one costly step per pump
            return
        sampler = ChannelSampler(action, strip_frames(action, self.frames) + strip_frames(action, PATH_SAMPLES))
        self._sampling = (name, armature.name, meshes, out, sampler)
        self._sample_step()

    def _sample_step(self) -> None:
        """Evaluate the next curves of the version being sampled; once all are, it is an item."""
        name, armature, meshes, out, sampler = self._sampling
        self.last_step = "version samples"
        if bpy.data.actions.get(name) is None:  # deleted meanwhile: its curves are gone with it
            self._sampling = None
            self.errors[name] = "the version no longer exists"
            return
        sampler.step()
        if not sampler.done:
            return
        self._sampling = None
        key = f"v{len(self._items)}"
        np.save(self._scratch / f"{key}.npy", sampler.values)
        out.parent.mkdir(parents=True, exist_ok=True)
        self._items.append({"key": key, "rig": self._rigs[armature], "armature": armature,
                            "meshes": [m.name for m in meshes], "frames": sampler.frames[:self.frames],
                            "path_frames": sampler.frames[self.frames:], "channels": sampler.channels,
                            "values": str(self._scratch / f"{key}.npy"), "out": str(out)})
        self._targets[key] = name

    def _sheet_request(self) -> dict | None:
        if self.sheet is None:
            return None
        rows = []
        for row in self.sheet["rows"]:
            action = bpy.data.actions.get(row.get("action") or "")
            rows.append({"title": row.get("title", ""), "status": row.get("status", ""),
                         "failed": bool(row.get("failed")), "strip": str(thumb_path(action)) if action else None})
        return {"out": self.sheet["out"], "title": self.sheet.get("title", ""), "frames": self.frames, "rows": rows}

    def _start(self) -> None:
        sheet = self._sheet_request()
        if not self._items and sheet is None:
            self._end("done")
            return
        if sheet is not None:
            Path(sheet["out"]).parent.mkdir(parents=True, exist_ok=True)
        request = self._scratch / "request.json"
        request.write_text(json.dumps({"width": WIDTH, "height": HEIGHT, "items": self._items, "sheet": sheet}),
                           encoding="utf-8")
        self._started = True
        threading.Thread(target=self._run_worker, args=(worker_command(request),), daemon=True,
                         name="irg-thumbs-worker").start()
        self.last_step = "worker start"

    def _run_worker(self, command: list[str]) -> None:
        """Thread: start the worker (a fork of Blender takes 5-20 ms: never in a pump) and queue its reports."""
        try:
            with open(self._scratch / "worker.log", "wb") as log:  # the child keeps its own handle
                self._proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=log,
                                              stdin=subprocess.DEVNULL, text=True, env=_worker_env())
            for line in self._proc.stdout:
                if line.startswith("{"):
                    self._lines.put(line)
        except OSError as exc:
            (self._scratch / "worker.log").write_text(f"cannot start {command[0]}: {exc}")
        self._lines.put("")  # end of output

    def _take_report(self) -> None:
        try:
            line = self._lines.get_nowait()
        except Empty:
            return
        if not line:
            code = self._proc.wait() if self._proc is not None else "none: it did not start"
            missing = [self._targets[i["key"]] for i in self._items if self._targets[i["key"]] not in self.made
                       and self._targets[i["key"]] not in self.errors]
            log = (self._scratch / "worker.log").read_text(errors="replace").strip().splitlines()[-3:]
            for name in missing:
                self.errors[name] = (f"the render worker ended (exit code {code}) before it: "
                                     + " | ".join(log))
            self._end("done" if not missing else "error")
            return
        report = json.loads(line)
        self.last_step = "report"
        if "done" in report:
            name = self._targets[report["done"]]
            self.made.append(name)
            action = bpy.data.actions.get(name)
            if action is not None and bpy.app.background is False:
                icon_id(action)  # loads the preview now, so the panel draws it at once
        elif "error" in report:
            self.errors[self._targets.get(report["error"], report["error"])] = report.get("message", "")
        elif "sheet" in report:
            self.sheet_path = report["sheet"]

    def _end(self, state: str, message: str = "") -> None:
        self.state = state
        if message:
            self.errors["(job)"] = message
        shutil.rmtree(self._scratch, ignore_errors=True)


def _worker_env() -> dict[str, str]:
    env = dict(os.environ)
    env.setdefault("OMP_NUM_THREADS", "1")
    return env


# ---------------------------------------------------------------- packing

def pack(versions: list[bpy.types.Action]) -> int:
    """Keep the versions' cached strips inside the .blend as packed images; how many were packed."""
    count = 0
    for action in versions:
        path = thumb_path(action)
        if not path.is_file():
            continue
        name = f"IRG thumbnail {action.name}"
        old = bpy.data.images.get(name)
        if old is not None:
            bpy.data.images.remove(old)
        image = bpy.data.images.load(str(path), check_existing=False)
        image.name = name
        image.pack()
        image[PACK_MARK] = action.name
        image.use_fake_user = True
        count += 1
    return count


def restore_packed() -> int:
    """Write packed strips back into the cache where their files are missing; how many were written."""
    count = 0
    for image in bpy.data.images:
        action = bpy.data.actions.get(image.get(PACK_MARK, ""))
        if action is None or image.packed_file is None:
            continue
        path = thumb_path(action)
        if not path.is_file():
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(image.packed_file.data)
            count += 1
    return count


# ---------------------------------------------------------------- the queue the UI feeds

TIMER_INTERVAL = 0.05


class ThumbnailQueue:
    """Versions waiting for strips: one ThumbnailJob at a time, pumped by its own UI timer
    (scripts and tests in background mode, where timers never run, call pump())."""

    def __init__(self):
        self.pending: dict[str, bool] = {}   # version name -> render even when cached
        self.job: ThumbnailJob | None = None

    def request(self, names: list[str], *, force: bool = False) -> None:
        """Make strips for these versions after the job in progress (force: even when cached)."""
        for name in names:
            self.pending[name] = self.pending.get(name, False) or force
        if not bpy.app.background and not bpy.app.timers.is_registered(_tick):
            bpy.app.timers.register(_tick, first_interval=TIMER_INTERVAL)

    @property
    def busy(self) -> bool:
        return bool(self.pending) or (self.job is not None and self.job.running)

    def pump(self) -> bool:
        """One step of the job in progress, or start the next; True while there is work."""
        if self.job is not None and self.job.running:
            self.job.pump()
        elif self.pending:
            names, self.pending = self.pending, {}
            self.job = ThumbnailJob(list(names), force=any(names.values()))
        return self.busy

    def cancel(self) -> None:
        """Forget the waiting versions and stop the worker (file load, unregister)."""
        self.pending.clear()
        if self.job is not None and self.job.running:
            self.job.cancel()
        if bpy.app.timers.is_registered(_tick):
            bpy.app.timers.unregister(_tick)


queue = ThumbnailQueue()


def _tick() -> float | None:
    try:
        busy = queue.pump()
    except Exception:  # a timer that raises is dropped silently: stop visibly instead
        import traceback
        traceback.print_exc()
        queue.cancel()
        return None
    for window in getattr(bpy.context.window_manager, "windows", ()):
        for area in window.screen.areas:
            if area.type == "VIEW_3D":
                area.tag_redraw()
    return TIMER_INTERVAL if busy else None
