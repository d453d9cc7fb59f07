"""Versions: each generated motion is a new Action ("walk_forward.v003") with its metadata.

Metadata lives in the Action's ID properties under `action["irg"]` (saved with the
.blend): prompt, round, tokens, assessment, refinement, model, seed, parent (the
parent version's Action name), source, slug, version, serial (creation order in
the file), created (ISO time, UTC), fps, src_fps, frames, frame_start, frame_end,
armature, armature_id, scale, rotation_mode_changed, keys_digest (a fingerprint of the
keys as written: `is_edited` tells when the animator changed them), extra (a dict), and
the retarget options: preset (the rig preset id used), root_mode, foot_lock, smoothing,
ik_legs; and, set later by the user or the model, keep (bool) and caption (text).
The source joints (Blender axes, at src_fps) are kept beside them, under
`action["irg_joints"]` (and the contact channels under `action["irg_contacts"]`
when given), so a version can be applied to another armature (`apply_version`).
An armature is identified by `obj["irg_rig_id"]` (set on its first version), so
renaming it keeps its versions.
"""
from __future__ import annotations

import hashlib
import math
import re
import unicodedata
import uuid
from datetime import datetime, timezone
from typing import Any, Mapping

import bpy
import numpy as np

from . import compat, euler
from .metadata import read_metadata
from ..rig import pose, armature as rig

NAMESPACE = "irg"
RIG_ID = "irg_rig_id"
JOINTS_KEY, CONTACTS_KEY = "irg_joints", "irg_contacts"
SLUG_MAX = 40
UPDATABLE = ("prompt", "round", "tokens", "assessment", "refinement", "model", "seed", "parent", "source", "extra",
             "keep", "caption")
_LATER_FIELDS = {"keep": bool, "caption": str}  # updatable fields a new version does not take


def slugify(prompt: str, max_len: int = SLUG_MAX) -> str:
    """A name-safe slug: "Walk forward, then wave!" -> "walk_forward_then_wave" (never empty: "motion")."""
    text = unicodedata.normalize("NFKD", str(prompt or "")).encode("ascii", "ignore").decode().lower()
    slug = ""
    for word in re.findall(r"[a-z0-9]+", text):
        candidate = f"{slug}_{word}" if slug else word
        if len(candidate) > max_len:
            slug = slug or word[:max_len]  # one over-long word: cut it
            break
        slug = candidate
    return slug or "motion"


def _rig_id(armature: bpy.types.Object, *, create: bool) -> str | None:
    rid = armature.get(RIG_ID)
    if rid is None and create:
        rid = armature[RIG_ID] = uuid.uuid4().hex
    return rid


def _all_versions() -> list[bpy.types.Action]:
    return [a for a in bpy.data.actions if hasattr(a.get(NAMESPACE), "to_dict")]


def _check_is_armature(armature) -> None:
    if armature is None or getattr(armature, "type", None) != "ARMATURE":
        rig.check_armature(armature)  # raises the clear message


def versions(armature: bpy.types.Object) -> list[bpy.types.Action]:
    """The versions made for this armature, in creation order."""
    _check_is_armature(armature)
    rid = _rig_id(armature, create=False)
    if rid is None:
        return []
    infos = {a.name: version_info(a) for a in _all_versions()}
    found = [a for a in _all_versions() if infos[a.name].get("armature_id") == rid]
    return sorted(found, key=lambda a: (infos[a.name].get("serial", 0), infos[a.name].get("version", 0), a.name))


def version_info(action: bpy.types.Action) -> dict[str, Any]:
    """The version's metadata as plain Python ({} for an Action that is not a version), read
    through metadata.read_metadata: a malformed field reads as missing, with a warning naming
    the Action. `tokens` is always a list, `seed` an int or None, `extra` a dict."""
    raw = action.get(NAMESPACE)
    if raw is None or not hasattr(raw, "to_dict"):
        return {}
    info = read_metadata(raw.to_dict(), action.name)
    info.setdefault("tokens", [])
    return info


def _id_value(value: Any) -> Any:
    """A value an ID property can hold (dicts and lists recursively; other objects as text)."""
    if isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, dict):
        return {str(k): _id_value(v) for k, v in value.items() if v is not None}
    if isinstance(value, (list, tuple, np.ndarray)):
        items = [_id_value(v) for v in value]
        if all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in items):
            return items
        return [str(v) for v in items]
    return str(value)


def _fields(prompt, round, tokens, assessment, refinement, model, seed, parent, source, extra) -> dict[str, Any]:
    """The user-facing metadata fields, validated and converted for ID properties."""
    token_list = [int(t) for t in tokens]
    if any(t < 0 or t >= 2**31 for t in token_list):
        raise ValueError("motion tokens must be non-negative integers below 2**31")
    parent_name = parent.name if isinstance(parent, bpy.types.Action) else str(parent or "")
    return {"prompt": str(prompt), "round": int(round), "tokens": token_list, "assessment": str(assessment),
            "refinement": str(refinement), "model": str(model), "seed": "" if seed is None else str(int(seed)),
            "parent": parent_name, "source": str(source), "extra": _id_value(dict(extra or {}))}


def _next_name(armature: bpy.types.Object, slug: str) -> tuple[int, str]:
    """Next free version number for armature + slug, skipping names taken by any other Action."""
    infos = [version_info(a) for a in versions(armature)]
    used = [info.get("version", 0) for info in infos if info.get("slug") == slug]
    number = max(used, default=0) + 1
    while bpy.data.actions.get(f"{slug}.v{number:03d}") is not None:
        number += 1
    return number, f"{slug}.v{number:03d}"


def key_channels(action: bpy.types.Action, armature: bpy.types.Object, channels: pose.PoseChannels,
                 interpolation: str = "LINEAR") -> None:
    """Write the channels as keys on `action` for `armature` (one F-Curve per channel, in bulk;
    existing keys on those F-Curves are replaced). A bone in an Euler rotation mode gets
    rotation_euler keys in its own order, the others rotation_quaternion keys. The
    armature's bones are not changed."""
    specs, series = [], []
    bones = armature.pose.bones
    for b, name in enumerate(channels.bone_names):
        path = f'pose.bones["{bpy.utils.escape_identifier(name)}"]'
        order = bones[name].rotation_mode if name in bones else "QUATERNION"
        if order in euler.ORDERS:
            angles = euler.quat_to_euler(channels.quaternions[:, b], order)
            for i in range(3):
                specs.append((f"{path}.rotation_euler", i, name))
                series.append(angles[:, i])
        else:
            for i in range(4):
                specs.append((f"{path}.rotation_quaternion", i, name))
                series.append(channels.quaternions[:, b, i])
        location = channels.locations.get(name)
        if location is None and name == channels.root_bone:
            location = channels.location
        if location is not None:
            for i in range(3):
                specs.append((f"{path}.location", i, name))
                series.append(location[:, i])
    for fcurve, values in zip(compat.ensure_fcurves(action, armature, specs), series):
        compat.write_keys(fcurve, channels.frames, values, interpolation)
    key_properties(action, armature, channels.properties, channels.frames[[0, -1]])


def key_properties(action: bpy.types.Action, armature: bpy.types.Object, properties, frames) -> None:
    """Key custom properties of pose bones ({bone: {property: value}}) at `frames`, constant
    (a control rig's switches, e.g. Rigify's IK_FK at FK): keyed, so the animator can switch back."""
    specs, values = [], []
    for bone, props in properties.items():
        for key, value in props.items():
            path = f'pose.bones["{bpy.utils.escape_identifier(bone)}"]["{bpy.utils.escape_identifier(key)}"]'
            specs.append((path, 0, bone))
            values.append(value)
    for fcurve, value in zip(compat.ensure_fcurves(action, armature, specs), values):
        compat.write_keys(fcurve, frames, np.full(len(frames), value), "CONSTANT")


def _check_channels(armature: bpy.types.Object, channels: pose.PoseChannels, *, preset, root_mode: str,
                    foot_lock: bool, smoothing: bool, ik_legs: bool = False) -> None:
    """ValueError unless pre-solved channels fit the armature and the retarget options given with them."""
    fix = "solve them for this armature (pose.plan_channels + pose.solve_channels) with the same options"
    missing = [n for n in channels.bone_names if n not in armature.pose.bones]
    if missing:
        raise ValueError(f"The channels key bones that armature {armature.name!r} does not have "
                         f"({', '.join(missing[:5])}{'...' if len(missing) > 5 else ''}): {fix}.")
    count = len(channels.frames)
    if count < 1 or np.shape(channels.quaternions) != (count, len(channels.bone_names), 4) or any(
            np.shape(v) != (count, 3) for v in (channels.location, *channels.locations.values())):
        raise ValueError(f"The channels are inconsistent ({count} frames, quaternions "
                         f"{np.shape(channels.quaternions)} for {len(channels.bone_names)} bones): {fix}.")
    given = {"root_mode": root_mode, "foot_lock": bool(foot_lock), "smoothing": bool(smoothing),
             "ik_legs": bool(ik_legs)}
    solved = {"root_mode": channels.root_mode, "foot_lock": channels.foot_lock, "smoothing": channels.smoothing,
              "ik_legs": channels.ik_legs}
    if isinstance(preset, Mapping):
        given["preset"], solved["preset"] = {j: b for j, b in preset.items() if b}, channels.mapping
    elif preset not in (None, "auto"):
        given["preset"], solved["preset"] = preset, channels.preset
    differ = [f"{k}={solved[k]!r} (given {given[k]!r})" for k in given if given[k] != solved[k]]
    if differ:
        raise ValueError(f"The channels were solved with other retarget options: {', '.join(differ)}; {fix}.")


def _use_quaternions(armature: bpy.types.Object, names) -> list[str]:
    """Set the bones in axis-angle mode to QUATERNION (Euler modes are keyed as they are); the
    names of those changed."""
    changed = []
    for name in names:
        bone = armature.pose.bones[name]
        if bone.rotation_mode == "AXIS_ANGLE":
            bone.rotation_mode = "QUATERNION"
            changed.append(name)
    return changed


def write_version(armature: bpy.types.Object, joints_blender, *, fps: float = 20.0, prompt: str, round: int = 1,
                  tokens=(), assessment: str = "", refinement: str = "", model: str = "", seed: int | None = None,
                  parent=None, source: str = "generate", extra: dict | None = None,
                  interpolation: str = "LINEAR", preset: str | dict | None = "auto", root_mode: str = "root_motion",
                  foot_lock: bool = False, smoothing: bool = False, contacts=None, ik_legs: bool = False,
                  channels: pose.PoseChannels | None = None) -> bpy.types.Action:
    """Key joints (T, 22, 3; Blender axes, metres, at `fps`) as a new version, made the active Action.

    Name `{slug}.v{NNN}` (never overwrites an Action), fake user set, frame range set, the
    scene's end frame extended to cover it. parent: the parent version (Action or name).
    Retarget options (see pose.joints_to_channels): preset ("auto", a preset id or
    {joint: bone}), root_mode ("root_motion", "in_place", "root_bone"), foot_lock,
    smoothing, contacts ((T, 4) contact channels for foot locking, optional), ik_legs (a control
    rig's IK leg controls keyed too, feet pinned during contacts, legs switched to IK).
    channels: the channels already solved from these joints with these options
    (pose.solve_channels, e.g. in a worker thread): keyed as they are, after a check
    that they fit the armature and the options (ValueError otherwise).
    Keyed bones keep their rotation mode (Euler bones get Euler keys in their own order), but
    axis-angle bones are switched to quaternions (listed in the metadata's rotation_mode_changed). All or nothing: on any error the half-made Action is
    removed and the previous active Action, rotation modes and scene range are restored."""
    rig.check_armature(armature)
    rig.ensure_pose(armature)
    fields = _fields(prompt, round, tokens, assessment, refinement, model, seed, parent, source, extra)
    if channels is None:
        channels = pose.joints_to_channels(armature, joints_blender, src_fps=fps, preset=preset, root_mode=root_mode,
                                           foot_lock=foot_lock, smoothing=smoothing, contacts=contacts,
                                           ik_legs=ik_legs)  # validates
        source_joints = np.asarray(joints_blender, dtype=np.float64)
    else:
        _check_channels(armature, channels, preset=preset, root_mode=root_mode, foot_lock=foot_lock,
                        smoothing=smoothing, ik_legs=ik_legs)
        source_joints = pose.check_joints(joints_blender, rig.SKELETON.num_joints)
        pose.check_contacts(contacts, len(source_joints))
    slug = slugify(prompt)
    number, name = _next_name(armature, slug)
    scene = bpy.context.scene
    anim = armature.animation_data
    previous = anim.action if anim is not None else None
    modes = {b.name: b.rotation_mode for b in armature.pose.bones}
    frame_end, had_id = scene.frame_end, armature.get(RIG_ID) is not None
    switched: dict[str, dict] = {}
    action = compat.new_action(name)
    try:
        key_channels(action, armature, channels, interpolation)
        start, end = float(channels.frames[0]), float(channels.frames[-1])
        action.use_fake_user = True
        action.use_frame_range = True
        action.frame_start, action.frame_end = start, end
        serial = max((version_info(a).get("serial", 0) for a in _all_versions()), default=0) + 1
        action[NAMESPACE] = {
            **fields, "slug": slug, "version": number, "serial": serial,
            "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "fps": channels.fps, "src_fps": float(fps), "frames": len(channels.frames),
            "frame_start": start, "frame_end": end, "armature": armature.name,
            "armature_id": _rig_id(armature, create=True), "scale": channels.scale,
            "preset": channels.preset, "root_mode": channels.root_mode,
            "foot_lock": bool(foot_lock), "smoothing": bool(smoothing), "ik_legs": bool(ik_legs),
            "rotation_mode_changed": _use_quaternions(armature, channels.bone_names),
            "keys_digest": keys_digest(action)}
        action[JOINTS_KEY] = source_joints.ravel().tolist()
        if contacts is not None:
            action[CONTACTS_KEY] = np.asarray(contacts, dtype=np.float64).ravel().tolist()
        compat.assign_action(armature, action)
        switched = _set_properties(armature, channels.properties)  # as the keys say (no evaluation needed)
        if scene.frame_end < end:
            scene.frame_end = math.ceil(end)
    except BaseException:
        bpy.data.actions.remove(action)
        if armature.animation_data is not None and armature.animation_data.action != previous:
            compat.assign_action(armature, previous)
        for bone, mode in modes.items():
            armature.pose.bones[bone].rotation_mode = mode
        _set_properties(armature, switched)
        scene.frame_end = frame_end
        if not had_id and RIG_ID in armature:
            del armature[RIG_ID]
        raise
    return action


def _set_properties(armature: bpy.types.Object, properties) -> dict[str, dict]:
    """Set pose bones' custom properties ({bone: {property: value}}) keeping their types; the
    previous values, in the same form."""
    before: dict[str, dict] = {}
    for bone, values in properties.items():
        pose_bone = armature.pose.bones[bone]
        for key, value in values.items():
            before.setdefault(bone, {})[key] = pose_bone[key]
            pose_bone[key] = type(pose_bone[key])(value)
    return before


DIGEST_PREFIX = "v2:"  # digests of keys, handles, interpolation and modifiers; older ones hold keys only


def keys_digest(action: bpy.types.Action, *, shape: bool = True) -> str:
    """A fingerprint of the Action's animation: F-Curve paths, key frames and values and, with
    `shape` (the default), each key's handles, interpolation and easing and each curve's
    modifiers. It changes when the animator moves, adds or deletes keys or reshapes the
    curves between them. shape=False: the older keys-only fingerprint (versions written
    before shapes counted)."""
    digest = hashlib.sha1()
    fields = ("co", "handle_left", "handle_right") if shape else ("co",)
    for fcurve in sorted(compat.action_fcurves(action), key=lambda f: (f.data_path, f.array_index)):
        points = fcurve.keyframe_points
        digest.update(f"{fcurve.data_path}[{fcurve.array_index}]:{len(points)};".encode())
        for name in fields:
            values = np.empty(2 * len(points), dtype=np.float32)
            points.foreach_get(name, values)
            digest.update(values.tobytes())
        if shape:
            for name in ("interpolation", "easing"):
                codes = np.empty(len(points), dtype=np.int32)
                points.foreach_get(name, codes)
                digest.update(codes.tobytes())
            digest.update(";".join(f"{m.type}:{m.mute}" for m in fcurve.modifiers).encode())
    return (DIGEST_PREFIX if shape else "") + digest.hexdigest()


def is_edited(action: bpy.types.Action) -> bool:
    """True when a version's animation is no longer what it was written with (edited by hand:
    keys, handles, interpolation or curve modifiers). False for Actions that are not versions,
    or versions from before keys were fingerprinted."""
    stored = version_info(action).get("keys_digest")
    if not stored:
        return False
    return stored != keys_digest(action, shape=str(stored).startswith(DIGEST_PREFIX))


def source_motion(action: bpy.types.Action) -> tuple[np.ndarray, np.ndarray | None]:
    """The joints (T, 22, 3; Blender axes, at the version's src_fps) a version was made from,
    and its contact channels (T, 4) or None. ValueError when the version holds none."""
    info = version_info(action)
    stored = action.get(JOINTS_KEY)
    if not info or stored is None:
        raise ValueError(f"Action {action.name!r} holds no source motion (it is not an IRG Motion version, or was "
                         "made before versions kept their joints): generate it again.")
    joints = np.asarray(stored.to_list() if hasattr(stored, "to_list") else stored, dtype=np.float64)
    joints = joints.reshape(-1, 22, 3)
    raw = action.get(CONTACTS_KEY)
    contacts = None
    if raw is not None:
        contacts = np.asarray(raw.to_list() if hasattr(raw, "to_list") else raw, dtype=np.float64).reshape(-1, 4)
    return joints, contacts


def apply_version(action: bpy.types.Action, armature: bpy.types.Object, **options) -> bpy.types.Action:
    """Retarget a version's source motion onto `armature` as a new version of that armature.

    The new version keeps the prompt, round, tokens, assessment, refinement, model,
    seed and extra; parent is `action`, source "retarget". options: preset (default "auto":
    detect the target's rig), root_mode, foot_lock, smoothing (default: the version's own),
    interpolation."""
    rig.check_armature(armature)
    joints, contacts = source_motion(action)
    info = version_info(action)
    unknown = set(options) - {"preset", "root_mode", "foot_lock", "smoothing", "ik_legs", "interpolation"}
    if unknown:
        raise TypeError(f"unknown option(s) {', '.join(sorted(unknown))}; "
                        "known: preset, root_mode, foot_lock, smoothing, ik_legs, interpolation")
    settings = {"preset": "auto", "root_mode": info.get("root_mode", "root_motion"),
                "foot_lock": bool(info.get("foot_lock", False)), "smoothing": bool(info.get("smoothing", False))}
    settings.update(options)
    return write_version(armature, joints, fps=float(info.get("src_fps", 20.0)), prompt=info.get("prompt", ""),
                         round=int(info.get("round", 1)), tokens=info.get("tokens", ()),
                         assessment=info.get("assessment", ""), refinement=info.get("refinement", ""),
                         model=info.get("model", ""), seed=info.get("seed"), parent=action, source="retarget",
                         extra=info.get("extra"), contacts=contacts, **settings)


def update_info(action: bpy.types.Action, **fields) -> None:
    """Change metadata fields of a version (e.g. the assessment that arrives after its motion,
    the user's `keep` flag, the model's `caption`). TypeError for a field not in UPDATABLE,
    ValueError for an Action that is not a version; nothing changes then."""
    unknown = set(fields) - set(UPDATABLE)
    if unknown:
        raise TypeError(f"cannot update {', '.join(sorted(unknown))}; updatable: {', '.join(UPDATABLE)}")
    info = action.get(NAMESPACE)
    if info is None or not hasattr(info, "to_dict"):
        raise ValueError(f"Action {action.name!r} is not an IRG Motion version")
    current = version_info(action)
    merged = _fields(**{k: fields.get(k, current.get(k)) for k in UPDATABLE if k not in _LATER_FIELDS})
    merged.update({k: convert(fields[k]) for k, convert in _LATER_FIELDS.items() if k in fields})
    for key in fields:
        info[key] = merged[key]


def set_active_version(armature: bpy.types.Object, action: bpy.types.Action) -> None:
    """Make `action` the armature's active Action (bones it keys by quaternion switch to quaternion rotation)."""
    rig.check_armature(armature)
    if not isinstance(action, bpy.types.Action):
        raise ValueError(f"Expected an Action, got {action!r}")
    bones = rig.ensure_pose(armature).bones
    names = [n for n in keyed_bones(action, ("rotation_quaternion",)) if n in bones]
    compat.assign_action(armature, action)
    _use_quaternions(armature, names)


def keyed_bones(action: bpy.types.Action, channels=("rotation_quaternion", "rotation_euler")) -> list[str]:
    """Names of the bones whose rotation (the given channels) the Action keys, in F-Curve order."""
    names = []
    for fcurve in compat.action_fcurves(action):
        path = fcurve.data_path
        channel = next((c for c in channels if path.endswith(f'"].{c}')), None)
        if path.startswith('pose.bones["') and channel:
            name = re.sub(r"\\(.)", r"\1", path[len('pose.bones["'):-len(f'"].{channel}')])  # unescape
            if name not in names:
                names.append(name)
    return names


def delete_version(action: bpy.types.Action) -> None:
    """Delete a version; armatures that played it switch to their latest remaining version."""
    users = [o for o in bpy.data.objects
             if o.type == "ARMATURE" and o.animation_data is not None and o.animation_data.action == action]
    bpy.data.actions.remove(action)
    for obj in users:
        remaining = versions(obj)
        compat.assign_action(obj, remaining[-1] if remaining else None)
