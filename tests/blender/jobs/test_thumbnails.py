"""Thumbnail strips rendered for real by the headless render worker, the cache and packing.

One module-scoped scene renders five strips in one worker run (about 6 s): two
versions on the default rig, one on an imported Mixamo rig (a user's rig), one
on the default rig with a mesh bound to it, and a long walk (8 m) on the default rig.
"""
from __future__ import annotations

import shutil
import time

import bpy
import numpy as np
import pytest

from irg_blender_addon.anim import actions
from irg_blender_addon.jobs import thumbnails
from irg_blender_addon.rig import armature as rig
from irg_blender_addon.core import skeleton

FRAMES = 3
LONG_WALK_M = 8.0


def _png(path) -> np.ndarray:
    image = bpy.data.images.load(str(path), check_existing=False)
    try:
        width, height = image.size
        buf = np.empty(width * height * 4, dtype=np.float32)
        image.pixels.foreach_get(buf)
        return buf.reshape(height, width, 4)[::-1, :, :3].copy()
    finally:
        bpy.data.images.remove(image)


def _figure_pixels(tile: np.ndarray) -> np.ndarray:
    """Pixels that differ from the background (the corner colour)."""
    return np.abs(tile - tile[0, 0]).max(axis=-1) > 0.05


def _run(job: thumbnails.ThumbnailJob, timeout: float = 120.0) -> thumbnails.ThumbnailJob:
    deadline = time.monotonic() + timeout
    while job.pump():
        assert time.monotonic() < deadline, "the render worker did not finish"
        time.sleep(0.02)
    return job


def _bound_mesh(armature: bpy.types.Object) -> bpy.types.Object:
    """A box around the pelvis and a ball on the head, skinned to those bones."""
    mesh = bpy.data.meshes.new("Body")
    verts, faces = [], []
    for bone, size in (("pelvis", 0.18), ("head", 0.12)):
        center = np.array(armature.matrix_world @ armature.data.bones[bone].head_local)
        base = len(verts)
        verts += [tuple(center + np.array([x, y, z]) * size) for x in (-1, 1) for y in (-1, 1) for z in (-1, 1)]
        faces += [tuple(base + i for i in f) for f in ((0, 1, 3, 2), (4, 6, 7, 5), (0, 4, 5, 1), (2, 3, 7, 6),
                                                        (0, 2, 6, 4), (1, 5, 7, 3))]
    mesh.from_pydata(verts, [], faces)
    body = bpy.data.objects.new("Body", mesh)
    bpy.context.scene.collection.objects.link(body)
    body.vertex_groups.new(name="pelvis").add(list(range(8)), 1.0, "REPLACE")
    body.vertex_groups.new(name="head").add(list(range(8, 16)), 1.0, "REPLACE")
    body.modifiers.new("Armature", "ARMATURE").object = armature
    return body


@pytest.fixture(scope="module")
def rendered(humanml3d_dir, bvh_dir, tmp_path_factory):
    """A saved file with four versions and their strips (one worker run)."""
    bpy.ops.wm.read_factory_settings(use_empty=True)
    clip = skeleton.to_blender(np.load(humanml3d_dir / "012314_joints.npy")).astype(np.float64)
    default = rig.create_default_rig(bpy.context)
    walk = actions.write_version(default, clip, prompt="a person walks")
    crouch = clip.copy()
    crouch[:, 1:, 2] = crouch[:, :1, 2] + (crouch[:, 1:, 2] - crouch[:, :1, 2]) * 0.5  # a squat, not a walk
    squat = actions.write_version(default, crouch[::-1].copy(), prompt="a person squats")
    bpy.ops.import_anim.bvh(filepath=str(bvh_dir / "mixamo_rig_30fps.bvh"))
    user = bpy.context.object
    user.animation_data_clear()
    user.location.x += 3.0
    on_user = actions.apply_version(walk, user)
    meshed = rig.create_default_rig(bpy.context, name="Meshed")
    meshed.location.x -= 3.0
    _bound_mesh(meshed)
    on_mesh = actions.write_version(meshed, clip, prompt="a person walks with a body")
    travel = clip + np.linspace(0.0, LONG_WALK_M, len(clip))[:, None, None] * np.array([0.0, -1.0, 0.0])
    far = actions.write_version(default, travel, prompt="a person walks a long way")
    path = tmp_path_factory.mktemp("thumbs") / "shot.blend"
    bpy.ops.wm.save_as_mainfile(filepath=str(path))
    names = [walk.name, squat.name, on_user.name, on_mesh.name]
    job = _run(thumbnails.ThumbnailJob(names + [far.name], frames=FRAMES))
    return {"job": job, "names": names, "blend": path, "far": _png(thumbnails.thumb_path(far)),
            "strips": {n: _png(thumbnails.thumb_path(bpy.data.actions[n])) for n in names}}


def test_strips_show_the_character_in_every_frame(rendered):
    job = rendered["job"]
    assert job.state == "done" and not job.errors and set(rendered["names"]) < set(job.made)
    for name, strip in rendered["strips"].items():
        assert strip.shape == (thumbnails.HEIGHT, thumbnails.WIDTH * FRAMES, 3), name
        for tile in np.split(strip, FRAMES, axis=1):
            figure = _figure_pixels(tile[:, :-1])  # the last column is the line between two frames
            assert figure.sum() > 150, f"{name}: only {figure.sum()} figure pixels"
            rows, cols = np.nonzero(figure)
            # inside the frame: the camera frames the whole path, so nothing touches the border
            assert rows.min() > 0 and cols.min() > 0 and rows.max() < tile.shape[0] - 1, name
            assert cols.max() < tile.shape[1] - 3, name
    assert str(rendered["blend"].parent) in str(thumbnails.cache_dir())


def test_a_long_walk_is_followed_at_the_characters_size(rendered):
    """Framing the whole 8 m path would draw a figure a fifth of the tile high; the camera follows."""
    tiles = np.split(rendered["far"], FRAMES, axis=1)
    feet = []
    for tile in tiles:
        rows, cols = np.nonzero(_figure_pixels(tile[:, :-1]))
        assert rows.max() - rows.min() > 0.6 * tile.shape[0], "the walking figure is drawn small"
        assert rows.min() > 0 and rows.max() < tile.shape[0] - 1 and 0 < cols.min() and cols.max() < tile.shape[1] - 3
        feet.append(rows.max())
    assert max(feet) - min(feet) <= 3, f"the feet should stay on one line across the strip: rows {feet}"


def test_different_motions_give_different_strips(rendered):
    strips = rendered["strips"]
    walk, squat, on_user, on_mesh = (strips[n] for n in rendered["names"])
    assert np.abs(walk - squat).mean() > 0.005
    assert np.abs(walk - on_mesh).mean() > 0.005   # the bound mesh is drawn, not the bones
    assert np.abs(walk - on_user).mean() > 0.002   # another rig with the same motion


def test_missing_cache_keeps_the_file_working_then_rebuilds(rendered):
    names = rendered["names"]
    thumbnails.pack([bpy.data.actions[names[0]]])
    bpy.ops.wm.save_mainfile()
    shutil.rmtree(thumbnails.cache_dir())
    bpy.ops.wm.open_mainfile(filepath=str(rendered["blend"]))
    versions = [bpy.data.actions.get(n) for n in names]
    assert all(versions) and not any(thumbnails.has_thumbnail(a) for a in versions)
    thumbnails.icon_id(versions[1])                        # a row without its picture draws without error
    assert thumbnails.restore_packed() == 1                # the packed strip comes back without a render
    np.testing.assert_array_equal(_png(thumbnails.thumb_path(versions[0])), rendered["strips"][names[0]])
    job = _run(thumbnails.ThumbnailJob([names[1]], frames=FRAMES))
    assert job.made == [names[1]] and thumbnails.has_thumbnail(versions[1])
    np.testing.assert_allclose(_png(thumbnails.thumb_path(versions[1])), rendered["strips"][names[1]], atol=0.02)
