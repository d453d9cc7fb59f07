"""Thumbnail strips and contact sheets, rendered in a separate headless Blender (or bpy) process.

Run as `blender -b --factory-startup --python render_worker.py -- REQUEST.json`, or
`python render_worker.py REQUEST.json` with a Python that has the `bpy` module. It
imports nothing of the add-on (only bpy and numpy), so Blender's UI never waits for
a render: the add-on writes the versions to render into a small temporary .blend
(bpy.data.libraries.write) and reads the results back.

REQUEST.json:
    {"width": 320, "height": 240,
     "items": [{"key": "k", "rig": "/tmp/rig-0.blend", "armature": "Armature", "meshes": ["Body"],
                "frames": [1, 60, 120, 180], "path_frames": [1, 20, ...],
                "channels": [["pose.bones[\"pelvis\"].location", 0], ...], "values": "/tmp/k.npy",
                "out": "/cache/walk.v001.png"}],
     "sheet": {"out": "/dir/batch.png", "title": "...", "frames": 4,
               "rows": [{"title": "a person walks", "status": "done: walk.v001",
                         "failed": false, "strip": "/cache/walk.v001.png"}]}}

`rig` is a .blend holding the armature object and the meshes bound to it, without
its animation; `values` is a float32 array (channels, frames + path_frames): the
Action's F-Curves already evaluated by the add-on at those frames, so no keys have
to be written out and the pose (constraints, drivers on the rig) evaluates here.

Each item gives one PNG strip: a Workbench render of the armature at each of its
`frames`, side by side, from an orthographic camera at the character's size: fixed
when the whole path fits within FOLLOW_AFTER figures, else following the character.
An armature with no mesh bound to it is drawn as a skinned stick figure made from its
deform bones. `sheet` (optional) composes one PNG: a row per entry with its title and
status (drawn with Blender's own font as text objects, rendered flat) and its strip;
a failed row shows FAILED in red.

Progress goes to stdout as JSON lines: {"done": key, "out": path}, {"error": key,
"message": ...}, {"sheet": path}, and {"finished": true} at the end. Outputs are
written to a temporary name and renamed, so a reader never sees half a PNG.
"""
from __future__ import annotations

import json
import math
import os
import sys
import tempfile
import textwrap

import bpy
import numpy as np
from mathutils import Matrix, Vector

BACKGROUND = (0.23, 0.24, 0.26)          # linear RGB of the render background
BODY_COLOR = (0.85, 0.62, 0.38, 1.0)
VIEW_DIRECTION = Vector((0.55, -1.0, 0.42)).normalized()  # from the target towards the camera: front right, above
VIEW_ROTATION = VIEW_DIRECTION.to_track_quat("Z", "Y")   # the camera looks down its -Z: back along the direction
FOLLOW_AFTER = 1.6   # a path wider than this many figures: the camera follows the character
SHEET_TEXT_WIDTH = 420
SHEET_SCALE = 2                          # sheet strips are the thumbnails at 1/SHEET_SCALE


def emit(**message) -> None:
    print(json.dumps(message), flush=True)


def _png_write(path: str, pixels: np.ndarray) -> None:
    """Write (H, W, 4) float RGBA (row 0 at the top) to an RGB PNG, fully compressed, atomically."""
    height, width = pixels.shape[:2]
    image = bpy.data.images.new("irg_out", width, height, alpha=False)
    settings = bpy.context.scene.render.image_settings
    saved = settings.file_format, settings.color_mode, settings.compression
    try:
        image.pixels.foreach_set(np.ascontiguousarray(pixels[::-1]).ravel().astype(np.float32))
        folder = os.path.dirname(os.path.abspath(path))
        fd, tmp = tempfile.mkstemp(prefix=".irg-", suffix=".png", dir=folder)
        os.close(fd)
        settings.file_format, settings.color_mode, settings.compression = "PNG", "RGB", 100
        image.save_render(tmp, scene=bpy.context.scene)
        os.replace(tmp, path)
    finally:
        settings.file_format, settings.color_mode, settings.compression = saved
        bpy.data.images.remove(image)


def _png_read(path: str) -> np.ndarray:
    """(H, W, 4) float RGBA, row 0 at the top."""
    image = bpy.data.images.load(path, check_existing=False)
    try:
        width, height = image.size
        buf = np.empty(width * height * 4, dtype=np.float32)
        image.pixels.foreach_get(buf)
        return buf.reshape(height, width, 4)[::-1].copy()
    finally:
        bpy.data.images.remove(image)


# ---------------------------------------------------------------- scene

def _setup_scene(width: int, height: int) -> bpy.types.Scene:
    scene = bpy.context.scene
    scene.render.engine = "BLENDER_WORKBENCH"
    scene.render.resolution_x, scene.render.resolution_y = width, height
    scene.render.resolution_percentage = 100
    scene.render.film_transparent = False
    scene.render.image_settings.file_format = "PNG"
    scene.view_settings.view_transform = "Standard"
    shading = scene.display.shading
    shading.light = "STUDIO"
    shading.color_type = "OBJECT"
    shading.show_shadows = False
    scene.display.render_aa = "8"
    if scene.world is None:
        scene.world = bpy.data.worlds.new("irg_world")
    scene.world.color = BACKGROUND
    camera = bpy.data.objects.new("irg_camera", bpy.data.cameras.new("irg_camera"))
    camera.data.type = "ORTHO"
    scene.collection.objects.link(camera)
    scene.camera = camera
    return scene


_loaded: dict[str, dict[str, str]] = {}   # rig file -> {name in the request: name here}


def _load_rig(path: str) -> dict[str, str]:
    """Append a rig file's objects once; their names here (a second rig may clash with the first)."""
    if path not in _loaded:
        with bpy.data.libraries.load(path, link=False) as (src, dst):
            names = list(src.objects)
            dst.objects = list(names)
        _loaded[path] = {name: obj.name for name, obj in zip(names, dst.objects) if obj is not None}
    return _loaded[path]


class Channels:
    """The sampled F-Curve values of one item, applied to the rig frame by frame."""

    def __init__(self, owner: bpy.types.Object, channels: list, values: np.ndarray):
        self.values = values
        self.setters = []
        groups: dict[tuple[str, str], list[tuple[int, int]]] = {}
        for row, (path, index) in enumerate(channels):
            if path.endswith('"]') and path.rfind("[") > path.rfind("."):  # a custom property
                head, key = path[:path.rindex("[")], path[path.rindex("[") + 2:-2]
                target = owner.path_resolve(head) if head else owner
                self.setters.append(("item", target, key, [(row, 0)]))
                continue
            head, _, prop = path.rpartition(".")
            groups.setdefault((head, prop), []).append((row, int(index)))
        for (head, prop), rows in groups.items():
            target = owner.path_resolve(head) if head else owner
            self.setters.append(("attr", target, prop, rows))

    def apply(self, column: int) -> None:
        for kind, target, name, rows in self.setters:
            if kind == "item":
                target[name] = float(self.values[rows[0][0], column])
                continue
            current = getattr(target, name)
            if isinstance(current, (int, float)):
                setattr(target, name, float(self.values[rows[0][0], column]))
                continue
            vector = list(current)
            for row, index in rows:
                vector[index] = float(self.values[row, column])
            setattr(target, name, vector)
        bpy.context.view_layer.update()


def _stick_figure(armature: bpy.types.Object) -> bpy.types.Object:
    """A mesh of one tapered box per deform bone, skinned to the armature (bones are not rendered)."""
    bones = [b for b in armature.data.bones if b.use_deform] or list(armature.data.bones)
    verts, faces, groups = [], [], []
    for bone in bones:
        head, tail = Vector(bone.head_local), Vector(bone.tail_local)
        axis = tail - head
        length = axis.length
        if length < 1e-6:
            continue
        side = axis.orthogonal().normalized()
        other = axis.cross(side).normalized()
        r0, r1 = max(0.02, 0.14 * length), max(0.012, 0.08 * length)
        base = len(verts)
        for point, r in ((head, r0), (tail, r1)):
            for a, b in ((1, 1), (-1, 1), (-1, -1), (1, -1)):
                verts.append(point + (a * side + b * other) * r)
        faces += [(base + i, base + (i + 1) % 4, base + 4 + (i + 1) % 4, base + 4 + i) for i in range(4)]
        faces += [(base + 3, base + 2, base + 1, base), (base + 4, base + 5, base + 6, base + 7)]
        groups.append((bone.name, range(base, base + 8)))
    mesh = bpy.data.meshes.new("irg_sticks")
    mesh.from_pydata([tuple(v) for v in verts], [], faces)
    obj = bpy.data.objects.new("irg_sticks", mesh)
    for name, indices in groups:
        obj.vertex_groups.new(name=name).add(list(indices), 1.0, "REPLACE")
    obj.matrix_world = armature.matrix_world.copy()
    modifier = obj.modifiers.new("Armature", "ARMATURE")
    modifier.object = armature
    bpy.context.scene.collection.objects.link(obj)
    return obj


def _pose_points(armature: bpy.types.Object, meshes: list, channels: Channels, column: int) -> np.ndarray:
    """World positions of every bone's head and tail, and the deformed meshes' bounds, at one column."""
    channels.apply(column)
    world = armature.matrix_world
    points = [tuple(world @ pb.head) for pb in armature.pose.bones]
    points += [tuple(world @ pb.tail) for pb in armature.pose.bones]
    depsgraph = bpy.context.evaluated_depsgraph_get()
    for mesh in meshes:
        evaluated = mesh.evaluated_get(depsgraph)
        points += [tuple(evaluated.matrix_world @ Vector(corner)) for corner in evaluated.bound_box]
    return np.asarray(points)


def _view_box(points: np.ndarray) -> np.ndarray:
    """(left, right, bottom, top) of the points as the camera sees them along VIEW_DIRECTION."""
    matrix = VIEW_ROTATION.to_matrix()
    xs, ys = points @ np.array(matrix.col[0]), points @ np.array(matrix.col[1])
    return np.array([xs.min(), xs.max(), ys.min(), ys.max()])


def _box_width(box: np.ndarray, aspect: float) -> float:
    """The orthographic width that holds the box in a frame of this aspect (at least 0.5 m)."""
    return max(box[1] - box[0], (box[3] - box[2]) * aspect, 0.5)


def _place_camera(camera: bpy.types.Object, box: np.ndarray, width: float, points: np.ndarray) -> None:
    """Look along VIEW_DIRECTION at the box's centre, `width` wide with a margin, in front of every point."""
    matrix = VIEW_ROTATION.to_matrix()
    right, up, back = (np.array(matrix.col[i]) for i in range(3))
    depth = points @ back
    camera.data.ortho_scale = 1.15 * width
    camera.rotation_mode = "QUATERNION"
    camera.rotation_quaternion = VIEW_ROTATION
    camera.location = (right * (box[0] + box[1]) / 2 + up * (box[2] + box[3]) / 2
                       + back * (depth.max() + 10.0)).tolist()
    camera.data.clip_end = float(depth.max() - depth.min() + 1000.0)


def _frame_camera(camera: bpy.types.Object, points: np.ndarray, aspect: float) -> None:
    """Point the orthographic camera along VIEW_DIRECTION at the points and fit them with a margin."""
    box = _view_box(points)
    _place_camera(camera, box, _box_width(box, aspect), points)


def tile_views(path: list[np.ndarray], tiles: list[np.ndarray], aspect: float) -> tuple[float, list[np.ndarray]]:
    """The strip's camera: one width, and the box each tile looks at.

    A motion that stays within FOLLOW_AFTER times the character's own size keeps one camera, so
    a step or a jump shows as movement across the tiles; a longer path is followed (each tile
    on its pose, at the character's size), so a long walk is not drawn as a small figure.
    """
    figure = max(_box_width(_view_box(p), aspect) for p in path + tiles)
    whole = _view_box(np.concatenate(path + tiles))
    if _box_width(whole, aspect) <= FOLLOW_AFTER * figure:
        return _box_width(whole, aspect), [whole] * len(tiles)
    # Followed tiles stand on their lowest point, so the feet stay on one line across the strip.
    boxes = [_view_box(p) for p in tiles]
    return figure, [np.array([b[0], b[1], b[2], b[2] + figure / aspect]) for b in boxes]


def _render(path: str) -> np.ndarray:
    bpy.context.scene.render.filepath = path
    bpy.ops.render.render(write_still=True)
    return _png_read(path)


def render_strip(scene: bpy.types.Scene, item: dict, scratch: str) -> None:
    """One item: the rig posed at each of its frames, rendered side by side into the strip."""
    names = _load_rig(item["rig"])
    armature = bpy.data.objects.get(names.get(item["armature"], ""))
    if armature is None or armature.type != "ARMATURE":
        raise ValueError(f"armature {item['armature']!r} is not in {item['rig']}")
    shown = [bpy.data.objects[names[m]] for m in item.get("meshes", ()) if m in names]
    for obj in list(scene.collection.objects):
        if obj.type != "CAMERA":
            scene.collection.objects.unlink(obj)
    for obj in [armature] + shown:
        scene.collection.objects.link(obj)
    if armature.animation_data is not None:
        armature.animation_data.action = None
    sticks = None if shown else _stick_figure(armature)
    for obj in shown + ([sticks] if sticks else []):
        obj.color = BODY_COLOR
    try:
        channels = Channels(armature, item["channels"], np.load(item["values"]))
        count = len(item["frames"])
        aspect = scene.render.resolution_x / scene.render.resolution_y
        path = [_pose_points(armature, shown, channels, c) for c in range(count, count + len(item["path_frames"]))]
        poses = [_pose_points(armature, shown, channels, c) for c in range(count)]
        width, boxes = tile_views(path, poses, aspect)
        everything = np.concatenate(path + poses)
        tiles = []
        for column in range(count):
            channels.apply(column)
            _place_camera(scene.camera, boxes[column], width, everything)
            tile = _render(os.path.join(scratch, "frame.png"))
            tile[:, -1, :3] *= 0.6   # a thin line between two frames
            tiles.append(tile)
        _png_write(item["out"], np.concatenate(tiles, axis=1))
    finally:
        if sticks is not None:
            mesh = sticks.data
            bpy.data.objects.remove(sticks)
            bpy.data.meshes.remove(mesh)


# ---------------------------------------------------------------- contact sheet

def _text_scene(width: int, height: int) -> bpy.types.Scene:
    scene = bpy.data.scenes.new("irg_text")
    scene.render.engine = "BLENDER_WORKBENCH"
    scene.render.resolution_x, scene.render.resolution_y = width, height
    scene.render.resolution_percentage = 100
    scene.view_settings.view_transform = "Standard"
    scene.display.shading.light = "FLAT"
    scene.display.shading.color_type = "OBJECT"
    scene.display.render_aa = "8"
    scene.world = bpy.data.worlds.new("irg_text_world")
    scene.world.color = BACKGROUND
    camera = bpy.data.objects.new("irg_text_camera", bpy.data.cameras.new("irg_text_camera"))
    camera.data.type = "ORTHO"
    camera.data.ortho_scale = max(width, height)   # one unit per pixel
    camera.location = (width / 2.0, -height / 2.0, 10.0)
    scene.collection.objects.link(camera)
    scene.camera = camera
    return scene


def _text_tile(scene: bpy.types.Scene, lines: list[tuple[str, float, tuple]], path: str) -> np.ndarray:
    """Render lines of (text, size in px, RGBA) top-down, left-aligned, into one tile."""
    objects = []
    y = 8.0
    for text, size, color in lines:
        y += size
        curve = bpy.data.curves.new("irg_text", "FONT")
        curve.body = text
        curve.size = size
        obj = bpy.data.objects.new("irg_text", curve)
        obj.location = (10.0, -y, 0.0)
        obj.color = color
        scene.collection.objects.link(obj)
        objects.append(obj)
        y += size * 0.35
    try:
        scene.render.filepath = path
        bpy.ops.render.render(write_still=True, scene=scene.name)
        return _png_read(path)
    finally:
        for obj in objects:
            curve = obj.data
            bpy.data.objects.remove(obj)
            bpy.data.curves.remove(curve)


def _shrink(pixels: np.ndarray, factor: int) -> np.ndarray:
    h, w = pixels.shape[0] // factor * factor, pixels.shape[1] // factor * factor
    return pixels[:h, :w].reshape(h // factor, factor, w // factor, factor, 4).mean(axis=(1, 3))


def render_sheet(sheet: dict, width: int, height: int, scratch: str) -> None:
    """Compose the contact sheet: a title, then a row per entry (title, status, strip)."""
    row_h, strip_w = height // SHEET_SCALE, int(sheet.get("frames", 4)) * width // SHEET_SCALE
    scene = _text_scene(SHEET_TEXT_WIDTH, row_h)
    tile = os.path.join(scratch, "text.png")
    rows, blank = [], None
    for row in sheet["rows"]:
        wrapped = textwrap.wrap(row["title"] or "(no prompt)", 40)[:3]
        color = (1.0, 0.25, 0.2, 1.0) if row.get("failed") else (0.55, 0.9, 0.55, 1.0)
        text = _text_tile(scene, [(w, 15.0, (0.95, 0.95, 0.95, 1.0)) for w in wrapped]
                          + [(row.get("status", "")[:56], 13.0, color)], tile)
        if row.get("strip") and os.path.isfile(row["strip"]) and not row.get("failed"):
            strip = np.empty((row_h, strip_w, 4), dtype=np.float32)
            strip[:] = (*BACKGROUND, 1.0)
            small = _shrink(_png_read(row["strip"]), SHEET_SCALE)[:row_h, :strip_w]
            strip[:small.shape[0], :small.shape[1]] = small
        else:
            blank = blank or _text_scene(strip_w, row_h)
            label = "FAILED" if row.get("failed") else "no thumbnail"
            strip = _text_tile(blank, [(label, 28.0, (1.0, 0.3, 0.25, 1.0))], tile)
            strip[..., 0] = np.minimum(1.0, strip[..., 0] + 0.12)  # a red tint marks the row
        rows.append(np.concatenate([text, strip], axis=1))
        rows.append(np.full((2, SHEET_TEXT_WIDTH + strip_w, 4), (0.1, 0.1, 0.1, 1.0), dtype=np.float32))
    header = _text_tile(_text_scene(SHEET_TEXT_WIDTH + strip_w, 40), [(sheet.get("title", ""), 18.0,
                                                                     (1, 1, 1, 1))], tile)
    _png_write(sheet["out"], np.concatenate([header] + rows, axis=0))


# ---------------------------------------------------------------- main

def main(request_path: str) -> int:
    with open(request_path, encoding="utf-8") as fh:
        request = json.load(fh)
    bpy.ops.wm.read_factory_settings(use_empty=True)
    width, height = int(request.get("width", 320)), int(request.get("height", 240))
    scene = _setup_scene(width, height)
    scratch = tempfile.mkdtemp(prefix="irg-render-")
    for item in request.get("items", ()):
        try:
            render_strip(scene, item, scratch)
            emit(done=item["key"], out=item["out"])
        except Exception as exc:  # one bad item does not stop the others
            emit(error=item["key"], message=f"{type(exc).__name__}: {exc}")
    if request.get("sheet"):
        try:
            render_sheet(request["sheet"], width, height, scratch)
            emit(sheet=request["sheet"]["out"])
        except Exception as exc:
            emit(error="sheet", message=f"{type(exc).__name__}: {exc}")
    emit(finished=True)
    return 0


if __name__ == "__main__":
    args = sys.argv[sys.argv.index("--") + 1:] if "--" in sys.argv else sys.argv[1:]
    sys.exit(main(args[0]))
