"""Compare: a ghost copy of the armature (and its bound mesh) plays a second version, then goes without a trace."""
from __future__ import annotations

import bpy
import numpy as np

from irg_blender_addon.anim import actions, compat, ghost


def _bound_cube(armature: bpy.types.Object) -> bpy.types.Object:
    """A cube parented to the armature and deformed by it (an Armature modifier)."""
    mesh = bpy.data.meshes.new("Body")
    mesh.from_pydata([(x, y, z + 1.0) for x in (-0.2, 0.2) for y in (-0.2, 0.2) for z in (-0.2, 0.2)], [],
                     [(0, 1, 3, 2), (4, 6, 7, 5), (0, 4, 5, 1), (2, 3, 7, 6), (0, 2, 6, 4), (1, 5, 7, 3)])
    body = bpy.data.objects.new("Body", mesh)
    bpy.context.scene.collection.objects.link(body)
    body.vertex_groups.new(name="pelvis").add(list(range(8)), 1.0, "REPLACE")
    body.modifiers.new("Armature", "ARMATURE").object = armature
    body.parent = armature
    return body


def test_compare_shows_a_ghost_and_leaves_nothing_behind(default_rig, clip_blender):
    walk = actions.write_version(default_rig, clip_blender, prompt="a person walks")
    back = actions.write_version(default_rig, clip_blender[::-1].copy(), prompt="a person walks back")
    body = _bound_cube(default_rig)

    def state():
        drivers = sum(len(o.animation_data.drivers) for o in bpy.data.objects if o.animation_data)
        return ({k: len(getattr(bpy.data, k)) for k in ("objects", "actions", "armatures", "meshes")}, drivers,
                [o.name for o in bpy.data.objects])

    copy = default_rig.pose.bones["head"].constraints.new("COPY_ROTATION")  # a constraint reading the rig itself
    copy.target, copy.subtarget = default_rig, "neck"
    before = state()
    shown = ghost.toggle(default_rig, walk)
    assert shown.pose.bones["head"].constraints[0].target == shown   # the ghost follows its own pose
    assert shown.animation_data.action == walk and default_rig.animation_data.action == back
    assert len(ghost.ghosts(default_rig)) == 2                # the armature and its mesh
    bpy.context.scene.frame_set(60)
    offset = np.array(shown.matrix_world.translation) - np.array(default_rig.matrix_world.translation)
    np.testing.assert_allclose(offset, [ghost.DEFAULT_OFFSET, 0, 0], atol=1e-6)
    mesh_copy = next(o for o in ghost.ghosts(default_rig) if o.type == "MESH")
    assert mesh_copy.data == body.data and mesh_copy.modifiers[0].object == shown
    assert ghost.toggle(default_rig, walk) is None
    assert state() == before and compat.action_slot(walk, default_rig, create=False) is not None
