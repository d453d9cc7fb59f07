"""Rigs: rig presets and bone mapping (presets.py, plain Python), the retarget solver (retarget.py,
no bpy in its maths), armature access (armature.py), pose channels (pose.py), sampling an
Action back to joints (sampling.py) and the armature's bone mapping (mapping.py)."""
