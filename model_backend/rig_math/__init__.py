"""Joint and rotation math, numpy only (ships in the extension zip): the skeleton, quaternions, the
rotation solver, foot locking, root motion, smoothing and the accuracy metrics."""
