"""Rig presets: every bundled file validates, detection finds the right preset for
real rigs' bone names (written out below, and read from the shared BVH files),
validation catches broken mappings, user presets round-trip."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from irg_blender_addon.rig import presets as P
from model_backend.rig_math.skeleton import HUMANML3D

BUNDLED = {"smpl_default", "smpl_bvh", "mixamo", "rigify_deform", "rigify_fk", "rigify_metarig", "ue5_mannequin",
           "vrm_vroid", "vrm_humanoid", "auto_rig_pro", "auto_rig_pro_fk", "cmu_bvh", "mocapbank_bvh"}


def tree(spec: str, left: dict[str, str], right: dict[str, str]) -> dict[str, str | None]:
    """Bone -> parent from lines 'parent: child child'; a line with placeholders is made once per side."""
    parents: dict[str, str | None] = {}
    for line in spec.strip().splitlines():
        for side in (left, right) if "<" in line else ({},):
            text = line
            for key, value in side.items():
                text = text.replace(key, value)
            parent, children = text.split(":")
            parents.setdefault(parent.strip(), None)
            for child in children.split():
                parents[child] = parent.strip()
    return parents


def bvh_hierarchy(path: Path) -> dict[str, str | None]:
    """Joint -> parent joint from a BVH file's HIERARCHY (End Sites are not joints)."""
    parents: dict[str, str | None] = {}
    stack: list[str | None] = []
    pending: str | None = None
    for line in path.read_text().splitlines():
        words = line.split()
        if not words:
            continue
        if words[0] == "MOTION":
            break
        if words[0] in ("ROOT", "JOINT"):
            pending = " ".join(words[1:])
            parents[pending] = next((s for s in reversed(stack) if s), None)
        elif words[0] == "End":
            pending = None
        elif words[0] == "{":
            stack.append(pending)
        elif words[0] == "}":
            stack.pop()
    return parents


LR = ({"<S>": "Left"}, {"<S>": "Right"})

MIXAMO = """
Hips: Spine <S>UpLeg
Spine: Spine1
Spine1: Spine2
Spine2: Neck <S>Shoulder
Neck: Head
Head: HeadTop_End <S>Eye
<S>Shoulder: <S>Arm
<S>Arm: <S>ForeArm
<S>ForeArm: <S>Hand
<S>Hand: <S>HandThumb1 <S>HandIndex1 <S>HandMiddle1
<S>HandThumb1: <S>HandThumb2
<S>HandIndex1: <S>HandIndex2
<S>UpLeg: <S>Leg
<S>Leg: <S>Foot
<S>Foot: <S>ToeBase
<S>ToeBase: <S>Toe_End
"""

UE5 = """
root: pelvis ik_foot_root ik_hand_root interaction center_of_mass
ik_foot_root: ik_foot_<s>
ik_hand_root: ik_hand_gun
ik_hand_gun: ik_hand_<s>
pelvis: spine_01 thigh_<s>
spine_01: spine_02
spine_02: spine_03
spine_03: spine_04
spine_04: spine_05
spine_05: neck_01 clavicle_<s>
neck_01: neck_02
neck_02: head
clavicle_<s>: upperarm_<s>
upperarm_<s>: lowerarm_<s> upperarm_twist_01_<s> upperarm_twist_02_<s>
lowerarm_<s>: hand_<s> lowerarm_twist_01_<s> lowerarm_twist_02_<s>
hand_<s>: index_metacarpal_<s> thumb_01_<s>
index_metacarpal_<s>: index_01_<s>
thigh_<s>: calf_<s> thigh_twist_01_<s>
calf_<s>: foot_<s> calf_twist_01_<s>
foot_<s>: ball_<s>
"""

UE4 = """
root: pelvis ik_foot_root ik_hand_root
ik_foot_root: ik_foot_<s>
pelvis: spine_01 thigh_<s>
spine_01: spine_02
spine_02: spine_03
spine_03: neck_01 clavicle_<s>
neck_01: head
clavicle_<s>: upperarm_<s>
upperarm_<s>: lowerarm_<s> upperarm_twist_01_<s>
lowerarm_<s>: hand_<s> lowerarm_twist_01_<s>
thigh_<s>: calf_<s> thigh_twist_01_<s>
calf_<s>: foot_<s> calf_twist_01_<s>
foot_<s>: ball_<s>
"""

VROID = """
Root: J_Bip_C_Hips
J_Bip_C_Hips: J_Bip_C_Spine J_Bip_<S>_UpperLeg
J_Bip_C_Spine: J_Bip_C_Chest
J_Bip_C_Chest: J_Bip_C_UpperChest
J_Bip_C_UpperChest: J_Bip_C_Neck J_Bip_<S>_Shoulder J_Sec_<S>_Bust1
J_Bip_C_Neck: J_Bip_C_Head
J_Bip_C_Head: J_Adj_<S>_FaceEye J_Sec_Hair1_01
J_Bip_<S>_Shoulder: J_Bip_<S>_UpperArm
J_Bip_<S>_UpperArm: J_Bip_<S>_LowerArm
J_Bip_<S>_LowerArm: J_Bip_<S>_Hand
J_Bip_<S>_Hand: J_Bip_<S>_Index1 J_Bip_<S>_Thumb1
J_Bip_<S>_UpperLeg: J_Bip_<S>_LowerLeg
J_Bip_<S>_LowerLeg: J_Bip_<S>_Foot
J_Bip_<S>_Foot: J_Bip_<S>_ToeBase
"""

VRM_HUMANOID = """
hips: spine <s>UpperLeg
spine: chest
chest: upperChest
upperChest: neck <s>Shoulder
neck: head
head: <s>Eye jaw
<s>Shoulder: <s>UpperArm
<s>UpperArm: <s>LowerArm
<s>LowerArm: <s>Hand
<s>Hand: <s>IndexProximal
<s>UpperLeg: <s>LowerLeg
<s>LowerLeg: <s>Foot
<s>Foot: <s>Toes
"""

ARP_EXPORT = """
root.x: spine_01.x thigh_stretch.<s>
spine_01.x: spine_02.x
spine_02.x: spine_03.x
spine_03.x: neck.x shoulder.<s>
neck.x: head.x
shoulder.<s>: arm_stretch.<s>
arm_stretch.<s>: forearm_stretch.<s> arm_twist.<s>
forearm_stretch.<s>: hand.<s> forearm_twist.<s>
hand.<s>: index1.<s> thumb1.<s>
thigh_stretch.<s>: leg_stretch.<s> thigh_twist.<s>
leg_stretch.<s>: foot.<s> leg_twist.<s>
foot.<s>: toes_01.<s>
"""

# The full control rig: deform bones hang under c_traj and follow constraints.
ARP_FULL = """
c_traj: c_root_master.x root.x spine_01.x spine_02.x spine_03.x neck.x head.x c_pos
c_traj: shoulder.<s> arm_stretch.<s> forearm_stretch.<s> hand.<s> thigh_stretch.<s> leg_stretch.<s>
c_traj: foot.<s> toes_01.<s> c_foot_ik.<s> c_hand_ik.<s> c_leg_pole.<s>
c_root_master.x: c_root.x c_spine_01.x
c_root.x: c_thigh_b.<s>
c_thigh_b.<s>: c_thigh_fk.<s>
c_thigh_fk.<s>: c_leg_fk.<s>
c_leg_fk.<s>: c_foot_fk.<s>
c_foot_fk.<s>: c_toes_fk.<s>
c_spine_01.x: c_spine_02.x
c_spine_02.x: c_spine_03.x
c_spine_03.x: c_neck.x c_shoulder.<s>
c_neck.x: c_head.x
c_shoulder.<s>: c_arm_fk.<s>
c_arm_fk.<s>: c_forearm_fk.<s>
c_forearm_fk.<s>: c_hand_fk.<s>
"""

CMU = """
Hips: LHipJoint RHipJoint LowerBack
<s>HipJoint: <S>UpLeg
<S>UpLeg: <S>Leg
<S>Leg: <S>Foot
<S>Foot: <S>ToeBase
LowerBack: Spine
Spine: Spine1
Spine1: Neck <S>Shoulder
Neck: Neck1
Neck1: Head
<S>Shoulder: <S>Arm
<S>Arm: <S>ForeArm
<S>ForeArm: <S>Hand
<S>Hand: <S>FingerBase <s>Thumb
<S>FingerBase: <S>HandIndex1
"""

RIGIFY_EXPORT = """
root: DEF-spine
DEF-spine: DEF-spine.001 DEF-pelvis.<s> DEF-thigh.<s>
DEF-spine.001: DEF-spine.002
DEF-spine.002: DEF-spine.003
DEF-spine.003: DEF-spine.004 DEF-shoulder.<s> DEF-breast.<s>
DEF-spine.004: DEF-spine.005
DEF-spine.005: DEF-spine.006
DEF-shoulder.<s>: DEF-upper_arm.<s>
DEF-upper_arm.<s>: DEF-upper_arm.<s>.001
DEF-upper_arm.<s>.001: DEF-forearm.<s>
DEF-forearm.<s>: DEF-forearm.<s>.001
DEF-forearm.<s>.001: DEF-hand.<s>
DEF-thigh.<s>: DEF-thigh.<s>.001
DEF-thigh.<s>.001: DEF-shin.<s>
DEF-shin.<s>: DEF-shin.<s>.001
DEF-shin.<s>.001: DEF-foot.<s>
DEF-foot.<s>: DEF-toe.<s>
"""

RIGIFY_METARIG = """
spine: spine.001 pelvis.<s> thigh.<s>
spine.001: spine.002
spine.002: spine.003
spine.003: spine.004 shoulder.<s> breast.<s>
spine.004: spine.005
spine.005: spine.006
spine.006: face
shoulder.<s>: upper_arm.<s>
upper_arm.<s>: forearm.<s>
forearm.<s>: hand.<s>
hand.<s>: palm.01.<s>
thigh.<s>: shin.<s>
shin.<s>: foot.<s>
foot.<s>: toe.<s> heel.02.<s>
"""

SMPL_DEFAULT = """
pelvis: spine1 <s>_hip
<s>_hip: <s>_knee
<s>_knee: <s>_ankle
<s>_ankle: <s>_foot
spine1: spine2
spine2: spine3
spine3: neck <s>_collar
neck: head
<s>_collar: <s>_shoulder
<s>_shoulder: <s>_elbow
<s>_elbow: <s>_wrist
"""


def sides(left: str, right: str, upper_left: str = "", upper_right: str = "") -> tuple[dict, dict]:
    """Placeholder values per side: <s> (and <S> when a rig uses two spellings)."""
    return ({"<s>": left, "<S>": upper_left or left}, {"<s>": right, "<S>": upper_right or right})


def prefixed(parents: dict[str, str | None], prefix: str) -> dict[str, str | None]:
    return {prefix + b: (prefix + p if p else None) for b, p in parents.items()}


MIXAMO_TREE = tree(MIXAMO, *LR)
RIGS = {
    # name: (bone -> parent, expected preset, {joint: bone} spot checks)
    "mixamo (mixamorig:)": (prefixed(MIXAMO_TREE, "mixamorig:"), "mixamo",
                            {"left_shoulder": "mixamorig:LeftArm", "left_foot": "mixamorig:LeftToeBase"}),
    "mixamo (mixamorig1:)": (prefixed(MIXAMO_TREE, "mixamorig1:"), "mixamo",
                             {"pelvis": "mixamorig1:Hips", "right_collar": "mixamorig1:RightShoulder"}),
    "mixamo (no prefix)": (MIXAMO_TREE, "mixamo", {"spine3": "Spine2", "left_knee": "LeftLeg"}),
    "mixamo (other namespace)": (prefixed(MIXAMO_TREE, "Character_07:"), "mixamo",
                                 {"head": "Character_07:Head"}),
    "ue5 manny": (tree(UE5, *sides("l", "r")), "ue5_mannequin",
                  {"spine3": "spine_05", "left_foot": "ball_l", "left_shoulder": "upperarm_l"}),
    "ue4 mannequin": (tree(UE4, *sides("l", "r")), "ue5_mannequin",
                      {"spine2": "spine_02", "spine3": "spine_03", "neck": "neck_01"}),
    "vroid": (tree(VROID, *sides("L", "R")), "vrm_vroid",
              {"spine3": "J_Bip_C_UpperChest", "left_elbow": "J_Bip_L_LowerArm"}),
    "vrm humanoid": (tree(VRM_HUMANOID, *sides("left", "right")), "vrm_humanoid",
                     {"spine3": "upperChest", "left_foot": "leftToes"}),
    "vrm humanoid, no upperChest": (
        tree(VRM_HUMANOID.replace("chest: upperChest\nupperChest:", "chest:"), *sides("left", "right")),
        "vrm_humanoid", {"spine3": "chest", "spine1": "spine"}),
    "unity humanoid capitalised": (
        tree(VRM_HUMANOID.title().replace("Upperchest", "UpperChest"), *sides("Left", "Right")),
        "vrm_humanoid", {"pelvis": "Hips", "left_shoulder": "LeftUpperarm"}),
    "auto-rig pro export": (tree(ARP_EXPORT, *sides("l", "r")), "auto_rig_pro",
                            {"left_shoulder": "arm_stretch.l", "left_foot": "toes_01.l"}),
    "auto-rig pro export, 2 spine bones": (
        tree(ARP_EXPORT.replace("spine_02.x: spine_03.x\nspine_03.x:", "spine_02.x:"), *sides("l", "r")),
        "auto_rig_pro", {"spine3": "spine_02.x", "spine1": "spine_01.x"}),
    "auto-rig pro full rig": (tree(ARP_FULL, *sides("l", "r")), "auto_rig_pro_fk",
                              {"pelvis": "c_root_master.x", "left_knee": "c_leg_fk.l"}),
    "cmu bvh": (tree(CMU, *sides("L", "R", "Left", "Right")), "cmu_bvh",
                {"spine1": "LowerBack", "spine3": "Spine1", "left_hip": "LeftUpLeg"}),
    "rigify deform export": (tree(RIGIFY_EXPORT, *sides("L", "R")), "rigify_deform",
                             {"head": "DEF-spine.006", "left_shoulder": "DEF-upper_arm.L"}),
    "rigify metarig": (tree(RIGIFY_METARIG, *sides("L", "R")), "rigify_metarig",
                       {"pelvis": "spine", "neck": "spine.004", "left_shoulder": "upper_arm.L"}),
    "smpl default rig": (tree(SMPL_DEFAULT, *sides("left", "right")), "smpl_default",
                         {"left_collar": "left_collar"}),
}


@pytest.fixture(scope="module")
def bundled() -> P.PresetSet:
    return P.load_presets()


def test_joints_match_the_backend_skeleton():
    assert P.JOINTS == HUMANML3D.joint_names
    assert [P.JOINT_PARENTS[j] for j in P.JOINTS] == [
        None if p < 0 else HUMANML3D.joint_names[p] for p in HUMANML3D.parents]


def test_every_bundled_preset_loads_and_is_written_in_canonical_form(bundled):
    assert bundled.errors == []
    assert set(bundled) == BUNDLED
    for pid, preset in bundled.items():
        assert preset.bundled and preset.path == P.presets_dir() / f"{pid}.json"
        assert preset.to_dict() == json.loads(preset.path.read_text())
        assert set(preset.required) >= set(P.MIN_REQUIRED) and {"head", "neck"} & set(preset.required)


def test_bundled_presets_map_their_own_bones_to_the_same_side(bundled):
    for preset in bundled.values():
        for joint in P.JOINTS:
            side = joint.split("_")[0]
            for bone in preset.candidates(joint):
                assert P.bone_side(bone) in ((side,) if side in ("left", "right") else (None,)), (preset.id, bone)


@pytest.mark.parametrize("rig", RIGS)
def test_detection_picks_the_rig_preset_and_the_mapping_validates(rig, bundled):
    parents, expected, checks = RIGS[rig]
    names = list(parents)
    found = P.detect_preset(names, bundled)
    assert found.preset is not None and found.preset.id == expected, found.report()
    assert found.missing_required == [] and found.ok
    assert {j: found.mapping[j] for j in checks} == checks
    assert set(found.mapping.values()) <= set(names)
    assert P.validate_mapping(found.mapping, names, parents) == []
    assert "All required joints are mapped." in found.report()


def test_between_and_root_bones_resolve_in_the_rig_names(bundled):
    ue5 = P.detect_preset(tree(UE5, *sides("l", "r")), bundled)
    assert ue5.between == {"spine1": ["spine_02"], "spine2": ["spine_04"], "neck": ["neck_02"]}
    assert ue5.root_bone == "root" and ue5.score == 1.0
    ue4 = P.detect_preset(tree(UE4, *sides("l", "r")), bundled)
    assert ue4.between == {} and ue4.score == pytest.approx(22 / 25)  # spine_02 is mapped, not between
    cmu = P.detect_preset(tree(CMU, *sides("L", "R", "Left", "Right")), bundled)
    assert cmu.between == {"neck": ["Neck1"]} and cmu.root_bone is None


def test_a_full_control_rig_prefers_its_fk_controls_and_its_deform_bones_are_not_chained(bundled):
    parents = tree(ARP_FULL, *sides("l", "r"))
    found = P.detect_preset(parents, bundled)
    assert [p.id for p, _ in found.ranking[:2]] == ["auto_rig_pro_fk", "auto_rig_pro"]
    assert found.root_bone == "c_traj"
    deform = P.match_preset(bundled["auto_rig_pro"], parents)
    assert deform.ok  # every deform bone exists, yet they do not form the joint chain:
    problems = P.validate_mapping(deform.mapping, parents, parents)
    assert any("left_knee -> 'leg_stretch.l' is not below left_hip -> 'thigh_stretch.l'" in p for p in problems)


def test_mixamo_and_smpl_template_names_differ_only_in_the_toes(bundled):
    smpl = {n.replace("ToeBase", "Toe"): (p.replace("ToeBase", "Toe") if p else None)
            for n, p in MIXAMO_TREE.items() if not n.endswith("Toe_End")}
    assert P.detect_preset(smpl, bundled).preset.id == "smpl_bvh"
    assert P.detect_preset(MIXAMO_TREE, bundled).preset.id == "mixamo"


def test_case_insensitive_fallback_after_exact_and_namespace(bundled):
    upper = [n.upper() for n in prefixed(MIXAMO_TREE, "mixamorig:")]
    found = P.detect_preset(upper, bundled)
    assert found.preset.id == "mixamo" and found.mapping["left_wrist"] == "MIXAMORIG:LEFTHAND"
    # An exact name beats a case-folded one.
    mapping, _ = P.resolve_map(bundled["smpl_default"], ["HEAD", "head", "pelvis"])
    assert mapping == {"pelvis": "pelvis", "head": "head"}


def test_no_recognisable_bones_gives_a_clear_report(bundled):
    for names in ([], ["Bone", "Bone.001", "Bone.002"], ["Armature", "Cube", "Hips"]):
        found = P.detect_preset(names, bundled)
        assert found.preset is None and not found.ok and found.mapping == {}
        text = found.report()
        assert f"No rig preset matches this armature's {len(names)} bones." in text
        assert "pelvis, spine3, left_hip" in text and "head or neck" in text
        assert "map the joints by hand in the IRG Motion panel" in text
    assert "Closest: " in P.detect_preset(["Hips"], bundled).report()


def test_missing_required_bones_are_named_with_the_fix(bundled):
    parents = {n: p for n, p in prefixed(MIXAMO_TREE, "mixamorig:").items()
               if not n.endswith(("LeftLeg", "Spine2"))}
    found = P.detect_preset(parents, bundled)
    assert found.preset.id == "mixamo" and not found.ok
    assert found.missing_required == ["spine3", "left_knee"]
    text = found.report()
    assert "Unmapped required joints: spine3 (bone 'mixamorig:Spine2' not found), " \
           "left_knee (bone 'mixamorig:LeftLeg' not found)." in text
    assert "pick another preset or map the joints by hand" in text


def test_required_joints_get_the_alternates_first(bundled):
    # VRM without upperChest: chest is spine2's main bone and spine3's alternate; spine3 must win it.
    mapping, missing = P.resolve_map(bundled["vrm_humanoid"], ["hips", "spine", "chest", "neck", "head"])
    assert mapping["spine3"] == "chest" and "spine2" not in mapping and missing[:1] == ["left_hip"]


def test_validate_mapping_names_each_problem(bundled):
    parents = prefixed(MIXAMO_TREE, "mixamorig:")
    names = list(parents)
    good, _ = P.resolve_map(bundled["mixamo"], names)
    assert P.validate_mapping(good, names, parents) == []

    bad = dict(good, left_knee="mixamorig:RightLeg", spine2="mixamorig:Spine1x", neck="",
               head="mixamorig:Spine", left_hipp="mixamorig:Hips")
    del bad["left_wrist"]
    problems = P.validate_mapping(bad, names, parents)
    expected = [
        "Unknown joints ['left_hipp']",
        "spine2 -> 'mixamorig:Spine1x': the armature has no bone of that name.",
        "Bone 'mixamorig:RightLeg' is mapped to left_knee, right_knee: a bone can take only one joint.",
        "Bone 'mixamorig:Spine' is mapped to spine1, head: a bone can take only one joint.",
        "Required joints not mapped: left_wrist.",
        "left_knee -> 'mixamorig:RightLeg': the bone's name says right side.",
        "left_knee -> 'mixamorig:RightLeg' is not below left_hip -> 'mixamorig:LeftUpLeg' in the bone hierarchy",
        "left_ankle -> 'mixamorig:LeftFoot' is not below left_knee -> 'mixamorig:RightLeg'",
        "head -> 'mixamorig:Spine' is not below spine3 -> 'mixamorig:Spine2' in the bone hierarchy",
    ]
    for text in expected:
        assert sum(text in p for p in problems) == 1, (text, problems)
    assert len(problems) == len(expected)
    # Without head and neck the minimum asks for either.
    no_head = {j: b for j, b in good.items() if j not in ("head", "neck")}
    assert P.validate_mapping(no_head, names, parents) == ["Required joints not mapped: head or neck."]
    assert P.validate_mapping(no_head, names, parents, required=["pelvis"]) == []


def test_chain_order_reversed_is_caught():
    parents = tree(SMPL_DEFAULT, *sides("left", "right"))
    mapping = {j: j for j in P.JOINTS}
    mapping["left_hip"], mapping["left_knee"] = "left_knee", "left_hip"
    problems = P.validate_mapping(mapping, parents, parents)
    # The thigh's bone (left_knee) still hangs under the pelvis; the knee's bone is above it.
    assert problems == [
        "left_knee -> 'left_hip' is not below left_hip -> 'left_knee' in the bone hierarchy: "
        "the left_knee bone must be a child (or grandchild) of the left_hip bone."]


def test_bone_side():
    cases = {"LeftArm": "left", "mixamorig:RightUpLeg": "right", "thigh.L": "left", "DEF-shin.R.001": "right",
             "upperarm_twist_01_l": "left", "J_Bip_R_Hand": "right", "leftToes": "left", "c_arm_fk.r": "right",
             "Hips": None, "spine_01.x": None, "neck_01": None, "Bright": None, "Cleft": None, "Upright": None}
    assert {n: P.bone_side(n) for n in cases} == cases


def test_user_preset_round_trip(tmp_path, bundled):
    parents = prefixed(MIXAMO_TREE, "mixamorig1:")
    found = P.detect_preset(parents, bundled)
    mapping = dict(found.mapping, left_collar="", right_collar=None)  # the user unmapped the collars
    path = P.save_user_preset(mapping, "My Hero (v2)!", tmp_path / "rigs", base=found.preset)
    assert path == tmp_path / "rigs" / "my_hero_v2.json"
    assert [p.name for p in (tmp_path / "rigs").iterdir()] == ["my_hero_v2.json"]  # no temp file left

    loaded = P.load_presets([tmp_path / "rigs"])
    assert loaded.errors == [] and set(loaded) == BUNDLED | {"my_hero_v2"}
    mine = loaded["my_hero_v2"]
    assert not mine.bundled and mine.name == "My Hero (v2)!"
    assert mine.bones == {j: b for j, b in found.mapping.items() if "collar" not in j}
    assert mine.required == tuple(j for j in P.CORE_JOINTS if j in mine.bones)
    assert (mine.forward, mine.root_bone, mine.priority) == ("-Y", None, 0)
    # On the same rig both fit fully; the user's own mapping wins the tie.
    again = P.detect_preset(parents, loaded)
    assert again.preset.id == "my_hero_v2" and again.mapping == mine.bones and again.ok
    # Saving again under the same name replaces it.
    P.save_user_preset(found.mapping, "my hero v2", tmp_path / "rigs")
    assert P.load_presets([tmp_path / "rigs"])["my_hero_v2"].bones == found.mapping


def test_saved_preset_keeps_the_base_between_and_root_bones(tmp_path, bundled):
    ue5 = bundled["ue5_mannequin"]
    parents = tree(UE5, *sides("l", "r"))
    mapping, _ = P.resolve_map(ue5, parents)
    mapping["spine2"] = "spine_04"  # moved by hand onto a 'between' bone
    path = P.save_user_preset(mapping, "Manny tweak", tmp_path, base=ue5)
    saved = P.load_preset(path)
    assert saved.between == {"spine1": ("spine_02",), "neck": ("neck_02",)}
    assert saved.root_bone == "root" and saved.forward is None


def test_save_refuses_bundled_ids_bad_names_and_incomplete_mappings(tmp_path, bundled):
    good, _ = P.resolve_map(bundled["mixamo"], MIXAMO_TREE)
    with pytest.raises(P.PresetError, match="'mixamo' is the id of a bundled preset: save under another name"):
        P.save_user_preset(good, "Mixamo", tmp_path)
    with pytest.raises(P.PresetError, match="holds the bundled presets"):
        P.save_user_preset(good, "Mine", P.presets_dir())
    with pytest.raises(P.PresetError, match="has no letters or digits"):
        P.save_user_preset(good, " :/ ", tmp_path)
    partial = {j: b for j, b in good.items() if j != "right_elbow"}
    with pytest.raises(P.PresetError, match="required joints not mapped: right_elbow"):
        P.save_user_preset(partial, "Mine", tmp_path)
    with pytest.raises(P.PresetError, match="bones used for more than one joint: \\['Hips'\\]"):
        P.save_user_preset(dict(good, spine1="Hips"), "Mine", tmp_path)
    assert list(tmp_path.iterdir()) == []  # nothing written by any refusal
    assert not (P.presets_dir() / "mine.json").exists()


def test_broken_files_are_reported_and_do_not_stop_the_others(tmp_path, bundled):
    good = bundled["mixamo"].to_dict()
    files = {
        "syntax.json": "{\"id\": \"syntax\",\n  oops}",
        "wrong_id.json": json.dumps(dict(good, id="something_else")),
        "bad_joint.json": json.dumps(dict(good, id="bad_joint", bones=dict(good["bones"], left_kne="X"))),
        "no_knee.json": json.dumps(dict(good, id="no_knee", required=[j for j in good["required"]
                                                                       if j != "left_knee"])),
        "typo.json": json.dumps(dict(good, id="typo", bonez={})),
        "mixamo.json": json.dumps(good),  # same id as a bundled preset
        "between.json": json.dumps(dict(good, id="between", between={"pelvis": ["X"], "neck": ["mixamorig:Head"]})),
        "fine.json": json.dumps(dict(good, id="fine", name="Fine")),
    }
    for name, text in files.items():
        (tmp_path / name).write_text(text)
    loaded = P.load_presets([tmp_path])
    assert set(loaded) == BUNDLED | {"fine"}
    errors = "\n".join(loaded.errors)
    assert len(loaded.errors) == len(files) - 1
    for expected in (
        f"{tmp_path / 'syntax.json'}: not valid JSON (line 2, column 3",
        f"{tmp_path / 'wrong_id.json'}: id 'something_else' must equal the file name 'wrong_id'",
        f"{tmp_path / 'bad_joint.json'}: 'bones' has unknown joints ['left_kne']",
        f"{tmp_path / 'no_knee.json'}: 'required' lacks left_knee",
        f"{tmp_path / 'typo.json'}: unknown fields ['bonez']",
        f"{tmp_path / 'mixamo.json'}: id 'mixamo' is already used by {P.presets_dir() / 'mixamo.json'}",
        "'between' is for joints with one child joint (a chain segment), not ['pelvis']",
        "'between' lists bones that are mapped in 'bones': ['mixamorig:Head']",
    ):
        assert expected in errors, (expected, errors)


@pytest.mark.parametrize("filename,expected,count", [
    ("mixamo_rig_30fps.bvh", "mixamo", 22),
    ("mocapbank_19joint_30fps.bvh", "mocapbank_bvh", 19),
    ("smpl22_template.bvh", "smpl_bvh", 22),
])
def test_shared_bvh_hierarchies(bvh_dir, bundled, filename, expected, count):
    parents = bvh_hierarchy(bvh_dir / filename)
    found = P.detect_preset(parents, bundled)
    assert found.preset.id == expected and found.ok and found.score == 1.0, found.report()
    assert len(found.mapping) == count
    assert P.validate_mapping(found.mapping, parents, parents) == []


def test_control_rig_fields_resolve_in_the_rig_names(bundled):
    fk = bundled["rigify_fk"]
    names = [*fk.bones.values(), *(c for cs in fk.controls.values() for c in cs), fk.torso["bone"], "root",
             *fk.properties, *(c for cs in fk.ik_legs["controls"].values() for c in cs), *fk.ik_legs["poles"].values(),
             *fk.ik_legs["properties"]]
    found = P.detect_preset(names, bundled)
    assert found.preset.id == "rigify_fk" and found.ok
    assert found.controls["pelvis"] == ["hips", "spine_fk"] and found.torso == ("torso", ["spine1", "spine2"])
    assert found.properties["thigh_parent.L"] == {"IK_FK": 1.0}
    assert found.ik_legs["poles"] == {"left_knee": "thigh_ik_target.L", "right_knee": "thigh_ik_target.R"}
    assert found.ik_legs["properties"]["thigh_parent.R"] == {"IK_FK": 0.0, "pole_vector": 1.0}


@pytest.mark.parametrize("field, value, message", [
    ("controls", {"pelvis": "torso"}, "'controls.pelvis' must be a list of bone names"),
    ("controls", {"tail": ["x"]}, "'controls' has unknown joints ['tail']"),
    ("torso", {"bone": "torso"}, "'torso' must be null or"),
    ("properties", {"thigh_parent.L": {"IK_FK": "FK"}}, "'properties' must be {bone: {custom property: number}}"),
    ("ik_legs", {"controls": {}}, "'ik_legs' must be null or"),
    ("ik_legs", {"controls": {"left_hip": ["x"]}, "poles": {}, "properties": {}}, "'ik_legs.controls' are for"),
])
def test_control_rig_fields_are_checked(bundled, field, value, message):
    data = bundled["rigify_fk"].to_dict()
    data[field] = value
    assert any(message in p for p in P.preset_problems(data, "rigify_fk")), P.preset_problems(data, "rigify_fk")
