"""Rig presets: which bone of a rig takes each HumanML3D joint, as data.

A preset (presets/rigs/<id>.json, format in presets/rigs/README.md) maps each of
the 22 source joints to the target bone whose head sits at that joint. This
module loads and validates presets, detects the preset that fits an armature's
bone names (namespace prefixes such as ``mixamorig:`` and letter case do not
matter), checks a mapping made by hand and saves it as a user preset.

Plain Python (json, pathlib): no bpy and no numpy, so it runs in Blender, in the
backend environment and in tests alike. Callers pass bone names and parents.
"""
from __future__ import annotations

import json
import os
import re
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Mapping

# HumanML3D's joints and parents (model_backend/rig_math/skeleton.py HUMANML3D), repeated so
# this module needs neither numpy nor the backend package; a unit test keeps them equal.
JOINTS: tuple[str, ...] = (
    "pelvis", "left_hip", "right_hip", "spine1", "left_knee", "right_knee",
    "spine2", "left_ankle", "right_ankle", "spine3", "left_foot", "right_foot",
    "neck", "left_collar", "right_collar", "head", "left_shoulder",
    "right_shoulder", "left_elbow", "right_elbow", "left_wrist", "right_wrist",
)
JOINT_PARENTS: dict[str, str | None] = dict(zip(JOINTS, (
    None, "pelvis", "pelvis", "pelvis", "left_hip", "right_hip", "spine1", "left_knee",
    "right_knee", "spine2", "left_ankle", "right_ankle", "spine3", "spine3", "spine3",
    "neck", "left_collar", "right_collar", "left_shoulder", "right_shoulder",
    "left_elbow", "right_elbow",
)))

# Joints with exactly one child: the segments along which 'between' bones can share a rotation.
CHAIN_JOINTS: tuple[str, ...] = tuple(j for j in JOINTS if list(JOINT_PARENTS.values()).count(j) == 1)

# Every mapping needs these, plus one of HEAD_OR_NECK.
MIN_REQUIRED: tuple[str, ...] = (
    "pelvis", "spine3",
    "left_hip", "left_knee", "left_ankle", "right_hip", "right_knee", "right_ankle",
    "left_shoulder", "left_elbow", "left_wrist", "right_shoulder", "right_elbow", "right_wrist",
)
HEAD_OR_NECK: tuple[str, str] = ("head", "neck")
# A saved user preset requires those of these that it maps.
CORE_JOINTS: tuple[str, ...] = MIN_REQUIRED + ("spine1", "neck", "head")

FORWARD_AXES = ("+X", "-X", "+Y", "-Y")
SOURCE = "humanml3d"
FIELDS = ("id", "name", "description", "source", "bones", "alternates", "required",
          "between", "root_bone", "forward", "priority", "controls", "torso", "properties", "ik_legs")
MIN_SCORE = 0.5  # below this share of a preset's bones found, no preset is recognised
_ID_RE = re.compile(r"^[a-z0-9][a-z0-9_]{0,63}$")
FIX_HINT = ("pick another preset or map the joints by hand in the IRG Motion panel, "
            "then save the mapping as a new preset")


class PresetError(ValueError):
    """A preset file or mapping that cannot be used; the message names it and the fix."""


@dataclass(frozen=True)
class Preset:
    """One rig preset: joint -> bone map plus what the retargeter needs to know."""

    id: str
    name: str
    bones: dict[str, str]
    description: str = ""
    alternates: dict[str, tuple[str, ...]] = field(default_factory=dict)
    required: tuple[str, ...] = ()
    between: dict[str, tuple[str, ...]] = field(default_factory=dict)
    root_bone: str | None = None
    forward: str | None = None
    priority: int = 0
    source: str = SOURCE
    controls: dict[str, tuple[str, ...]] = field(default_factory=dict)
    torso: dict | None = None  # {"bone": name, "joints": [joint, ...]}
    properties: dict[str, dict[str, float]] = field(default_factory=dict)
    ik_legs: dict | None = None  # {"controls": {joint: [bones]}, "poles": {knee joint: bone}, "properties": {...}}
    path: Path | None = field(default=None, compare=False)

    @classmethod
    def from_dict(cls, data: object, path: Path | None = None) -> "Preset":
        """A Preset from parsed JSON; PresetError listing every problem found."""
        problems = preset_problems(data, path.stem if path else None)
        if problems:
            where = str(path) if path else "preset"
            raise PresetError(f"{where}: " + "; ".join(problems))
        assert isinstance(data, dict)
        return cls(
            id=data["id"], name=data["name"], bones=dict(data["bones"]),
            description=data.get("description", ""),
            alternates={j: tuple(v) for j, v in data.get("alternates", {}).items()},
            required=tuple(data["required"]),
            between={j: tuple(v) for j, v in data.get("between", {}).items()},
            root_bone=data.get("root_bone"), forward=data.get("forward"),
            priority=data.get("priority", 0), source=data.get("source", SOURCE),
            controls={j: tuple(v) for j, v in data.get("controls", {}).items()},
            torso=data.get("torso"),
            properties={b: {k: float(v) for k, v in props.items()} for b, props in data.get("properties", {}).items()},
            ik_legs=data.get("ik_legs"), path=path,
        )

    def to_dict(self) -> dict:
        """The JSON form (fields in the documented order, bones in joint order)."""
        return {
            "id": self.id, "name": self.name, "description": self.description,
            "source": self.source,
            "bones": {j: self.bones[j] for j in JOINTS if j in self.bones},
            "alternates": {j: list(v) for j, v in self.alternates.items()},
            "required": list(self.required),
            "between": {j: list(v) for j, v in self.between.items()},
            "root_bone": self.root_bone, "forward": self.forward, "priority": self.priority,
            **({"controls": {j: list(self.controls[j]) for j in JOINTS if j in self.controls}} if self.controls else {}),
            **({"torso": self.torso} if self.torso else {}),
            **({"properties": {b: dict(v) for b, v in self.properties.items()}} if self.properties else {}),
            **({"ik_legs": self.ik_legs} if self.ik_legs else {}),
        }

    @property
    def bundled(self) -> bool:
        """Shipped with the add-on (in presets_dir()), as opposed to a user preset."""
        return self.path is not None and self.path.parent.resolve() == presets_dir().resolve()

    def candidates(self, joint: str) -> tuple[str, ...]:
        """The bone names tried for a joint: the main one, then the alternates."""
        main = (self.bones[joint],) if joint in self.bones else ()
        return main + self.alternates.get(joint, ())


def _lacking_minimum(joints: Iterable[str]) -> list[str]:
    """The joints of the minimum every mapping needs that are not in `joints`."""
    have = set(joints)
    lacking = [j for j in MIN_REQUIRED if j not in have]
    return lacking if have & set(HEAD_OR_NECK) else lacking + ["head or neck"]


def _is_name(value: object) -> bool:
    return isinstance(value, str) and value.strip() == value and value != ""


def _check_joint_keys(what: str, value: object, problems: list[str]) -> dict:
    if not isinstance(value, dict):
        problems.append(f"'{what}' must be an object {{joint: ...}}")
        return {}
    unknown = [j for j in value if j not in JOINTS]
    if unknown:
        problems.append(f"'{what}' has unknown joints {unknown} (joints are HumanML3D's: {', '.join(JOINTS)})")
    return {j: v for j, v in value.items() if j in JOINTS}


def _check_name_lists(what: str, value: object, problems: list[str]) -> dict[str, list[str]]:
    lists = _check_joint_keys(what, value, problems)
    for joint, names in lists.items():
        if not isinstance(names, list) or not all(_is_name(n) for n in names):
            problems.append(f"'{what}.{joint}' must be a list of bone names")
    return {j: v for j, v in lists.items() if isinstance(v, list) and all(_is_name(n) for n in v)}


def preset_problems(data: object, stem: str | None = None) -> list[str]:
    """Everything wrong with a parsed preset (empty when valid); `stem` is the file name's stem."""
    if not isinstance(data, dict):
        return ["the file must hold one JSON object"]
    problems: list[str] = []
    unknown = [k for k in data if k not in FIELDS]
    if unknown:
        problems.append(f"unknown fields {unknown} (fields: {', '.join(FIELDS)})")
    missing = [k for k in ("id", "name", "bones", "required") if k not in data]
    if missing:
        problems.append(f"missing fields {missing}")
    pid = data.get("id")
    if "id" in data and not (isinstance(pid, str) and _ID_RE.match(pid)):
        problems.append(f"id {pid!r} must be lower-case letters, digits and '_'")
    elif stem is not None and pid != stem:
        problems.append(f"id {pid!r} must equal the file name {stem!r}")
    for key in ("name", "description"):
        if key in data and not isinstance(data[key], str):
            problems.append(f"'{key}' must be text")
    if data.get("source", SOURCE) != SOURCE:
        problems.append(f"source {data.get('source')!r} is not supported (only {SOURCE!r})")
    bones = _check_joint_keys("bones", data.get("bones", {}), problems)
    if any(not _is_name(b) for b in bones.values()):
        problems.append("every 'bones' value must be a bone name (non-empty text without outer spaces)")
    main = [b for b in bones.values() if _is_name(b)]
    dups = sorted({b for b in main if main.count(b) > 1})
    if dups:
        problems.append(f"bones used for more than one joint: {dups}")
    alternates = _check_name_lists("alternates", data.get("alternates", {}), problems)
    for joint, names in alternates.items():
        if joint not in bones:
            problems.append(f"alternates for {joint} but no main bone in 'bones'")
        elif bones[joint] in names:
            problems.append(f"alternates.{joint} repeats its main bone {bones[joint]!r}")
    required = data.get("required", [])
    if not isinstance(required, list) or not all(isinstance(j, str) for j in required):
        problems.append("'required' must be a list of joint names")
    else:
        not_mapped = [j for j in required if j not in bones]
        if not_mapped:
            problems.append(f"required joints without a bone: {not_mapped}")
        lacking = _lacking_minimum(required)
        if lacking:
            problems.append(f"'required' lacks {', '.join(lacking)} (every preset requires pelvis, "
                            "spine3, both legs and arms, and head or neck)")
    between = _check_name_lists("between", data.get("between", {}), problems)
    not_chain = [j for j in between if j not in CHAIN_JOINTS]
    if not_chain:
        problems.append(f"'between' is for joints with one child joint (a chain segment), not {not_chain}")
    unmapped = [j for j in between if j in CHAIN_JOINTS and j not in bones]
    if unmapped:
        problems.append(f"'between' for joints without a bone: {unmapped}")
    clash = sorted({n for names in between.values() for n in names} & set(main))
    if clash:
        problems.append(f"'between' lists bones that are mapped in 'bones': {clash}")
    root = data.get("root_bone")
    if root is not None and (not _is_name(root) or root in main):
        problems.append(f"root_bone {root!r} must be null or a bone name not mapped to a joint")
    if data.get("forward") not in (None, *FORWARD_AXES):
        problems.append(f"forward {data.get('forward')!r} must be null or one of {', '.join(FORWARD_AXES)}")
    if not isinstance(data.get("priority", 0), int) or isinstance(data.get("priority"), bool):
        problems.append("'priority' must be an integer")
    controls = _check_name_lists("controls", data.get("controls", {}), problems)
    unmapped = [j for j in controls if j not in bones]
    if unmapped:
        problems.append(f"'controls' for joints without a bone in 'bones': {unmapped}")
    torso = data.get("torso")
    if torso is not None and not (isinstance(torso, dict) and set(torso) == {"bone", "joints"}
                                  and _is_name(torso["bone"]) and isinstance(torso["joints"], list)
                                  and torso["joints"] and all(j in bones for j in torso["joints"])):
        problems.append("'torso' must be null or {\"bone\": name, \"joints\": [mapped joints]}")
    _check_properties(data.get("properties", {}), problems)
    ik = data.get("ik_legs")
    if ik is not None:
        if not isinstance(ik, dict) or set(ik) != {"controls", "poles", "properties"}:
            problems.append("'ik_legs' must be null or {\"controls\": ..., \"poles\": ..., \"properties\": ...}")
        else:
            legs = _check_name_lists("ik_legs.controls", ik["controls"], problems)
            if any(not j.endswith(("_ankle", "_foot")) or j not in bones for j in legs):
                problems.append("'ik_legs.controls' are for mapped ankle and toe joints")
            poles = _check_joint_keys("ik_legs.poles", ik["poles"], problems)
            if any(not j.endswith("_knee") or not _is_name(b) for j, b in poles.items()):
                problems.append("'ik_legs.poles' maps knee joints to pole bones")
            _check_properties(ik["properties"], problems)
    return problems


def _check_properties(value: object, problems: list[str]) -> None:
    """'properties' is {bone: {custom property: number}}."""
    if not isinstance(value, dict) or not all(
            _is_name(b) and isinstance(p, dict) and p and all(
                _is_name(k) and isinstance(v, (int, float)) and not isinstance(v, bool) for k, v in p.items())
            for b, p in value.items()):
        problems.append("'properties' must be {bone: {custom property: number}}")


def load_preset(path: str | os.PathLike) -> Preset:
    """One preset file; PresetError naming the file and every problem in it."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise PresetError(f"{path}: cannot be read ({exc})") from None
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise PresetError(f"{path}: not valid JSON (line {exc.lineno}, column {exc.colno}: {exc.msg})") from None
    return Preset.from_dict(data, path)


class PresetSet(dict):
    """Presets by id, plus `errors`: one message per file that could not be loaded."""

    def __init__(self) -> None:
        super().__init__()
        self.errors: list[str] = []


def presets_dir() -> Path:
    """The bundled presets (`presets/rigs`, a sibling of this package in the repo and the extension)."""
    return Path(__file__).resolve().parents[2] / "presets" / "rigs"


# Presets read per folder, keyed by the folder's and its files' stat (mtime, size, inode):
# the panel's preset list and every retarget ask for the presets, and re-reading and
# re-validating the JSON each time would be wasted. The Preset objects are shared: never
# change them. A few folders at most (bundled, the user's, those a test makes).
_FolderKey = tuple
_folder_cache: dict[Path, tuple[_FolderKey, tuple[Preset, ...], tuple[str, ...]]] = {}
_CACHE_SIZE = 8


def _folder_key(folder: Path) -> _FolderKey | None:
    """What changes when a preset file in `folder` is added, removed, renamed or rewritten."""
    try:
        files = [(p.name, p.stat()) for p in sorted(folder.glob("*.json"))]
        return (folder.stat().st_mtime_ns,
                tuple((n, st.st_mtime_ns, st.st_size, st.st_ino) for n, st in files))
    except OSError:  # removed while looking: read it afresh
        return None


def _read_folder(folder: Path) -> tuple[tuple[Preset, ...], tuple[str, ...]]:
    """The presets of one folder in file-name order, and one message per broken file."""
    loaded: list[Preset] = []
    errors: list[str] = []
    for path in sorted(folder.glob("*.json")):
        try:
            loaded.append(load_preset(path))
        except PresetError as exc:
            errors.append(str(exc))
    return tuple(loaded), tuple(errors)


def _folder_presets(folder: Path) -> tuple[tuple[Preset, ...], tuple[str, ...]]:
    """_read_folder, from the cache while the folder's files are unchanged."""
    key = _folder_key(folder)
    cached = _folder_cache.get(folder)
    if key is not None and cached is not None and cached[0] == key:
        return cached[1], cached[2]
    found = _read_folder(folder)
    if key is not None:
        _folder_cache.pop(folder, None)
        while len(_folder_cache) >= _CACHE_SIZE:
            _folder_cache.pop(next(iter(_folder_cache)))  # the oldest entry
        _folder_cache[folder] = (key, *found)
    return found


def load_presets(extra_dirs: Iterable[str | os.PathLike] = ()) -> PresetSet:
    """Bundled presets, then those in `extra_dirs` (e.g. the user's preset folder).

    A broken file is reported in the result's `errors` and skipped; the others still
    load. A user preset cannot replace a bundled one of the same id. Folders that do
    not exist yet are skipped silently (no user preset saved so far). Unchanged
    folders are not read again (the Preset objects are shared: do not modify them).
    """
    result = PresetSet()
    for folder in (presets_dir(), *map(Path, extra_dirs)):
        if not folder.is_dir():
            continue
        loaded, errors = _folder_presets(folder)
        result.errors.extend(errors)
        for preset in loaded:
            if preset.id in result:
                result.errors.append(f"{preset.path}: id {preset.id!r} is already used by "
                                     f"{result[preset.id].path}; rename the file and its id")
                continue
            result[preset.id] = preset
    return result


USER_FOLDER = "rig_presets"


def user_presets_dir(base: str | os.PathLike) -> Path:
    """The user preset folder inside `base`, a per-user folder the caller knows (the add-on
    gives Blender's extension user folder, or its folder in Blender's config). Not created
    here: save_user_preset makes it. PresetError if it would be the bundled folder."""
    folder = Path(base) / USER_FOLDER
    if folder.resolve() == presets_dir().resolve():
        raise PresetError(f"{folder} holds the bundled presets: user presets need a folder of their own.")
    return folder


# --- matching bone names ---------------------------------------------------------

def strip_namespace(name: str) -> str:
    """A bone name without its namespace prefix: 'mixamorig1:Hips' -> 'Hips'."""
    return name.rsplit(":", 1)[-1]


class _BoneIndex:
    """Finds a preset's bone name among an armature's: exact, then without namespace, then any case."""

    def __init__(self, bone_names: Iterable[str]) -> None:
        self.names = list(bone_names)
        self.exact = set(self.names)
        self.bare: dict[str, str] = {}
        self.folded: dict[str, str] = {}
        for name in self.names:  # the first bone in armature order wins a tie
            self.bare.setdefault(strip_namespace(name), name)
            self.folded.setdefault(strip_namespace(name).casefold(), name)

    def find(self, wanted: str) -> str | None:
        if wanted in self.exact:
            return wanted
        bare = strip_namespace(wanted)
        return self.bare.get(bare) or self.folded.get(bare.casefold())


@dataclass
class Detection:
    """A preset applied to an armature's bone names, or the news that none fits."""

    preset: Preset | None
    score: float
    mapping: dict[str, str]
    missing_required: list[str]
    between: dict[str, list[str]] = field(default_factory=dict)
    root_bone: str | None = None
    bone_count: int = 0
    ranking: list[tuple[Preset, float]] = field(default_factory=list)
    controls: dict[str, list[str]] = field(default_factory=dict)  # joint -> control bones keyed for it (found)
    torso: tuple[str, list[str]] | None = None  # (bone, joints) of the preset's torso control, when found
    ik_legs: dict | None = None  # the preset's IK leg controls, poles and properties, in this rig's names
    properties: dict[str, dict[str, float]] = field(default_factory=dict)  # bone -> {property: value} (found)

    @property
    def ok(self) -> bool:
        """A preset fits and every required joint has a bone."""
        return self.preset is not None and not self.missing_required

    def report(self) -> str:
        """What was found and, when something is missing, how to fix it."""
        if self.preset is None:
            lines = [f"No rig preset matches this armature's {self.bone_count} bones."]
            if self.ranking and self.ranking[0][1] > 0:
                best, score = self.ranking[0]
                lines.append(f"Closest: {best.name} ({score:.0%} of its bones found).")
            lines.append(f"Required joints: {', '.join(MIN_REQUIRED)}, and head or neck.")
            lines.append(f"Fix: {FIX_HINT}.")
            return "\n".join(lines)
        p = self.preset
        lines = [f"Rig preset: {p.name} ({p.id}): {len(self.mapping)} of its {len(p.bones)} joints mapped "
                 f"(score {self.score:.2f})."]
        if self.missing_required:
            wanted = ", ".join(f"{j} (bone {' or '.join(repr(n) for n in p.candidates(j))} not found)"
                               for j in self.missing_required)
            lines.append(f"Unmapped required joints: {wanted}.")
            lines.append(f"Fix: {FIX_HINT}.")
        else:
            lines.append("All required joints are mapped.")
        optional = [j for j in JOINTS if j not in self.mapping and j not in self.missing_required]
        if optional:
            lines.append(f"Not mapped (optional, they follow their parent): {', '.join(optional)}.")
        return "\n".join(lines)


def _resolve(preset: Preset, index: _BoneIndex) -> tuple[dict[str, str], list[str]]:
    # Required joints first, so an alternate (a rig with fewer spine bones) goes to
    # the joint that must have a bone; a bone is never used twice.
    order = [*preset.required, *(j for j in JOINTS if j not in preset.required)]
    found: dict[str, str] = {}
    for joint in order:
        for wanted in preset.candidates(joint):
            bone = index.find(wanted)
            if bone is not None and bone not in found.values():
                found[joint] = bone
                break
    mapping = {j: found[j] for j in JOINTS if j in found}
    return mapping, [j for j in preset.required if j not in mapping]


def resolve_map(preset: Preset, bone_names: Iterable[str]) -> tuple[dict[str, str], list[str]]:
    """The preset's joint -> bone map in this armature's own names, and the required joints it lacks."""
    return _resolve(preset, _BoneIndex(bone_names))


def match_preset(preset: Preset, bone_names: Iterable[str], index: "_BoneIndex | None" = None) -> Detection:
    """Apply one preset to an armature's bone names (e.g. the one the user picked); `index`: those
    names already indexed (detect_preset indexes them once for every preset)."""
    index = index or _BoneIndex(bone_names)
    mapping, missing = _resolve(preset, index)
    used = set(mapping.values())
    between: dict[str, list[str]] = {}
    for joint, names in preset.between.items():
        bones = [b for b in (index.find(n) for n in names) if b is not None and b not in used]
        if bones and joint in mapping:
            between[joint] = bones
    root = index.find(preset.root_bone) if preset.root_bone else None
    root = None if root in used else root
    total = len(preset.bones) + sum(len(v) for v in preset.between.values())
    score = (len(mapping) + sum(len(v) for v in between.values())) / total
    controls = {j: [c for c in (index.find(n) for n in names) if c is not None]
                for j, names in preset.controls.items() if j in mapping}
    torso_bone = index.find(preset.torso["bone"]) if preset.torso else None
    torso = (torso_bone, [j for j in preset.torso["joints"] if j in mapping]) if torso_bone else None
    properties = {b: dict(v) for b, v in ((index.find(n), v) for n, v in preset.properties.items()) if b is not None}
    ik_legs = None
    if preset.ik_legs:
        ik = preset.ik_legs
        ik_legs = {"controls": {j: [c for c in (index.find(n) for n in names) if c is not None]
                                for j, names in ik["controls"].items() if j in mapping},
                   "poles": {j: p for j, p in ((j, index.find(n)) for j, n in ik["poles"].items()) if p is not None},
                   "properties": {b: dict(v) for b, v in ((index.find(n), v) for n, v in ik["properties"].items())
                                  if b is not None}}
    return Detection(preset, score, mapping, missing, between, root, len(index.names), controls=controls,
                     torso=torso, properties=properties, ik_legs=ik_legs)


def detect_preset(bone_names: Iterable[str], presets: Mapping[str, Preset] | None = None) -> Detection:
    """The preset that best fits these bone names (bundled presets when `presets` is None).

    Ranking: presets whose required joints are all found come first, among those a
    higher `priority` (a control rig over its own deform bones), then the share of
    the preset's bones found, then user presets before bundled ones (a mapping the
    user fixed wins a tie), then the number of joints mapped. Below MIN_SCORE no
    preset is recognised: `preset` is None and `report()` says how to map by hand.
    """
    names = list(bone_names)
    presets = load_presets() if presets is None else presets
    index = _BoneIndex(names)
    matches = [match_preset(p, names, index) for p in presets.values()]
    if not matches:
        return Detection(None, 0.0, {}, list(MIN_REQUIRED), bone_count=len(names))

    def rank(d: Detection) -> tuple:
        complete = not d.missing_required
        return (complete, d.preset.priority if complete else 0, round(d.score, 6),
                not d.preset.bundled, len(d.mapping))

    matches.sort(key=rank, reverse=True)
    best = matches[0]
    best.ranking = [(d.preset, d.score) for d in matches]
    if best.score < MIN_SCORE:
        return Detection(None, best.score, {}, list(MIN_REQUIRED), bone_count=len(names),
                         ranking=best.ranking)
    return best


# --- checking and saving a mapping --------------------------------------------------

def bone_side(name: str) -> str | None:
    """'left' / 'right' when a bone name says so (LeftArm, thigh.L, upperarm_l, J_Bip_L_...), else None."""
    low = strip_namespace(name).casefold()
    left = bool(re.search(r"(^|[^a-z])left", low) or re.search(r"(^|[._\-\s])l($|[._\-\s])", low))
    right = bool(re.search(r"(^|[^a-z])right", low) or re.search(r"(^|[._\-\s])r($|[._\-\s])", low))
    return "left" if left and not right else "right" if right and not left else None


def _mapped_ancestor(joint: str, mapping: Mapping[str, str]) -> str | None:
    parent = JOINT_PARENTS[joint]
    while parent is not None and parent not in mapping:
        parent = JOINT_PARENTS[parent]
    return parent


def _is_below(bone: str, ancestor: str, parents: Mapping[str, str | None]) -> bool:
    seen: set[str] = set()
    current = parents.get(bone)
    while current is not None and current not in seen:
        if current == ancestor:
            return True
        seen.add(current)
        current = parents.get(current)
    return False


def validate_mapping(mapping: Mapping[str, str | None], bone_names: Iterable[str],
                     parents: Mapping[str, str | None],
                     required: Iterable[str] | None = None) -> list[str]:
    """Problems with a joint -> bone mapping on an armature (empty list: usable).

    Checks unknown joints and bones, a bone used twice, required joints without a
    bone (`required` defaults to MIN_REQUIRED plus head or neck), a bone on the wrong
    side by its name, and chain order: each joint's bone must lie below the bone of
    its nearest mapped ancestor joint in `parents` (bone -> parent name or None).
    Empty values count as unmapped.
    """
    names = set(bone_names)
    problems: list[str] = []
    unknown = [j for j in mapping if j not in JOINTS]
    if unknown:
        problems.append(f"Unknown joints {unknown}: joints are HumanML3D's ({', '.join(JOINTS)}).")
    used = {j: b for j, b in mapping.items() if j in JOINTS and b}
    for joint, bone in used.items():
        if bone not in names:
            problems.append(f"{joint} -> {bone!r}: the armature has no bone of that name.")
    by_bone: dict[str, list[str]] = {}
    for joint, bone in used.items():
        by_bone.setdefault(bone, []).append(joint)
    for bone, joints in by_bone.items():
        if len(joints) > 1:
            problems.append(f"Bone {bone!r} is mapped to {', '.join(joints)}: a bone can take only one joint.")
    missing = _lacking_minimum(used) if required is None else [j for j in required if j not in used]
    if missing:
        problems.append(f"Required joints not mapped: {', '.join(missing)}.")
    for joint, bone in used.items():
        side = joint.split("_", 1)[0]
        if side in ("left", "right") and bone_side(bone) not in (None, side):
            problems.append(f"{joint} -> {bone!r}: the bone's name says {bone_side(bone)} side.")
    for joint, bone in used.items():
        anc = _mapped_ancestor(joint, used)
        if anc is None or bone not in names or used[anc] not in names:
            continue
        if not _is_below(bone, used[anc], parents):
            problems.append(f"{joint} -> {bone!r} is not below {anc} -> {used[anc]!r} in the bone "
                            f"hierarchy: the {joint} bone must be a child (or grandchild) of the {anc} bone.")
    return problems


def preset_id(name: str) -> str:
    """A file-safe id from a display name: 'My Rig (v2)' -> 'my_rig_v2'."""
    pid = re.sub(r"[^a-z0-9]+", "_", name.casefold()).strip("_")[:64].rstrip("_")
    if not pid:
        raise PresetError(f"Preset name {name!r} has no letters or digits: give it a name such as 'My rig'.")
    return pid


def save_user_preset(mapping: Mapping[str, str | None], name: str, directory: str | os.PathLike,
                     base: Preset | None = None) -> Path:
    """Write a mapping as <directory>/<id>.json and return the path.

    The id comes from `name` (sanitised). `base` (the preset the mapping started
    from) lends its between bones, root bone, forward axis and priority. Refuses the
    id of a bundled preset and the bundled folder itself; an existing user preset of
    the same id is replaced. The file is validated before it is written, atomically.
    """
    directory = Path(directory)
    pid = preset_id(name)
    bundled = presets_dir()
    if (bundled / f"{pid}.json").exists():
        raise PresetError(f"'{pid}' is the id of a bundled preset: save under another name.")
    if directory.resolve() == bundled.resolve():
        raise PresetError(f"{directory} holds the bundled presets: save user presets in the user preset folder.")
    bones = {j: b for j, b in mapping.items() if b}
    lacking = _lacking_minimum(bones)
    if lacking:
        raise PresetError(f"Cannot save preset {name!r}: required joints not mapped: {', '.join(lacking)}. "
                          "Map them in the panel first.")
    used = set(bones.values())
    data = {
        "id": pid, "name": name.strip(),
        "description": f"Saved by hand from {base.name}." if base else "Mapped by hand.",
        "source": SOURCE,
        "bones": bones,
        "required": [j for j in CORE_JOINTS if j in bones],
        "between": {j: [n for n in v if n not in used] for j, v in (base.between if base else {}).items()
                    if j in bones and any(n not in used for n in v)},
        "root_bone": base.root_bone if base and base.root_bone not in used else None,
        "forward": base.forward if base else None,
        "priority": base.priority if base else 0,
    }
    problems = preset_problems(data, pid)
    if problems:
        raise PresetError(f"Cannot save preset {name!r}: " + "; ".join(problems))
    directory.mkdir(parents=True, exist_ok=True)
    target = directory / f"{pid}.json"
    fd, tmp = tempfile.mkstemp(prefix=f".{pid}.", suffix=".tmp", dir=directory)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            json.dump(Preset.from_dict(data).to_dict(), f, indent=2)
            f.write("\n")
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return target
