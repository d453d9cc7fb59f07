"""Motion data, numpy only: HumanML3D features <-> joints (features.py) and BVH files (bvh.py)."""
