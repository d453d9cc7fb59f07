"""The one door from the add-on to the numpy part of the backend.

Installed as a Blender extension, the repository root is the extension package and
`model_backend` is a sibling of this package (`from ..model_backend import ...`);
in a source checkout and in the tests both are top-level packages. Only numpy-only
modules are imported here (never torch): each must also be listed in
blender_manifest.toml [build] paths, or the installed extension cannot import it.
"""
from __future__ import annotations

if __package__ and "." in __package__:  # bl_ext.<repo>.irg_motion.irg_blender_addon
    from ..model_backend.rig_math import footlock, metrics, quat, rootmotion, seam, skeleton, smoothing, solver
    from ..model_backend.wire import limits, manifest, protocol
else:  # source checkout / tests: irg_blender_addon and model_backend are top-level
    from model_backend.rig_math import footlock, metrics, quat, rootmotion, seam, skeleton, smoothing, solver
    from model_backend.wire import limits, manifest, protocol

__all__ = ["footlock", "limits", "manifest", "metrics", "protocol", "quat", "rootmotion", "seam", "skeleton",
           "smoothing", "solver"]
