"""Requests in progress, pumped without blocking: the job base and its timer (base.py), generate
(+ the live preview), review (critique, refine, caption), batch, the rotation solver's worker,
the preferences' tasks and running a job to its end from a script (run.py)."""
