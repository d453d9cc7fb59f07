"""Rig benchmark (bpy): solve + retarget + keys onto a 65-bone Mixamo-style rig, against baselines.

A 196-frame HumanML3D clip (rig_core.load_clip) is put on a Mixamo-named armature
built here: 22 body bones, HeadTop_End, two Toe_End and 4 bones on each of 10
fingers = 65 bones, standing in T-pose with the clip's own bone lengths (so joint
errors in mm mean something). Every method starts from the same rig preset
detection and rest read, and ends with the same bulk key writing into a new
Action (one key per frame, scene at 20 fps); its keys are then evaluated in
Blender (frame_set + pose bones):
  - ours: model_backend.rig_math.solver + irg_blender_addon.retarget (swing + twist by
    directions, parents first, root scaled and floored);
  - MoMask BasicInverseKinematics, 10 and 100 iterations, written here after the
    method MoMask's joints2bvh runs: from identity rotations, for each iteration
    and each joint with children, forward kinematics of the whole skeleton, then
    the joint turns by the quaternion-log mean of the shortest arcs taking its
    current child directions onto the targets. It runs on the rig's own 22 joints;
  - incremental sweeps (rig_core.iterative_ik), 100 sweeps: the same idea without
    the full forward kinematics per joint (a faster variant, for reference);
  - swing-only analytic (rig_core.swing_only): Kabsch at the pelvis and chest,
    shortest arc elsewhere, no twist.
The baselines' world rotations become bone channels with the same conversion as
ours (L = R^-1 W_p^-1 W R). Errors: bone directions (degrees, every mapped bone
with a child, head to the next mapped head, against the clip), joint positions
relative to the hips (mm) and twist jitter (metrics.twist_jitter of the posed
bone matrices: turn about each bone's own axis per frame; direction-only
solvers leave twist to chance). Times are the best of several runs, one thread.
Rigify: the same clip onto the rig Rigify generates from its human metarig (706 bones,
built in a child process: bpy 4.5 can hang at exit once Rigify has run), keyed on its
controls (torso, hips, chest, neck, head, shoulders, FK limbs and the FK spine that takes
what hips and chest leave) with the IK/FK switches keyed, judged on the DEF bones in world
space. The first write on a fresh rig also evaluates it once with the limbs switched to FK
(reading the switches' drivers); later writes find them keyed.
Usage: .venv-bpy50/bin/python benchmarks/rig.py [--data ../shared/data/humanml3d] [--rig all|mixamo|rigify]
"""
from __future__ import annotations

import os
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("BLENDER_USER_RESOURCES", tempfile.mkdtemp(prefix="irg-bench-"))
ROOT = Path(__file__).resolve().parents[1]
for path in (ROOT, ROOT / "benchmarks"):
    if str(path) not in sys.path:
        sys.path.insert(0, str(path))

import bpy  # noqa: E402
import numpy as np  # noqa: E402

import rig_core  # noqa: E402
from timing import best_time  # noqa: E402
from irg_blender_addon.anim import actions, compat  # noqa: E402
from irg_blender_addon.rig import pose, retarget  # noqa: E402
from model_backend.rig_math import metrics, quat, skeleton, solver  # noqa: E402

S = skeleton.HUMANML3D
PREFIX = "mixamorig:"
BODY = {  # HumanML3D joint -> Mixamo bone (its head sits at the joint)
    "pelvis": "Hips", "spine1": "Spine", "spine2": "Spine1", "spine3": "Spine2", "neck": "Neck", "head": "Head",
    **{f"{x}_{j}": f"{side}{b}" for x, side in (("left", "Left"), ("right", "Right"))
       for j, b in (("hip", "UpLeg"), ("knee", "Leg"), ("ankle", "Foot"), ("foot", "ToeBase"),
                    ("collar", "Shoulder"), ("shoulder", "Arm"), ("elbow", "ForeArm"), ("wrist", "Hand"))},
}
FINGERS = ("Thumb", "Index", "Middle", "Ring", "Pinky")


# ---------------------------------------------------------------- the rig

def rig_joints(clip: np.ndarray) -> np.ndarray:
    """The clip's T-pose (its own bone lengths), Blender axes, feet on z = 0."""
    offsets = solver.rest_offsets_for(clip, S)
    pos = np.zeros_like(offsets)
    for j, p in enumerate(S.parents):
        if p >= 0:
            pos[j] = pos[p] + offsets[j]
    pos = skeleton.to_blender(pos)
    pos[:, 2] -= pos[:, 2].min()
    return pos


def build_mixamo_rig(joints: np.ndarray) -> bpy.types.Object:
    """65 bones named like Mixamo's: body, HeadTop_End, Toe_End, 4 bones on each finger."""
    data = bpy.data.armatures.new("mixamo65")
    obj = bpy.data.objects.new("mixamo65", data)
    bpy.context.collection.objects.link(obj)
    bpy.context.view_layer.objects.active = obj
    bpy.ops.object.mode_set(mode="EDIT")
    eb = data.edit_bones
    made = {}

    def bone(name, head, tail, parent):
        b = made[name] = eb.new(PREFIX + name)
        b.head, b.tail = head, tail
        b.align_roll((0.0, -1.0, 0.0) if abs(np.asarray(tail - head)[1]) < 0.9 * np.linalg.norm(tail - head)
                     else (0.0, 0.0, 1.0))
        if parent is not None:
            b.parent = made[parent]

    ix = S.index
    tails = {"pelvis": "spine1", "spine1": "spine2", "spine2": "spine3", "spine3": "neck", "neck": "head"}
    for x in ("left", "right"):
        tails.update({f"{x}_hip": f"{x}_knee", f"{x}_knee": f"{x}_ankle", f"{x}_ankle": f"{x}_foot",
                      f"{x}_collar": f"{x}_shoulder", f"{x}_shoulder": f"{x}_elbow", f"{x}_elbow": f"{x}_wrist"})
    for j, name in enumerate(S.joint_names):  # parents first
        head = joints[j]
        if name in tails:
            tail = joints[ix(tails[name])]
        elif name == "head":
            tail = head + [0.0, 0.0, 0.12]
        elif name.endswith("wrist"):
            tail = head + (head - joints[S.parents[j]]) * 0.35
        else:  # toes
            tail = head + [0.0, -0.07, 0.0]
        parent = BODY[S.joint_names[S.parents[j]]] if S.parents[j] >= 0 else None
        bone(BODY[name], head, tail, parent)
    top = np.array(made["Head"].tail)
    bone("HeadTop_End", top, top + [0.0, 0.0, 0.05], "Head")
    for side in ("Left", "Right"):
        toe = np.array(made[f"{side}ToeBase"].tail)
        bone(f"{side}Toe_End", toe, toe + [0.0, -0.03, 0.0], f"{side}ToeBase")
        hand = made[f"{side}Hand"]
        wrist, along = np.array(hand.head), np.array(hand.tail) - np.array(hand.head)
        palm = wrist + along
        sign = 1.0 if side == "Left" else -1.0
        for k, finger in enumerate(FINGERS):
            spread = np.array([0.0, -0.02 * (2 - k), 0.0])  # thumb in front, pinky behind
            start = (wrist + 0.4 * along + spread) if finger == "Thumb" else palm + spread
            step = np.array([sign * 0.025, 0.0, -0.004])
            parent = f"{side}Hand"
            for n in range(1, 5):
                name = f"{side}Hand{finger}{n}"
                bone(name, start + (n - 1) * step, start + n * step, parent)
                parent = name
    bpy.ops.object.mode_set(mode="OBJECT")
    for b in obj.pose.bones:
        b.rotation_mode = "QUATERNION"
    return obj


# ---------------------------------------------------------------- the MoMask baseline

def _quat_log_mean(q: np.ndarray) -> np.ndarray:
    """exp(mean(log q)) over axis 1 of unit quaternions (T, C, 4) with w >= 0."""
    axis, angle = quat.quat_to_axis_angle(q)
    v = (axis * (angle / 2.0)[..., None]).mean(axis=1)
    half = np.linalg.norm(v, axis=-1)
    return np.concatenate([np.cos(half)[:, None], np.sin(half)[:, None] * v / np.maximum(half, 1e-12)[:, None]], -1)


def momask_ik(targets: np.ndarray, offsets: np.ndarray, iterations: int) -> np.ndarray:
    """Local rotations (T, J, 3, 3) by MoMask's BasicInverseKinematics method (see the module doc)."""
    count, n = targets.shape[:2]
    parents = S.parents
    children = [S.children(j) for j in range(n)]
    local = np.zeros((count, n, 4))
    local[..., 0] = 1.0
    for _ in range(iterations):
        for j in range(n):
            kids = children[j]
            if not kids:
                continue
            rot = quat.quat_to_matrix(local)  # forward kinematics of the whole skeleton, as the method does
            world = np.empty_like(rot)
            pos = np.empty((count, n, 3))
            for k, p in enumerate(parents):
                if p < 0:
                    world[:, k], pos[:, k] = rot[:, k], targets[:, 0]
                else:
                    world[:, k] = world[:, p] @ rot[:, k]
                    pos[:, k] = pos[:, p] + world[:, p] @ offsets[k]
            now = pos[:, kids] - pos[:, j:j + 1]
            want = targets[:, kids] - pos[:, j:j + 1]
            now /= np.linalg.norm(now, axis=-1, keepdims=True) + 1e-10
            want /= np.linalg.norm(want, axis=-1, keepdims=True) + 1e-10
            angle = np.arccos(np.clip(np.sum(now * want, axis=-1), -1.0, 1.0))
            axis = np.einsum("tji,tcj->tci", world[:, j], np.cross(now, want))  # into the joint's frame
            arcs = quat.quat_from_axis_angle(axis, angle)
            delta = arcs[:, 0] if len(kids) == 1 else _quat_log_mean(arcs)
            local[:, j] = quat.quat_mul(local[:, j], delta)
    return quat.quat_to_matrix(local)


# ---------------------------------------------------------------- channels and evaluation

def world_from_locals(local: np.ndarray) -> np.ndarray:
    """World rotations (T, J, 3, 3) from local ones (dataset or Blender axes alike)."""
    world = np.empty_like(local)
    for j, p in enumerate(S.parents):
        world[:, j] = local[:, j] if p < 0 else world[:, p] @ local[:, j]
    return world


def channels_from_world(plan: retarget.Plan, world_joint: np.ndarray, pelvis: np.ndarray):
    """Bone channels for per-joint world rotations (T, 22, 3, 3; Blender axes, rest -> pose)."""
    r = plan.rig
    by_bone = {int(b): j for j, b in enumerate(plan.joint_bone) if b >= 0}
    world = {}
    for b in plan.keyed:
        b = int(b)
        if b in by_bone:
            world[b] = world_joint[:, by_bone[b]]
        else:
            p = int(r.parents[b])
            world[b] = world[p] if p >= 0 else np.broadcast_to(np.eye(3), world_joint[:, 0].shape)
    stacked = np.stack([world[int(b)] for b in plan.keyed], axis=1)
    quats = retarget.local_rotations(plan, stacked)
    location = (pelvis - r.heads[plan.pelvis]) @ r.rest[plan.pelvis]
    return quats, {r.bones[plan.pelvis]: location}


def key(obj, plan: retarget.Plan, quats: np.ndarray, locations: dict, name: str) -> bpy.types.Action:
    """The same bulk key writing for every method (actions.write_version's writer)."""
    frames = 1.0 + np.arange(len(quats))
    hips = plan.rig.bones[plan.pelvis]
    channels = pose.PoseChannels(frames, plan.keyed_names, quats, hips, locations[hips], 20.0, 1.0, locations)
    action = compat.new_action(name)
    actions.key_channels(action, obj, channels, "LINEAR")
    return action


def evaluate(obj, action, plan: retarget.Plan, clip: np.ndarray) -> tuple[float, float, float, float]:
    """(mean, max) bone-direction error in degrees, mean hips-relative joint error in mm, and twist
    jitter: the mean turn of the aimed bones about their own axes, degrees per frame."""
    compat.assign_action(obj, action)
    bones = [plan.rig.bones[b] for b in plan.joint_bone]
    aimed = [plan.rig.bones[b] for b in plan.data_bone]
    heads, mats = [], []
    for f in range(len(clip)):
        bpy.context.scene.frame_set(f + 1)
        heads.append([tuple(obj.pose.bones[n].head) for n in bones])
        mats.append([np.array(obj.pose.bones[n].matrix)[:3, :3] for n in aimed])
    heads = np.array(heads)
    jitter = float(metrics.twist_jitter(np.array(mats))[0].mean())
    errs = []
    for j, k in zip(plan.data_joint, plan.data_aim):
        a, b = heads[:, k] - heads[:, j], clip[:, k] - clip[:, j]
        errs.append(np.degrees(np.arctan2(np.linalg.norm(np.cross(a, b), axis=-1), np.sum(a * b, axis=-1))))
    errs = np.array(errs)
    rel = (heads - heads[:, :1]) - (clip - clip[:, :1])
    return float(errs.mean()), float(errs.max()), float(np.linalg.norm(rel, axis=-1).mean() * 1000.0), jitter


# ---------------------------------------------------------------- Rigify

RIGIFY_SCRIPT = """
import os, sys, bpy, addon_utils
bpy.ops.wm.read_factory_settings(use_empty=True)
if addon_utils.enable("rigify", default_set=True) is None:
    print("NO-RIGIFY"); sys.stdout.flush(); os._exit(0)
bpy.ops.object.armature_human_metarig_add()
bpy.ops.pose.rigify_generate()
bpy.ops.wm.save_as_mainfile(filepath=sys.argv[1])
print("SAVED"); sys.stdout.flush(); os._exit(0)
"""
DEF_AT = {"pelvis": "DEF-spine", "spine1": "DEF-spine.001", "spine2": "DEF-spine.002", "spine3": "DEF-spine.003",
          "neck": "DEF-spine.004", "head": "DEF-spine.006",
          **{f"{x}_{j}": f"DEF-{b}.{s}" for x, s in (("left", "L"), ("right", "R"))
             for j, b in (("hip", "thigh"), ("knee", "shin"), ("ankle", "foot"), ("foot", "toe"),
                          ("collar", "shoulder"), ("shoulder", "upper_arm"), ("elbow", "forearm"), ("wrist", "hand"))}}


def rigify_rig() -> bpy.types.Object | None:
    """Rigify's generated human rig, appended into the current scene (None: this bpy has no Rigify)."""
    import subprocess
    path = Path(tempfile.mkdtemp(prefix="irg-bench-rigify-")) / "rigify.blend"
    out = subprocess.run([sys.executable, "-c", RIGIFY_SCRIPT, str(path)], capture_output=True, text=True,
                         timeout=600).stdout
    if "NO-RIGIFY" in out:
        return None
    with bpy.data.libraries.load(str(path), link=False) as (src, dst):
        dst.objects = ["rig"]
    bpy.context.scene.collection.objects.link(dst.objects[0])
    bpy.context.view_layer.update()
    return dst.objects[0]


def deform_errors(obj, clip: np.ndarray) -> tuple[float, float]:
    """(mean, max) degrees between the DEF bones' world directions (head to the head of the DEF bone
    at the next joint down the chain, evaluated) and the clip's, over every frame."""
    from irg_blender_addon.rig import armature as rig
    pairs = [(j, rig.main_child(j)) for j in range(S.num_joints) if rig.main_child(j) is not None]
    errs = []
    for f in range(len(clip)):
        bpy.context.scene.frame_set(f + 1)
        heads = {n: np.array(obj.pose.bones[b].head) for n, b in DEF_AT.items()}
        for j, k in pairs:
            a = heads[S.joint_names[k]] - heads[S.joint_names[j]]
            b = clip[f, k] - clip[f, j]
            errs.append(np.degrees(np.arctan2(np.linalg.norm(np.cross(a, b)), a @ b)))
    return float(np.mean(errs)), float(np.max(errs))


def rigify_benchmark(clip: np.ndarray, repeats: int) -> list[tuple[str, float]] | None:
    """Timings (label, seconds) of putting the clip onto the generated Rigify rig, and its DEF error."""
    obj = rigify_rig()
    if obj is None:
        return None
    first = best_time(lambda: actions.write_version(obj, clip, fps=20.0, prompt="first"), 1)

    def setup():
        return retarget.plan_for(obj, retarget.bone_map(obj, "auto"))

    plan = setup()
    out = retarget.retarget(plan, clip, fps=20.0)
    hips = plan.rig.bones[plan.pelvis]
    channels = pose.PoseChannels(1.0 + np.arange(len(clip)), out.bone_names, out.quaternions, hips,
                                 out.locations[hips], 20.0, out.scale, out.locations,
                                 properties=plan.properties)
    made = []
    rows = [("first write on a fresh rig (reads the rig at FK once)", first),
            ("rig preset detection + rest read + plan", best_time(setup, repeats)),
            ("retarget (solve included)", best_time(lambda: retarget.retarget(plan, clip, fps=20.0), repeats)),
            ("key writing (bulk, new Action)", best_time(lambda: made.append(
                actions.key_channels(compat.new_action("k"), obj, channels)), repeats)),
            ("whole actions.write_version (keys included)", best_time(
                lambda: made.append(actions.write_version(obj, clip, fps=20.0, prompt="bench")), repeats))]
    mean, worst = deform_errors(obj, clip)
    rows.append((f"DEF bone direction error mean / max (deg): {mean:.2g} / {worst:.2g}; "
                 f"{len(plan.keyed)} of {len(obj.data.bones)} bones keyed", float("nan")))
    return rows


# ---------------------------------------------------------------- the run

def main() -> None:
    args = rig_core.clip_arguments(__doc__)

    name, clip_hml = rig_core.load_clip(args.data, args.frames)
    clip = skeleton.to_blender(clip_hml)
    if args.rig in ("all", "rigify"):
        bpy.ops.wm.read_factory_settings(use_empty=True)
        bpy.context.scene.render.fps = 20
        rows = rigify_benchmark(clip, args.repeats)
        print(f"Rigify benchmark: {name}, {args.frames} frames at 20 fps onto Rigify's generated human rig, "
              f"Blender {bpy.app.version_string}, best of {args.repeats}, "
              f"OMP_NUM_THREADS={os.environ['OMP_NUM_THREADS']}\n")
        if rows is None:
            print(f"bpy {bpy.app.version_string} has no Rigify add-on: skipped\n")
        else:
            print("| step | time ms |\n|---|---|")
            for label, sec in rows:
                print(f"| {label} | {sec * 1e3:.1f} |" if sec == sec else f"| {label} | |")
            print()
    if args.rig == "rigify":
        return
    bpy.ops.wm.read_factory_settings(use_empty=True)
    bpy.context.scene.render.fps = 20
    obj = build_mixamo_rig(rig_joints(clip_hml))
    assert len(obj.data.bones) == 65

    def setup():
        found = retarget.bone_map(obj, "auto")
        return retarget.make_plan(retarget.read_rest(obj), found.mapping, found.root_bone)

    plan = setup()
    rest22 = plan.rest_joints
    offsets = np.array([rest22[j] - rest22[p] if p >= 0 else np.zeros(3) for j, p in enumerate(S.parents)])
    hips_path = clip[:, 0] - [0.0, 0.0, clip[:, [7, 8, 10, 11], 2].min()]  # source hips, feet on the floor

    def ours():
        p = setup()
        out = retarget.retarget(p, clip, fps=20.0)
        return out.quaternions, out.locations

    def from_joints(local_fn):
        def run():
            p = setup()
            return channels_from_world(p, world_from_locals(local_fn()), hips_path)
        return run

    off_hml = skeleton.from_blender(offsets)
    c = np.array([[1.0, 0.0, 0.0], [0.0, 0.0, -1.0], [0.0, 1.0, 0.0]])  # dataset -> Blender axes

    def to_blender_rot(q_hml):  # local quats in dataset axes -> local rotations in Blender axes
        return c @ quat.quat_to_matrix(q_hml) @ c.T

    methods = {
        "ours: solve + retarget (swing + twist)": ours,
        "MoMask IK, 10 iterations": from_joints(lambda: momask_ik(clip, offsets, 10)),
        "MoMask IK, 100 iterations": from_joints(lambda: momask_ik(clip, offsets, 100)),
        "incremental sweeps (rig_core), 100": from_joints(
            lambda: to_blender_rot(rig_core.iterative_ik(clip_hml, off_hml, 100))),
        "swing-only analytic (rig_core)": from_joints(lambda: to_blender_rot(rig_core.swing_only(clip_hml, off_hml))),
    }
    rows = []
    for label, fn in methods.items():
        repeats = 1 if "100" in label else args.repeats
        made = []

        def full():
            quats, locations = fn()
            made.append(key(obj, plan, quats, locations, label))

        seconds = best_time(full, repeats)
        errs = evaluate(obj, made[-1], plan, clip)
        for action in made:
            bpy.data.actions.remove(action)
        rows.append((label, seconds, *errs))

    # Where our time goes, and the whole user-facing call.
    quats, locations = ours()
    parts = [
        ("rig preset detection + rest read + plan", best_time(setup, args.repeats)),
        ("solver (model_backend.rig_math.solver.solve)", best_time(lambda: retarget.solve_fronts(clip), args.repeats)),
        ("retarget (solve included)", best_time(lambda: retarget.retarget(plan, clip, fps=20.0), args.repeats)),
    ]
    keyed = []
    parts.append(("key writing (bulk, new Action)",
                  best_time(lambda: keyed.append(key(obj, plan, quats, locations, "k")), args.repeats)))
    versions = []
    parts.append(("whole actions.write_version", best_time(
        lambda: versions.append(actions.write_version(obj, clip, fps=20.0, prompt="bench")), args.repeats)))
    for action in keyed + versions:
        bpy.data.actions.remove(action)

    ours_row = rows[0]
    print(f"Rig benchmark: {name}, {args.frames} frames at 20 fps onto a 65-bone Mixamo-style rig "
          f"({len(plan.keyed)} bones keyed), Blender {bpy.app.version_string}, best of {args.repeats} "
          f"(1 for 100 iterations), OMP_NUM_THREADS={os.environ['OMP_NUM_THREADS']}\n")
    print("| method (all: detection + rest read + solve + channels + keys) | time ms | time x ours | "
          "bone dir err mean / max deg | err x ours (mean) | joint err mm | twist jitter deg/frame |")
    print("|---|---|---|---|---|---|---|")
    for label, sec, dm, dx, mm, jit in rows:
        print(f"| {label} | {sec * 1e3:.1f} | {sec / ours_row[1]:.1f} | {dm:.2g} / {dx:.2g} | "
              f"{dm / max(ours_row[2], 1e-12):.3g} | {mm:.2g} | {jit:.2f} |")
    print("\n| our step | time ms |\n|---|---|")
    for label, sec in parts:
        print(f"| {label} | {sec * 1e3:.1f} |")


if __name__ == "__main__":
    main()
