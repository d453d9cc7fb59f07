"""Clips in the Bandai Namco dataset's layout, written by tests (the dataset itself is never needed).

Every joint has position and rotation channels, centimetres, Y up, facing +Z, like the
dataset's BVH files; the skeleton's rest axes are world-aligned to keep the numbers readable.
"""
from __future__ import annotations

import json
from pathlib import Path

# A Bandai-style skeleton with world-aligned rest axes (name, parent, offset in cm).
RIG = (
    ("joint_Root", None, (0, 0, 0)), ("Hips", "joint_Root", (0, 95, 0)), ("Spine", "Hips", (0, 15, 0)),
    ("Chest", "Spine", (0, 10, 0)), ("Neck", "Chest", (0, 16, 0)), ("Head", "Neck", (0, 7, 0)),
    ("Shoulder_L", "Chest", (5, 13, 0)), ("UpperArm_L", "Shoulder_L", (10, 0, 0)),
    ("LowerArm_L", "UpperArm_L", (0, -26, 0)), ("Hand_L", "LowerArm_L", (0, -24, 0)),
    ("Shoulder_R", "Chest", (-5, 13, 0)), ("UpperArm_R", "Shoulder_R", (-10, 0, 0)),
    ("LowerArm_R", "UpperArm_R", (0, -26, 0)), ("Hand_R", "LowerArm_R", (0, -24, 0)),
    ("UpperLeg_L", "Hips", (9, -6, 0)), ("LowerLeg_L", "UpperLeg_L", (0, -40, 0)),
    ("Foot_L", "LowerLeg_L", (0, -41, 0)), ("Toes_L", "Foot_L", (0, -6, 12)),
    ("UpperLeg_R", "Hips", (-9, -6, 0)), ("LowerLeg_R", "UpperLeg_R", (0, -40, 0)),
    ("Foot_R", "LowerLeg_R", (0, -41, 0)), ("Toes_R", "Foot_R", (0, -6, 12)),
)
FPS = 30


def write_bandai_bvh(path: Path, frames: int = 61, speed_cm: float = 4.0, spine_channel_y: float | None = None,
                     yaw_deg_per_frame: float = 0.0) -> Path:
    """A clip in the Bandai layout: the hips move along +Z at `speed_cm` per frame (and turn by
    `yaw_deg_per_frame` about Y); every other joint's position channels equal its offset unless
    `spine_channel_y` overrides Spine's."""
    names = [r[0] for r in RIG]
    children = {n: [r[0] for r in RIG if r[1] == n] for n in names}
    lines = ["HIERARCHY"]

    def emit(name: str, depth: int) -> None:
        pad = "\t" * depth
        offset = dict((r[0], r[2]) for r in RIG)[name]
        lines.append(f"{pad}{'ROOT' if depth == 0 else 'JOINT'} {name}")
        lines.append(pad + "{")
        lines.append(f"{pad}\tOFFSET {offset[0]} {offset[1]} {offset[2]}")
        lines.append(f"{pad}\tCHANNELS 6 Xposition Yposition Zposition Zrotation Xrotation Yrotation ")
        for child in children[name]:
            emit(child, depth + 1)
        if not children[name]:
            lines.extend([f"{pad}\tEnd Site", pad + "\t{", f"{pad}\t\tOFFSET 0.0 0.0 0.0", pad + "\t}"])
        lines.append(pad + "}")

    emit("joint_Root", 0)
    lines += ["MOTION", f"Frames:\t{frames}", f"Frame Time:\t{1 / FPS:.7f}"]
    order: list[str] = []

    def dfs(name: str) -> None:
        order.append(name)
        for child in children[name]:
            dfs(child)

    dfs("joint_Root")
    offsets = dict((r[0], r[2]) for r in RIG)
    for t in range(frames):
        row: list[float] = []
        for name in order:
            pos = list(offsets[name])
            rot = [0.0, 0.0, 0.0]
            if name == "Hips":
                pos = [0.0, 95.0, speed_cm * t]
                rot = [0.0, 0.0, yaw_deg_per_frame * t]
            if name == "Spine" and spine_channel_y is not None:
                pos = [0.0, spine_channel_y, 0.0]
            row += pos + rot
        lines.append(" ".join(f"{v:.5f}" for v in row))
    path.write_text("\n".join(lines) + "\n")
    return path


def write_dataset(root: Path, clips: dict[int, list[tuple[str, str, int]]]) -> Path:
    """A tiny dataset tree: per dataset number, (content, style, id) clips plus cfg label files."""
    for number, items in clips.items():
        folder = root / "dataset" / f"Bandai-Namco-Research-Motiondataset-{number}"
        (folder / "data").mkdir(parents=True)
        contents = sorted({c for c, _, _ in items})
        styles = sorted({s for _, s, _ in items})
        (folder / "cfg").mkdir()
        (folder / "cfg" / "content_label.txt").write_text("\n".join(f"dataset-{number}_{c}" for c in contents))
        (folder / "cfg" / "style_label.txt").write_text("\n".join(f"dataset-{number}_{s}" for s in styles))
        for content, style, ident in items:
            stem = f"dataset-{number}_{content}_{style}_{ident:03d}"
            write_bandai_bvh(folder / "data" / f"{stem}.bvh", speed_cm=6.0 if content == "run" else 4.0)
            (folder / "data" / f"{stem}.json").write_text(
                json.dumps({"content": contents.index(content), "style": styles.index(style)}))
    return root
