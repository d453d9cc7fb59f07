"""Batch bake: many prompts, one after another, as NLA strips on a named track of the armature.

- Prompt lists (plain Python): `parse_prompts(text, "txt"|"csv")`, `read_prompt_file(path)`.
  A .txt list has one prompt a line, optionally `prompt | seed | length`; a .csv has the
  columns prompt[,seed][,length] (a header row naming them is optional, quotes allow
  commas in a prompt). Blank lines and lines starting with # are skipped; length is in
  seconds (the longest the motion may be; one motion token is 0.2 s at 20 fps).
- `BatchJob`: pump()-driven like generate.GenerateJob, and runs one GenerateJob per item
  (composition): one item at a time on the local backend; on a server several at once
  (`parallel_limit`: 4 when it batches concurrent requests, or the batch_parallel
  setting), through one shared client (backend/shared.py). The list lives on the scene (`scene.irg_batch`,
  ui/batch.py, saved in the .blend): each item's status, error, Action and strip name
  are written the moment they change, so saving mid-batch loses nothing; "Bake
  unfinished" goes on from a saved file. A failed item is skipped with its error kept;
  "Retry failed" bakes only those.
- `layout_track`: rebuilds the named track from the baked items in list order, end to
  end with `gap` frames between them and the blends set. The armature's active Action is
  restored after each item (a new version becomes active when it is written), so the
  NLA plays.
"""
from __future__ import annotations

import csv
import io
import math
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable

import bpy

from .. import props
from ..anim import actions, compat
from ..backend import registry
from ..backend.base import BackendError
from ..backend.shared import SharedClient
from ..core import manifest, skeleton
from ..rig import armature as rig
from ..settings import get_settings
from . import thumbnails
from .base import manager
from .generate import GenerateJob
from .run import OPTION_NAMES, GenerationError, pump_until_done, resolve_armature

DEFAULT_TRACK = "IRG Batch"
STATUSES = ("PENDING", "RUNNING", "DONE", "FAILED", "CANCELLED")
SCOPES = ("ALL", "UNFINISHED", "FAILED")
SEED_MAX = 2**31 - 1                 # seeds are stored in an IntProperty
MIN_TOKENS, MAX_TOKENS = 2, 50       # docs/protocol.md: max_motion_tokens 2..50
DEFAULT_FPS = 20.0                   # HumanML3D; the model folder's manifest says when it differs
COLUMNS = ("prompt", "seed", "length")
AUTO_PARALLEL = 4                    # prompts in flight on a server that batches, when not set


class BatchError(RuntimeError):
    """The batch as a whole stopped (not one item); the message names the problem and the fix."""


# -- prompt lists ------------------------------------------------------------------------------

@dataclass(frozen=True)
class BatchPrompt:
    """One line of a batch: the prompt, and optionally its seed and length (seconds)."""

    prompt: str
    seed: int | None = None
    length: float | None = None
    line: int = 0


def _seed(text: str, where: str) -> int | None:
    text = text.strip()
    if not text:
        return None
    try:
        value = int(text)
    except ValueError:
        value = -1
    if not 0 <= value <= SEED_MAX:
        raise ValueError(f"{where}: the seed {text!r} must be a whole number 0..{SEED_MAX}, or empty for the default.")
    return value


def _length(text: str, where: str) -> float | None:
    text = text.strip().removesuffix("s").strip()
    if not text:
        return None
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not math.isfinite(value) or value <= 0:
        raise ValueError(f"{where}: the length {text!r} must be a number of seconds above 0, or empty for the default.")
    return value


def _entry(fields: list[str], where: str, line: int) -> BatchPrompt:
    if len(fields) > len(COLUMNS):
        raise ValueError(f"{where} has {len(fields)} fields; expected prompt, then optionally seed and length.")
    fields = fields + [""] * (len(COLUMNS) - len(fields))
    prompt = " ".join(fields[0].split())
    if not prompt:
        raise ValueError(f"{where}: the prompt is empty.")
    return BatchPrompt(prompt, _seed(fields[1], where), _length(fields[2], where), line)


def _csv_rows(text: str, source: str) -> list[BatchPrompt]:
    out: list[BatchPrompt] = []
    order: list[int] | None = None
    reader = csv.reader(io.StringIO(text))
    for row in reader:
        line = reader.line_num
        if not any(cell.strip() for cell in row) or row[0].lstrip().startswith("#"):
            continue
        names = [cell.strip().lower() for cell in row]
        if order is None and not out and "prompt" in names:  # a header row names the columns
            unknown = [n for n in names if n and n not in COLUMNS]
            if unknown:
                raise ValueError(f"{source} line {line}: unknown column {unknown[0]!r}; the columns are "
                                 f"{', '.join(COLUMNS)}.")
            order = [COLUMNS.index(n) if n else -1 for n in names]
            continue
        if order is not None:
            cells = [""] * len(COLUMNS)
            for index, cell in zip(order, row):
                if index >= 0:
                    cells[index] = cell
            row = cells
        out.append(_entry(list(row), f"{source} line {line}", line))
    return out


def _txt_rows(text: str, source: str) -> list[BatchPrompt]:
    out = []
    for line, raw in enumerate(text.splitlines(), 1):
        stripped = raw.strip()
        if stripped and not stripped.startswith("#"):
            out.append(_entry(stripped.split("|"), f"{source} line {line}", line))
    return out


def parse_prompts(text: str, fmt: str = "txt", *, source: str = "the list") -> list[BatchPrompt]:
    """The prompts of a batch list (see the module docstring); ValueError naming the line otherwise."""
    if fmt not in ("txt", "csv"):
        raise ValueError(f"unknown prompt list format {fmt!r}: use 'txt' or 'csv'")
    found = (_csv_rows if fmt == "csv" else _txt_rows)(text, source)
    if not found:
        raise ValueError(f"{source} holds no prompts: one prompt a line (lines starting with # are skipped).")
    return found


def read_prompt_file(path: str | Path) -> list[BatchPrompt]:
    """The prompts of a .txt or .csv file (format from the suffix; anything else is read as .txt)."""
    path = Path(path).expanduser()
    try:
        text = path.read_text(encoding="utf-8-sig")
    except FileNotFoundError:
        raise ValueError(f"The prompt file {path} does not exist: choose a .txt or .csv file.") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ValueError(f"The prompt file {path} cannot be read ({exc}): save it as UTF-8 text.") from None
    return parse_prompts(text, "csv" if path.suffix.lower() == ".csv" else "txt", source=path.name)


def prompts_from_text(text: bpy.types.Text) -> list[BatchPrompt]:
    """The prompts of a Text datablock (a name ending in .csv is read as CSV)."""
    fmt = "csv" if text.name.lower().endswith(".csv") else "txt"
    return parse_prompts(text.as_string(), fmt, source=f"the text {text.name!r}")


def as_prompts(prompts) -> list[BatchPrompt]:
    """BatchPrompts from a path (.txt/.csv), a Text, or an iterable of prompts, (prompt, seed, length)
    tuples, dicts with those keys, or BatchPrompts. ValueError when one is malformed."""
    if isinstance(prompts, (str, Path)):
        return read_prompt_file(prompts)
    if isinstance(prompts, bpy.types.Text):
        return prompts_from_text(prompts)
    out = []
    for i, item in enumerate(prompts, 1):
        where = f"prompt {i}"
        if isinstance(item, BatchPrompt):
            fields = [item.prompt, item.seed, item.length]
        elif isinstance(item, str):
            fields = [item]
        elif isinstance(item, dict):
            unknown = set(item) - set(COLUMNS)
            if unknown:
                raise ValueError(f"{where}: unknown key(s) {', '.join(sorted(unknown))}; use {', '.join(COLUMNS)}.")
            fields = [item.get(name) for name in COLUMNS]
        else:
            fields = list(item)
        out.append(_entry(["" if f is None else str(f) for f in fields], where, i))
    if not out:
        raise ValueError("No prompts given: pass a list of prompts, a .txt/.csv path or a Text.")
    return out


def length_tokens(seconds: float, fps: float = DEFAULT_FPS) -> int:
    """Motion tokens for a length in seconds (at most that long); ValueError outside the model's range."""
    per_token = skeleton.FRAMES_PER_TOKEN / fps
    tokens = int(math.floor(seconds / per_token + 1e-4))  # lengths are float32 properties
    if tokens > MAX_TOKENS:
        raise ValueError(f"The length {seconds:g} s is longer than the longest motion the model makes "
                         f"({MAX_TOKENS * per_token:g} s = {MAX_TOKENS} motion tokens): shorten it, or split the "
                         "prompt into several.")
    if tokens < MIN_TOKENS:
        raise ValueError(f"The length {seconds:g} s is shorter than the shortest motion "
                         f"({MIN_TOKENS * per_token:g} s): make it longer, or leave it empty for the default.")
    return tokens


# -- the list on the scene ---------------------------------------------------------------------

def new_uid() -> str:
    return uuid.uuid4().hex[:16]


def fill_items(batch, prompts: Iterable[BatchPrompt], *, replace: bool = True) -> None:
    """Put prompts into the scene's batch list (replacing it, or appended), all pending."""
    if replace:
        batch.items.clear()
    for entry in prompts:
        item = batch.items.add()
        item.uid = new_uid()
        item.prompt = entry.prompt
        item.seed = -1 if entry.seed is None else entry.seed
        item.length = 0.0 if entry.length is None else entry.length
        item.status = "PENDING"
    batch.active_index = min(max(batch.active_index, 0), max(len(batch.items) - 1, 0))


def _ensure_uids(batch) -> None:
    seen = set()
    for item in batch.items:
        if not item.uid or item.uid in seen:
            item.uid = new_uid()
        seen.add(item.uid)


def selected(batch, scope: str) -> list:
    """The items a bake of this scope runs: ALL, UNFINISHED (not done) or FAILED."""
    if scope not in SCOPES:
        raise ValueError(f"scope must be one of {', '.join(SCOPES)}, not {scope!r}")
    return [it for it in batch.items
            if scope == "ALL" or (scope == "FAILED" and it.status == "FAILED")
            or (scope == "UNFINISHED" and it.status != "DONE")]


def current_job() -> "BatchJob | None":
    """The running (or last) batch job, if the job manager holds one."""
    job = manager.job
    return job if isinstance(job, BatchJob) else None


def running() -> bool:
    job = current_job()
    return job is not None and job.running


# -- NLA layout --------------------------------------------------------------------------------

def layout_track(armature: bpy.types.Object, entries: list[tuple[str, bpy.types.Action]], *,
                 track: str = DEFAULT_TRACK, frame_start: int = 1, gap: int = 0, blend_in: float = 0.0,
                 blend_out: float = 0.0) -> list[bpy.types.NlaStrip]:
    """Rebuild the track `track` of the armature with one strip per (name, action), in order.

    Strips are laid end to end from frame_start with `gap` frames between them; blend_in and
    blend_out are set on each (clamped so both fit in the strip). The first strip holds its
    first pose before it, every strip holds its last pose until the next one. Strips already
    on the track are replaced. ValueError when the armature's NLA is in tweak mode."""
    rig.check_armature(armature)
    if gap < 0 or blend_in < 0 or blend_out < 0:
        raise ValueError(f"gap, blend_in and blend_out must be 0 or more, not {gap}, {blend_in}, {blend_out}")
    anim = armature.animation_data or armature.animation_data_create()
    if anim.use_tweak_mode:
        raise ValueError(f"The NLA of {armature.name!r} is in tweak mode: leave it (Tab in the NLA editor), "
                         "then bake again.")
    nla = anim.nla_tracks.get(track)
    if nla is None:
        nla = anim.nla_tracks.new()
        nla.name = track
    for strip in list(nla.strips):
        nla.strips.remove(strip)
    strips, at = [], int(frame_start)
    for i, (name, action) in enumerate(entries):
        strip = nla.strips.new(name, at, action)
        _ensure_slot(strip, action, armature)
        length = strip.frame_end - strip.frame_start
        strip.blend_out = 0.0  # Blender clamps blend_in against the current blend_out
        strip.blend_in = min(float(blend_in), length)
        strip.blend_out = min(float(blend_out), length - strip.blend_in)
        strip.extrapolation = "HOLD" if i == 0 else "HOLD_FORWARD"
        strips.append(strip)
        at = math.ceil(strip.frame_end) + int(gap)
    anim.use_nla = True
    scene = bpy.context.scene
    if strips and scene.frame_end < strips[-1].frame_end:
        scene.frame_end = math.ceil(strips[-1].frame_end)
    return strips


def _ensure_slot(strip, action: bpy.types.Action, armature: bpy.types.Object) -> None:
    """Slotted Actions (4.4+): Blender picks the strip's slot itself; set one only if it did not.

    (Only the strip's slot: AnimData.action_slot is never touched here, see anim/compat.py.)"""
    if getattr(strip, "action_slot", "absent") is None:
        slot = compat.action_slot(action, armature, create=False)
        if slot is not None:
            strip.action_slot = slot


# -- the job -----------------------------------------------------------------------------------

class BatchJob:
    """Bake the items `uids` of scene `scene_name`'s batch list: one GenerateJob per item, up to
    `parallel_limit` of them at once.

    Duck-types the jobs of jobs/base.py for base.manager (start, pump, cancel, fail, running,
    state, status, error, progress, action_names, kind, edits, edit_message), so the
    panel's Cancel, the timer and its undo steps work as for a single generation."""

    kind = "batch"

    def __init__(self, scene_name: str, uids: list[str], overrides: dict[str, Any], armature_name: str | None,
                 fps: float = DEFAULT_FPS):
        self.scene_name = scene_name
        self.uids = list(uids)
        self.overrides = dict(overrides)
        self.armature_name = armature_name
        self.fps = fps
        self.state = "new"  # new, running, done, error, cancelled
        self.status = ""
        self.summary = ""  # the end in one or two sentences (status also lists each failure)
        self.error = ""
        self.progress = 0.0
        self.warnings: list[str] = []
        self.action_names: list[str] = []
        self.baked = 0
        self.failed: list[tuple[str, str]] = []  # (prompt, error) in order
        self.position = 0  # 1-based number of the last item started
        self.jobs: dict[str, GenerateJob] = {}  # uid -> the running job of that item, in start order
        self._shared: dict[int, SharedClient] = {}  # id(client) -> the client the jobs share
        self.previous_action: str | None = None
        self.edit_message = ""
        self._edits = 0  # scene changes of finished items and layouts (the UI pushes an undo step each)
        self._index = 0
        self._cancelling = False
        self._deaths = 0  # consecutive items that ended with the backend dead
        self.sheet: thumbnails.ThumbnailJob | None = None  # the contact sheet being made, after the last item
        self.sheet_path = ""

    # -- the job interface -------------------------------------------------------------------

    @property
    def running(self) -> bool:
        return self.state == "running"

    @property
    def total(self) -> int:
        return len(self.uids)

    @property
    def edits(self) -> int:
        """Scene changes so far: the items' versions and the strip layouts."""
        return self._edits + sum(getattr(job, "edits", 0) for job in self.jobs.values())

    @property
    def client(self):
        """The backend of the items being baked (None between items)."""
        return next((job.client for job in self.jobs.values()), None)

    @property
    def parallel_limit(self) -> int:
        """How many items may run at once: 1 on the local backend (it serves one request at a
        time) and until the batch has its armature; on a server the batch_parallel setting,
        else AUTO_PARALLEL when the server says it batches concurrent requests, else 1."""
        settings = get_settings(**self.overrides)
        if not settings.remote or self.armature_name is None:
            return 1
        if settings.batch_parallel:
            return settings.batch_parallel
        return AUTO_PARALLEL if getattr(self.client, "batching", False) else 1

    def start(self) -> None:
        """Remember the armature's active Action (restored after each item) and start the first item."""
        armature = self._armature()
        anim = armature.animation_data if armature is not None else None
        self.previous_action = anim.action.name if anim is not None and anim.action is not None else None
        self.state = "running"
        self._next()
        self._publish()

    def pump(self, max_events: int = 64) -> bool:
        """Apply the backend's events to the item being baked, move on when it ends. True while running."""
        if not self.running:
            return False
        if self.sheet is not None:
            running = self._pump_sheet()
            self._publish()
            return running
        for uid, job in list(self.jobs.items()):
            try:
                job.pump(max_events)
            except Exception as exc:  # one item's failure is not the batch's (fail() also stops its request)
                job.fail(f"Internal error while applying the backend's events: {exc}")
            if not job.running and self.running:
                self._end_item(uid)
        if self.running:
            if self._cancelling:
                if not self.jobs:
                    self._finish_cancelled()
            else:
                self._next()
        self._publish()
        return self.running

    def cancel(self) -> None:
        """Stop after the current item (a second call stops the backend at once); items not yet
        baked stay pending."""
        if not self.running:
            return
        self._cancelling = True
        for job in list(self.jobs.values()):
            job.cancel()
        if self.jobs:
            self.status = f"Cancelling at {self.position} of {self.total}..."
        else:
            self._finish_cancelled()
        self._publish()

    def fail(self, message: str) -> None:
        """End the batch with an error (the items being baked are marked failed)."""
        for uid, job in self._take_jobs():
            job.cancel()
            item = self._item(uid)
            if item is not None:
                item.status, item.error = "FAILED", message
        self._restore_active()
        self.error = message
        self._end("error", message)

    def abandon(self) -> None:
        """Stop at once without touching the file (another file is being loaded)."""
        for _uid, job in self._take_jobs():
            job.cancel()  # the backend stops the request; its late events are ignored
        self._end("cancelled", "Cancelled: another file was opened.")

    def _take_jobs(self) -> list[tuple[str, GenerateJob]]:
        taken, self.jobs = list(self.jobs.items()), {}
        for _uid, job in taken:
            self._release(job)
        return taken

    def _release(self, job: GenerateJob) -> None:
        for shared in self._shared.values():
            shared.release(job.client)

    # -- items -------------------------------------------------------------------------------

    def _batch(self):
        scene = bpy.data.scenes.get(self.scene_name)
        return getattr(scene, "irg_batch", None) if scene is not None else None

    def _item(self, uid: str):
        batch = self._batch()
        if batch is None:
            return None
        return next((it for it in batch.items if it.uid == uid), None)

    def _armature(self) -> bpy.types.Object | None:
        obj = bpy.data.objects.get(self.armature_name) if self.armature_name else None
        return obj if obj is not None and obj.type == "ARMATURE" else None

    def _next(self) -> None:
        """Start items up to the parallel limit; items that cannot start fail at once and the batch moves on."""
        while self.running and len(self.jobs) < self.parallel_limit and self._index < len(self.uids):
            uid = self.uids[self._index]
            self._index += 1
            self.position = self._index
            if self.armature_name is not None and self._armature() is None:
                self._end("error", f"The armature {self.armature_name!r} was deleted during the batch: select an "
                                   "armature and press Bake Unfinished.")
                return
            item = self._item(uid)
            if item is not None:  # None: removed from the list meanwhile
                self._start_item(item)
        if self.running and not self.jobs:
            self._finish()

    def _start_item(self, item) -> None:
        item.status, item.error, item.action, item.strip = "RUNNING", "", None, ""
        job = None
        try:
            settings = self._item_settings(item)
            backend = registry.client_for(settings)
            shared = self._shared.setdefault(id(backend), SharedClient(backend))
            job = GenerateJob(shared.view(), self.armature_name, item.prompt, settings)
            job.start()
        except (ValueError, BackendError) as exc:
            if job is not None:
                self._release(job)
            self._item_failed(item, str(exc))
            return
        self.jobs[item.uid] = job

    def _item_settings(self, item):
        if not item.prompt.strip():
            raise ValueError("The prompt is empty: type what the motion should show, or remove the item.")
        overrides = dict(self.overrides)
        if item.seed >= 0:
            overrides["seed"] = item.seed
        if item.length > 0:
            overrides["max_motion_tokens"] = length_tokens(item.length, self.fps)
        return get_settings(**overrides)

    def _end_item(self, uid: str) -> None:
        job = self.jobs.pop(uid)
        self._release(job)
        made = bpy.data.objects.get(job.armature_name) if job.armature_name and not self.armature_name else None
        if made is not None:  # the default rig the first item made (and kept): the batch's from now on
            self.armature_name = made.name
            if self._batch() is not None:
                self._batch().armature = made
        self.action_names.extend(job.action_names)
        self._edits += getattr(job, "edits", 0)
        self._restore_active()
        item = self._item(uid)
        if item is None:
            return
        if job.state == "done" and job.action_names:
            item.status, item.action = "DONE", bpy.data.actions.get(job.action_names[-1])
            self.baked += 1
            self._deaths = 0
            self._relayout()
        elif job.state == "cancelled":
            item.status, item.error = "CANCELLED", "Cancelled before it finished."
        else:
            self._item_failed(item, job.error or job.status)
            self._deaths = self._deaths + 1 if getattr(job.client, "state", "") == "dead" else 0
            if self._deaths >= 2:
                self._end("error", f"The backend stopped twice in a row, so the batch stopped. Fix the problem "
                                   f"below, then press Bake Unfinished.\n{item.error}")

    def _item_failed(self, item, message: str) -> None:
        item.status, item.error = "FAILED", message
        self.failed.append((item.prompt, message))

    def _restore_active(self) -> None:
        """Give the armature back its Action from before the batch (None: none), so the NLA plays."""
        armature = self._armature()
        if armature is None or armature.animation_data is None:
            return
        previous = bpy.data.actions.get(self.previous_action) if self.previous_action else None
        compat.assign_action(armature, previous)

    def _relayout(self) -> None:
        batch, armature = self._batch(), self._armature()
        if batch is None or armature is None:
            return
        done = [it for it in batch.items if it.status == "DONE" and it.action is not None]
        try:
            strips = layout_track(armature, [(actions.slugify(it.prompt), it.action) for it in done],
                                  track=batch.track or DEFAULT_TRACK, frame_start=batch.frame_start, gap=batch.gap,
                                  blend_in=batch.blend_in, blend_out=batch.blend_out)
        except (ValueError, RuntimeError) as exc:
            self._end("error", f"Could not lay the strips out: {exc}")
            return
        for item, strip in zip(done, strips):
            item.strip = strip.name
        self._edits += 1
        self.edit_message = f"IRG Motion: batch strips on {batch.track!r}"

    # -- ending ------------------------------------------------------------------------------

    def _finish(self) -> None:
        """The last item ended: make the contact sheet (when thumbnails are on), then end."""
        batch = self._batch()
        if batch is not None and get_settings(**self.overrides).thumbnails and batch.items:
            self.sheet_path = str(thumbnails.sheet_path(batch.track or DEFAULT_TRACK))
            rows = [{"title": it.prompt, "failed": it.status == "FAILED", "action": it.action.name if it.action else "",
                     "status": f"done: {it.action.name}" if it.status == "DONE" and it.action else
                     f"{it.status.lower()}: {it.error.splitlines()[0] if it.error else ''}"} for it in batch.items]
            self.sheet = thumbnails.ThumbnailJob([r["action"] for r in rows if r["action"]], sheet={
                "out": self.sheet_path, "title": f"{bpy.path.basename(bpy.data.filepath) or 'unsaved file'}: "
                                                 f"{len(rows)} prompts on {batch.track!r}", "rows": rows})
            self.status = "Making the contact sheet..."
            return
        self._end_batch()

    def _pump_sheet(self) -> bool:
        """One step of the contact sheet; the batch ends with it (a failed sheet is reported, not fatal)."""
        if self.sheet.pump():
            return True
        batch = self._batch()
        if self.sheet.sheet_path and batch is not None:
            batch.contact_sheet = self.sheet.sheet_path
            self._edits += 1
        elif not self.sheet.sheet_path:
            self.warnings.append(f"no contact sheet: {'; '.join(self.sheet.errors.values()) or 'unknown error'}")
            self.sheet_path = ""
        self.sheet = None
        self._end_batch()
        return self.running

    def _end_batch(self) -> None:
        batch = self._batch()
        where = f"the track {batch.track!r} of {self.armature_name}" if batch is not None and self.armature_name \
            else "the NLA"
        summary = f"Baked {self.baked} of {self.total} prompt(s) onto {where}."
        sheet = f" Contact sheet: {self.sheet_path}." if self.sheet_path else \
            "".join(f" Warning: {w}." for w in self.warnings)
        if not self.failed:
            self._end("done", summary + sheet)
            return
        summary += f" {len(self.failed)} failed (listed in the batch; Retry Failed bakes them again)"
        details = "; ".join(f"{prompt or '(empty)'!r}: {error.splitlines()[0]}" for prompt, error in self.failed)
        self._end("done", f"{summary}: {details}{sheet}", summary=summary + "." + sheet)

    def _finish_cancelled(self) -> None:
        self._end("cancelled", f"Cancelled at {self.position} of {self.total}: {self.baked} baked; the rest stay in "
                               "the list (Bake Unfinished goes on).")

    def _end(self, state: str, status: str, summary: str | None = None) -> None:
        for uid, job in self._take_jobs():  # items still in flight go back to the list, unbaked
            job.cancel()
            item = self._item(uid)
            if item is not None and item.status == "RUNNING":
                item.status = "PENDING"
        self.state, self.status = state, status
        self.summary = summary or status
        if state == "error":
            self.error = status
        self.progress = 1.0 if state == "done" else self.progress

    def _publish(self) -> None:
        """Mirror the batch onto the WindowManager's runtime properties for the panel."""
        if self.running:
            done = self._index - len(self.jobs)
            self.progress = min(1.0, (done + sum(job.progress for job in self.jobs.values())) / max(1, self.total))
            if self.jobs and not self._cancelling:
                uid, job = next(iter(self.jobs.items()))  # the earliest item still running
                item = self._item(uid)
                prompt = item.prompt if item is not None else ""
                more = f" (and {len(self.jobs) - 1} more in flight)" if len(self.jobs) > 1 else ""
                self.status = f"{self.position} of {self.total}: {prompt!r}: {job.status}{more}"
        rt = props.runtime()
        if rt is None:
            return
        rt.status = self.status
        level = {"running": "RUNNING", "error": "ERROR", "cancelled": "CANCELLED"}.get(self.state, "IDLE")
        if self.state == "done":
            level = "ERROR" if self.failed else "DONE"
        rt.level = level
        rt.running = self.running
        rt.progress = self.progress
        rt.job_kind = self.kind


# -- starting ----------------------------------------------------------------------------------

def model_fps(settings) -> float:
    """The model's motion fps (from the model folder's manifest; 20 for a server or when unknown)."""
    if settings.remote or not settings.model_dir:
        return DEFAULT_FPS
    try:
        return float(manifest.read_manifest(settings.model_dir, check_files=False).get("fps", DEFAULT_FPS))
    except (manifest.ModelFolderError, TypeError, ValueError):
        return DEFAULT_FPS


def start_batch(context, scope: str = "ALL", armature=None, **overrides) -> BatchJob:
    """Validate, then start baking the scene's batch list (the shared path of the operators and scripts).

    scope: ALL, UNFINISHED (every item not done) or FAILED. armature: the batch's armature, else
    the target armature, else a default rig made when the first motion arrives. overrides: Settings
    fields (as settings.get_settings). Raises ValueError (empty list, nothing to bake, bad setting,
    tweak mode), BackendError (backend or model missing) or RuntimeError (a job runs) before
    anything changes."""
    batch = context.scene.irg_batch
    if manager.busy():
        raise RuntimeError("A generation is already running: wait for it or press Cancel.")
    if not len(batch.items):
        raise ValueError("The batch list is empty: add prompts (+), or load them from a text or a .txt/.csv file.")
    chosen = selected(batch, scope)
    if not chosen:
        raise ValueError({"FAILED": "No failed items to retry.", "UNFINISHED": "Every item is baked already."}
                         .get(scope, "Nothing to bake."))
    settings = get_settings(**overrides)
    registry.client_for(settings)  # a missing backend or model is named before anything changes
    target = armature or batch.armature or rig.find_target_armature(context)
    if target is not None:
        rig.check_armature(target)
        if target.animation_data is not None and target.animation_data.use_tweak_mode:
            raise ValueError(f"The NLA of {target.name!r} is in tweak mode: leave it (Tab in the NLA editor), "
                             "then bake.")
        batch.armature = target
    _ensure_uids(batch)
    for item in chosen:
        item.status, item.error = "PENDING", ""
    job = BatchJob(context.scene.name, [it.uid for it in chosen], overrides,
                   target.name if target is not None else None, model_fps(settings))
    manager.start(job)
    return job


# -- scripting ---------------------------------------------------------------------------------

@dataclass
class ItemResult:
    """How one prompt of a batch ended: status 'done', 'failed', 'cancelled' or 'pending'."""

    prompt: str
    status: str
    action: bpy.types.Action | None
    strip: str
    error: str
    seed: int | None = None
    length: float | None = None


LAYOUT_OPTIONS = ("track", "frame_start", "gap", "blend_in", "blend_out")


def bake_batch(armature, prompts, *, timeout: float = 3600.0, **options) -> list[ItemResult]:
    """Bake prompts one after another into NLA strips on a track of the armature; blocks until done.

    prompts: a list of prompts, of (prompt, seed, length) tuples or dicts with those keys, a
    .txt/.csv path or a Text (length: the longest the motion may be, seconds). They replace the
    scene's batch list (saved with the file, as a batch started from the panel). armature: an
    Object, a name, or None (the target armature, else a default rig). options: the layout
    (track, frame_start, gap, blend_in, blend_out) and the keyword overrides of api.generate
    (model_dir, backend_python, device, precision, mode, rounds, max_motion_tokens, ...) and
    batch_parallel (prompts in flight on a server; 0: 4 when it batches, else 1).
    A prompt that fails is skipped and listed (status 'failed', error); returns one ItemResult
    per prompt, in order. Raises ValueError/TypeError (bad input), BackendError (backend or
    model missing), api.GenerationError (the batch itself stopped) or TimeoutError."""
    layout = {k: options.pop(k) for k in LAYOUT_OPTIONS if k in options}
    unknown = set(options) - set(OPTION_NAMES)
    if unknown:
        raise TypeError(f"unknown option(s) {', '.join(sorted(unknown))}; known: "
                        f"{', '.join((*LAYOUT_OPTIONS, *OPTION_NAMES))}")
    overrides = {OPTION_NAMES[k]: v for k, v in options.items()}
    target = resolve_armature(armature, create=False)
    entries = as_prompts(prompts)
    if manager.busy():
        raise RuntimeError("A generation is running: wait for it or cancel it first.")
    registry.client_for(get_settings(**overrides))  # refuse before the list is replaced
    batch = bpy.context.scene.irg_batch
    for name, value in layout.items():
        setattr(batch, name, value)
    fill_items(batch, entries, replace=True)
    job = start_batch(bpy.context, "ALL", target, **overrides)
    if not pump_until_done(job, timeout):
        raise TimeoutError(f"the batch did not finish within {timeout:.0f} s; baked {job.baked} of "
                           f"{job.total}. Raise timeout= for the real model on CPU.")
    if job.state == "error":
        raise GenerationError(job.error)
    return results(batch)


def results(batch) -> list[ItemResult]:
    """The batch list as ItemResults, in list order."""
    return [ItemResult(it.prompt, it.status.lower(), it.action, it.strip, it.error,
                       None if it.seed < 0 else it.seed, None if it.length <= 0 else round(it.length, 4))
            for it in batch.items]
