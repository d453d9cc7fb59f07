"""Rigs as animators bring them, built for real, and the measure they are judged by.

- Rigify: its human metarig and the rig Rigify generates from it, built in a child
  process (bpy 4.5 can hang in its exit handlers once Rigify has run, so the child
  saves a .blend and leaves with os._exit; this process only appends the objects).
- Preset rigs: an armature with a rig preset's bone names standing on the default
  rig's rest joints (between bones split their segment, a root bone at the origin),
  in centimetres under a 0.01 object scale when asked (as Mixamo files arrive), and
  the same sent through Blender's bundled FBX exporter and importer (defaults, plus
  automatic bone orientation).
- Rig settings: Euler rotation modes, "inherit rotation" off, a control rig whose
  deform bones copy the controls' rotations by constraint.
- The measure: directions between the heads of the deforming bones at the joints, in
  world space from the evaluated depsgraph, against the source joints after one
  global yaw alignment, per limb, in degrees.
"""
from __future__ import annotations

import atexit
import shutil
import subprocess
import sys
import tempfile
import textwrap
from pathlib import Path

import bpy
import numpy as np

from irg_blender_addon.rig import armature as rig, presets
from irg_blender_addon.core import skeleton

S = skeleton.HUMANML3D
IX = S.index
SIDES = (("L", "left"), ("R", "right"))
# The joint each joint's bone aims at, and the limb it belongs to.
NEXT = {"pelvis": "spine1", "spine1": "spine2", "spine2": "spine3", "spine3": "neck", "neck": "head"}
LIMB = {"pelvis": "spine", "spine1": "spine", "spine2": "spine", "spine3": "spine", "neck": "neck"}
for _s, _x in SIDES:
    NEXT.update({f"{_x}_hip": f"{_x}_knee", f"{_x}_knee": f"{_x}_ankle", f"{_x}_ankle": f"{_x}_foot",
                 f"{_x}_collar": f"{_x}_shoulder", f"{_x}_shoulder": f"{_x}_elbow", f"{_x}_elbow": f"{_x}_wrist"})
    LIMB.update({f"{_x}_{j}": f"{_x} leg" for j in ("hip", "knee", "ankle")})
    LIMB.update({f"{_x}_{j}": f"{_x} arm" for j in ("collar", "shoulder", "elbow")})

# The Rigify deform bone whose head sits at each joint (the generated rig's DEF bones).
RIGIFY_DEFORM = {"pelvis": "spine", "spine1": "spine.001", "spine2": "spine.002", "spine3": "spine.003",
                 "neck": "spine.004", "head": "spine.006"}
for _s, _x in SIDES:
    RIGIFY_DEFORM.update({f"{_x}_{j}": f"{b}.{_s}" for j, b in (
        ("hip", "thigh"), ("knee", "shin"), ("ankle", "foot"), ("foot", "toe"), ("collar", "shoulder"),
        ("shoulder", "upper_arm"), ("elbow", "forearm"), ("wrist", "hand"))})

RIGIFY_SCRIPT = textwrap.dedent("""
    import os, sys
    import bpy
    import addon_utils
    bpy.ops.wm.read_factory_settings(use_empty=True)
    if addon_utils.enable("rigify", default_set=True) is None:
        sys.stdout.write("NO-RIGIFY\\n"); sys.stdout.flush(); os._exit(0)
    bpy.ops.object.armature_human_metarig_add()
    bpy.ops.pose.rigify_generate()
    bpy.ops.wm.save_as_mainfile(filepath=sys.argv[1])
    sys.stdout.write("SAVED\\n"); sys.stdout.flush()
    os._exit(0)
""")


class RigifyBuild:
    """Rigify's human metarig and the rig it generates, saved to a .blend by a child process started
    at once (bpy 4.5 can hang in its exit handlers once Rigify has run: the child saves and leaves
    with os._exit, and this process never runs Rigify itself)."""

    def __init__(self, timeout: float = 300.0) -> None:
        self.folder = Path(tempfile.mkdtemp(prefix="irg-rigify-"))
        self.path = self.folder / "rigify.blend"
        self.timeout = timeout
        self.proc = subprocess.Popen([sys.executable, "-c", RIGIFY_SCRIPT, str(self.path)], stdout=subprocess.PIPE,
                                     stderr=subprocess.PIPE, text=True)
        self._done: tuple[Path, str] | None = None
        atexit.register(self.close)

    def result(self) -> tuple[Path, str]:
        """(the .blend, "") once built; else (path, why not): no Rigify in this bpy, or the child's failure."""
        if self._done is None:
            try:
                out, err = self.proc.communicate(timeout=self.timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                out, err = self.proc.communicate()
                err += f"\n(killed after {self.timeout:.0f} s)"
            if "NO-RIGIFY" in out:
                why = f"bpy {bpy.app.version_string} has no Rigify add-on"
            elif "SAVED" not in out or not self.path.exists():
                why = f"Rigify generation failed:\n{out[-2000:]}\n{err[-2000:]}"
            else:
                why = ""
            self._done = (self.path, why)
        return self._done

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        shutil.rmtree(self.folder, ignore_errors=True)


_BUILD: list[RigifyBuild] = []


def rigify_build() -> RigifyBuild:
    """The session's Rigify build, started by the first call (test modules call it when imported,
    so it runs while other tests do)."""
    if not _BUILD:
        _BUILD.append(RigifyBuild())
    return _BUILD[0]


def append_objects(path: Path, names: tuple[str, ...]) -> dict[str, bpy.types.Object]:
    """Append objects from a .blend into the current scene (their bone widgets come along)."""
    with bpy.data.libraries.load(str(path), link=False) as (src, dst):
        dst.objects = [n for n in src.objects if n in names]
    for obj in dst.objects:
        bpy.context.scene.collection.objects.link(obj)
    bpy.context.view_layer.update()
    return {obj.name: obj for obj in dst.objects}


# ---------------------------------------------------------------- preset rigs

def _segments(preset: presets.Preset) -> list[tuple[str, np.ndarray, np.ndarray, str | None]]:
    """(bone, head, tail, parent) for a preset's bones on the default rest joints, parents first."""
    joints = rig.default_rest_joints()
    out, bone_of = [], {}
    root = preset.root_bone
    if root:
        out.append((root, np.zeros(3), np.array([0.0, 0.15, 0.0]), None))
    for j, name in enumerate(S.joint_names):
        if name not in preset.bones:
            continue
        head = joints[j]
        child = rig.main_child(j)
        tail = joints[child] if child is not None else head + (
            [0.0, 0.0, 0.15] if name == "head" else [0.0, -0.06, 0.0] if name.endswith("_foot")
            else (head - joints[S.parents[j]]) * 0.35)
        a = S.parents[j]
        while a >= 0 and S.joint_names[a] not in preset.bones:
            a = S.parents[a]
        parent = bone_of[a] if a >= 0 else root
        between = preset.between.get(name, ())
        cuts = np.linspace(0.0, 1.0, len(between) + 2)
        names = [preset.bones[name], *between]
        for k, bone in enumerate(names):  # a segment split among its between bones
            out.append((bone, head + (tail - head) * cuts[k], head + (tail - head) * cuts[k + 1], parent))
            parent = bone
        bone_of[j] = names[-1] if child is not None else names[0]
    return out


def build_preset_rig(preset_id: str, name: str, *, prefix: str = "", centimetres: bool = False,
                     y_up: bool = False) -> bpy.types.Object:
    """An armature with a bundled preset's bone names (each name with `prefix`) on the default
    rest joints; in centimetres under a 0.01 object scale, and with Y-up bones under a 90 degree
    object rotation (as Mixamo files arrive), when asked. Active and selected."""
    preset = presets.load_presets()[preset_id]
    data = bpy.data.armatures.new(name)
    obj = bpy.data.objects.new(name, data)
    bpy.context.scene.collection.objects.link(obj)
    bpy.context.view_layer.objects.active = obj
    obj.select_set(True)
    unit = 100.0 if centimetres else 1.0
    to_data = np.array([[1.0, 0, 0], [0, 0, 1.0], [0, -1.0, 0]]) if y_up else np.eye(3)  # world Z up -> data Y up
    bpy.ops.object.mode_set(mode="EDIT")
    made = {}
    for bone, head, tail, parent in _segments(preset):
        eb = made[bone] = data.edit_bones.new(prefix + bone)
        eb.head, eb.tail = to_data @ head * unit, to_data @ tail * unit
        front = (0.0, -1.0, 0.0) if abs(tail[2] - head[2]) > 0.5 * np.linalg.norm(tail - head) else (0.0, 0.0, 1.0)
        eb.align_roll(to_data @ np.array(front))
        if parent is not None:
            eb.parent = made[parent]
    bpy.ops.object.mode_set(mode="OBJECT")
    if centimetres:
        obj.scale = (0.01, 0.01, 0.01)
    if y_up:
        obj.rotation_euler = (np.pi / 2, 0.0, 0.0)
    bpy.context.view_layer.update()
    return obj


def ensure_fbx() -> None:
    """Blender's bundled FBX add-on, enabled."""
    if not hasattr(bpy.ops.import_scene, "fbx") or not hasattr(bpy.ops.export_scene, "fbx"):
        import addon_utils
        addon_utils.enable("io_scene_fbx", default_set=True)


def fbx_round_trip(obj: bpy.types.Object, path: Path) -> bpy.types.Object:
    """Export `obj` alone with the FBX exporter's defaults, delete it, import the file with the
    importer's defaults plus automatic bone orientation; the imported armature."""
    ensure_fbx()
    for other in bpy.context.view_layer.objects:
        other.select_set(other == obj)
    bpy.context.view_layer.objects.active = obj
    bpy.ops.export_scene.fbx(filepath=str(path), use_selection=True)
    data = obj.data
    bpy.data.objects.remove(obj)
    bpy.data.armatures.remove(data)
    bpy.ops.import_scene.fbx(filepath=str(path), automatic_bone_orientation=True)
    imported = [o for o in bpy.context.selected_objects if o.type == "ARMATURE"]
    assert len(imported) == 1, [o.name for o in bpy.context.selected_objects]
    bpy.context.view_layer.update()
    return imported[0]


# ---------------------------------------------------------------- rig settings

def set_euler_modes(obj: bpy.types.Object) -> dict[str, str]:
    """Every bone to an Euler mode, cycling through Blender's six orders; {bone: order}."""
    orders = ("XYZ", "XZY", "YXZ", "YZX", "ZXY", "ZYX")
    modes = {}
    for k, bone in enumerate(obj.pose.bones):
        bone.rotation_mode = modes[bone.name] = orders[k % len(orders)]
    return modes


def set_hinges(obj: bpy.types.Object, names) -> None:
    """Turn "inherit rotation" off on these bones."""
    for name in names:
        obj.data.bones[name].use_inherit_rotation = False


def add_control_bones(obj: bpy.types.Object, joints) -> dict[str, str]:
    """For each joint's bone of the default rig, a control bone CTRL-<joint> laid over it (same
    parent) whose rotation the bone copies by a Copy Rotation constraint (world space, rolled
    differently, so keying the bone itself or the wrong frame would show); {bone: control}."""
    bpy.context.view_layer.objects.active = obj
    bpy.ops.object.mode_set(mode="EDIT")
    eb = obj.data.edit_bones
    made = {}
    for joint in joints:
        bone = eb[joint]
        ctrl = eb.new(f"CTRL-{joint}")
        ctrl.head, ctrl.tail, ctrl.roll = bone.head, bone.tail, bone.roll + 0.7
        ctrl.parent = bone.parent
        made[joint] = ctrl.name
    bpy.ops.object.mode_set(mode="OBJECT")
    for joint, ctrl in made.items():
        con = obj.pose.bones[joint].constraints.new("COPY_ROTATION")
        con.target, con.subtarget = obj, ctrl
    bpy.context.view_layer.update()
    return made


# ---------------------------------------------------------------- the measure

def deform_chains(mapping: dict[str, str]) -> list[tuple[str, str, str, str]]:
    """(bone at a joint, bone at the next joint, joint, next joint) for each mapped segment."""
    out = []
    for joint, bone in mapping.items():
        nxt = NEXT.get(joint)
        while nxt is not None and nxt not in mapping:
            nxt = NEXT.get(nxt)
        if joint in NEXT and nxt is not None:
            out.append((bone, mapping[nxt], joint, nxt))
    return out


def world_heads(obj: bpy.types.Object, names, frames) -> np.ndarray:
    """(F, N, 3) world-space heads of pose bones, evaluated (depsgraph) at each scene frame."""
    scene = bpy.context.scene
    out = []
    for f in frames:
        scene.frame_set(int(f))
        evaluated = obj.evaluated_get(bpy.context.evaluated_depsgraph_get())
        world = np.array(evaluated.matrix_world)
        heads = np.array([tuple(evaluated.pose.bones[n].head) for n in names])
        out.append(heads @ world[:3, :3].T + world[:3, 3])
    return np.array(out)


def yaw_aligned_angles(rig_dirs: np.ndarray, source_dirs: np.ndarray) -> tuple[np.ndarray, float]:
    """Angles (degrees, like the inputs' leading shape) between direction vectors after the one
    turn about +Z that best aligns all of `rig_dirs` onto `source_dirs`; and that turn (degrees)."""
    a = rig_dirs / np.linalg.norm(rig_dirs, axis=-1, keepdims=True)
    b = source_dirs / np.linalg.norm(source_dirs, axis=-1, keepdims=True)
    yaw = np.arctan2(np.sum(a[..., 0] * b[..., 1] - a[..., 1] * b[..., 0]),
                     np.sum(a[..., 0] * b[..., 0] + a[..., 1] * b[..., 1]))
    c, s = np.cos(yaw), np.sin(yaw)
    turned = a @ np.array([[c, -s, 0.0], [s, c, 0.0], [0.0, 0.0, 1.0]]).T
    cross = np.linalg.norm(np.cross(turned, b), axis=-1)
    return np.degrees(np.arctan2(cross, np.sum(turned * b, axis=-1))), float(np.degrees(yaw))


def limb_errors(obj: bpy.types.Object, chains, source: np.ndarray, frames) -> tuple[dict, float]:
    """{limb: (mean, max) degrees} of the deforming bones' directions against `source` (T, 22, 3;
    row k is scene frame frames[0] + k), and the yaw used."""
    names = sorted({c[0] for c in chains} | {c[1] for c in chains})
    ix = {n: i for i, n in enumerate(names)}
    heads = world_heads(obj, names, frames)
    rows = np.asarray(list(frames)) - frames[0]
    rig_dirs = np.stack([heads[:, ix[b]] - heads[:, ix[a]] for a, b, _, _ in chains], axis=1)
    src_dirs = np.stack([source[rows, IX(k)] - source[rows, IX(j)] for _, _, j, k in chains], axis=1)
    angles, yaw = yaw_aligned_angles(rig_dirs, src_dirs)
    per_limb: dict[str, list[np.ndarray]] = {}
    for k, (_, _, joint, _) in enumerate(chains):
        per_limb.setdefault(LIMB[joint], []).append(angles[:, k])
    return {limb: (float(np.mean(v)), float(np.max(v))) for limb, v in per_limb.items()}, yaw
