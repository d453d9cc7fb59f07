"""Fuzz harness, add-on metadata: generated `irg` dictionaries (what an edited or hostile .blend
can carry) go through the add-on's one reader, irg_blender_addon.anim.metadata.read_metadata
(plain Python, so no bpy is needed here; tests/blender/anim/test_hostile_metadata.py reads
real Actions). It never raises, keeps only fields of the written type, and names the Action
in its warnings. Case counts: tests/fuzz_profiles.py."""
from __future__ import annotations

import logging

from hypothesis import given
from hypothesis import strategies as st

from fuzz_profiles import fuzz_settings
from irg_blender_addon.anim.metadata import FIELDS, read_metadata

SCALAR = st.one_of(st.none(), st.booleans(), st.integers(-2**70, 2**70), st.floats(allow_nan=True),
                   st.text(max_size=20), st.sampled_from(["", "12", "-3", "٣", "1e3", "\ud800"]))
VALUE = st.recursive(SCALAR, lambda inner: st.one_of(st.lists(inner, max_size=5),
                                                     st.dictionaries(st.text(max_size=5), inner, max_size=3)),
                     max_leaves=10)
RAW = st.one_of(st.dictionaries(st.sampled_from(sorted(FIELDS) + ["unknown", "x"]), VALUE, max_size=12),
                VALUE)


def test_fuzz_metadata_through_the_reader(caplog):
    @fuzz_settings("metadata")
    @given(raw=RAW)
    def case(raw) -> None:
        caplog.clear()
        with caplog.at_level(logging.WARNING, logger="irg_motion.metadata"):
            info = read_metadata(raw, "Walk.v001")
        if not isinstance(raw, dict):
            assert info == {}
            return
        for key, value in info.items():
            if key == "seed":
                assert value is None or (isinstance(value, int) and value >= 0)
            elif key in FIELDS:
                assert FIELDS[key](value) or (key == "keep" and isinstance(value, bool)), (key, value)
        assert isinstance(info["extra"], dict)
        assert all("Walk.v001" in r.getMessage() for r in caplog.records)

    case()
