"""BackendClient error paths that need no real backend: every one ends in ONE clear
BackendError naming the problem and the fix, before or right after spawning."""
from __future__ import annotations

import os
import time
import sys
import textwrap
from pathlib import Path

import pytest

from irg_blender_addon.backend import registry
from irg_blender_addon.backend.local import BackendClient
from irg_blender_addon.backend.base import BackendError
from irg_blender_addon.backend.registry import get_client, shutdown_all
from model_backend.wire.manifest import write_manifest


def placeholder_model(folder: Path) -> Path:
    """A model folder that passes the manifest check but holds no weights (the backend never gets that far)."""
    (folder / "llm").mkdir(parents=True)
    for rel in ("llm/config.json", "mean.npy", "std.npy", "vqvae.safetensors"):
        (folder / rel).write_bytes(b"")
    write_manifest(folder, {
        "format": "irg-motion-model", "format_version": 1, "name": "placeholder", "stage": 2,
        "dataset": "HumanML3D", "feature_size": 263, "num_joints": 22, "fps": 20.0, "fixture": True,
        "vqvae": {"file": "vqvae.safetensors", "feature_size": 263, "width": 8, "code_dim": 8, "num_codes": 512,
                  "depth": 1, "dilation_growth": 3, "down_t": 2, "stride_t": 2},
        "motion_tokens": {"start": "<Motion>", "end": "</Motion>", "start_id": 10, "end_id": 11,
                          "first_id": 12, "count": 512},
        "sources": [], "created_by": "test", "created_at": "2026-01-01T00:00:00Z"})
    return folder


@pytest.fixture()
def model_dir(tmp_path) -> Path:
    return placeholder_model(tmp_path / "model")


@pytest.fixture(autouse=True)
def _no_leftover_backends():
    yield
    shutdown_all()


def test_missing_python_names_path_and_fix(model_dir, tmp_path):
    missing = tmp_path / "nope" / "python"
    with pytest.raises(BackendError) as err:
        get_client(missing, model_dir)
    msg = str(err.value)
    assert str(missing) in msg and "does not exist" in msg
    assert "Preferences > Add-ons > IRG Motion > Backend Python" in msg and "make envs" in msg


def test_empty_python_setting(model_dir):
    with pytest.raises(BackendError, match="Backend Python is not set|backend Python is not set"):
        get_client("", model_dir)


def test_python_that_is_a_folder_or_not_executable(model_dir, tmp_path):
    with pytest.raises(BackendError, match="is a folder"):
        get_client(tmp_path, model_dir)
    script = tmp_path / "python"
    script.write_text("#!/bin/sh\n")
    script.chmod(0o644)
    with pytest.raises(BackendError, match="not executable"):
        get_client(script, model_dir)


def test_missing_model_folder_names_folder_and_fix(tmp_path):
    missing = tmp_path / "no-model"
    with pytest.raises(BackendError) as err:
        get_client(sys.executable, missing)
    msg = str(err.value)
    assert str(missing) in msg and "make-fixture" in msg and "Model Folder" in msg


def test_folder_without_manifest(tmp_path):
    with pytest.raises(BackendError, match="manifest.json is missing"):
        get_client(sys.executable, tmp_path)


def test_nothing_is_spawned_when_validation_fails(tmp_path):
    c = BackendClient(tmp_path / "missing-python", tmp_path)
    with pytest.raises(BackendError):
        c.start()
    assert c.state == "stopped" and c.pid is None and c.poll() == []


def test_python_without_backend_dies_with_one_clear_error(model_dir, tmp_path, monkeypatch):
    # This environment's Python (bpy + numpy, no torch, no model_backend installed) is not a backend;
    # a PYTHONPATH naming the checkout (as helpers set it) would lend it model_backend.
    monkeypatch.delenv("PYTHONPATH", raising=False)
    c = BackendClient(sys.executable, model_dir, log_path=tmp_path / "backend.log")
    c.start()
    assert c.state == "starting" and isinstance(c.pid, int)
    with pytest.raises(BackendError) as err:
        c.wait_ready(timeout=60)
    msg = str(err.value)
    assert c.state == "dead" and c.returncode == 1
    assert "No module named model_backend" in msg and str(sys.executable) in msg
    assert "Backend Python" in msg and "make envs" in msg
    assert "Last lines of the backend log" in msg
    events = c.poll()
    assert [(e["event"], e["code"], e["id"]) for e in events] == [("error", "backend_exited", None)]
    assert events[0]["returncode"] == 1
    assert c.log_tail(5).endswith("No module named model_backend")
    with pytest.raises(BackendError, match="not running"):
        c.send({"type": "ping"})


def fake_backend(tmp_path: Path, body: str) -> dict[str, str]:
    """PYTHONPATH env making `python -m model_backend` run `body` (for conditions a real backend never shows)."""
    pkg = tmp_path / "fake" / "model_backend"
    pkg.mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "__main__.py").write_text(textwrap.dedent(body))
    return {"PYTHONPATH": str(pkg.parent)}


def test_protocol_version_mismatch_is_refused(model_dir, tmp_path, monkeypatch):
    env = fake_backend(tmp_path, """
        import json, sys, time
        print(json.dumps({"event": "ready", "protocol_version": 99}), flush=True)
        time.sleep(30)
    """)
    monkeypatch.setenv("PYTHONPATH", env["PYTHONPATH"])
    c = BackendClient(sys.executable, model_dir, log_path=tmp_path / "backend.log")
    with pytest.raises(BackendError):
        c.wait_ready(timeout=30)
    events = [e for e in c.poll() if e["event"] == "error"]
    assert len(events) == 1 and events[0]["code"] == "protocol_mismatch"
    assert "protocol version 99" in events[0]["message"] and "speaks 1" in events[0]["message"]
    assert c.state == "dead"


def test_handshake_requests_and_stop(model_dir, tmp_path, monkeypatch):
    # An echo backend: answers each request line with an `ack`, exits on shutdown.
    env = fake_backend(tmp_path, """
        import json, sys
        print(json.dumps({"event": "ready", "protocol_version": 1, "model": {"name": "echo"}}), flush=True)
        print("a stray print that is not JSON", flush=True)
        for line in sys.stdin:
            req = json.loads(line)
            print(json.dumps({"event": "ack", "id": req["id"], "type": req["type"], "env": sys.argv[1:]}), flush=True)
            if req["type"] == "shutdown":
                print(json.dumps({"event": "bye", "id": req["id"]}), flush=True)
                sys.exit(0)
    """)
    monkeypatch.setenv("PYTHONPATH", env["PYTHONPATH"])
    c = BackendClient(sys.executable, model_dir, device="cpu", precision="fp32", log_path=tmp_path / "b.log")
    info = c.wait_ready(timeout=30)
    assert info["model"]["name"] == "echo" and c.state == "ready"
    pid = c.pid
    c.ensure_started()  # reuses the running process
    assert c.pid == pid
    rid = c.send({"type": "ping"})
    events = []
    for _ in range(500):
        events += c.poll()
        if any(e.get("id") == rid for e in events):
            break
        import time
        time.sleep(0.01)
    assert events[0]["event"] == "ready"  # the stray print was skipped
    ack = [e for e in events if e.get("id") == rid][0]
    assert ack["type"] == "ping"
    assert ack["env"] == ["serve", "--stdio", "--model", str(model_dir), "--device", "cpu", "--precision", "fp32"]
    c.stop()
    assert c.state == "stopped" and c.returncode == 0 and c.pid is None
    assert [e for e in c.poll() if e["event"] == "error"] == []  # stopping on purpose is not a death


def test_registry_reuses_one_client_per_configuration(model_dir, tmp_path):
    a = get_client(sys.executable, model_dir)
    assert get_client(sys.executable, str(model_dir) + os.sep) is a
    other = placeholder_model(tmp_path / "other")
    b = get_client(sys.executable, other)
    assert b is not a
    assert a not in registry._local.values()  # switching models frees the first one
    shutdown_all()
    assert registry._local == {}


# -- GenerateJob against a scripted event stream ---------------------------------------------
# Event sequences the real backend cannot be made to send on demand (it falls back to the
# direct prompt itself, it does not die mid-trace); the real backend runs in tests/e2e.

def finish(job, timeout: float = 30.0) -> bool:
    """pump() until the job ends (a version's rotations are solved in a worker between pumps); job.running."""
    deadline = time.monotonic() + timeout
    while job.pump():
        assert time.monotonic() < deadline, job.status
        time.sleep(0.002)
    return job.running


class ScriptedBackend:
    """Stands in for BackendClient: records requests, hands out queued events."""

    def __init__(self):
        self.state = "ready"
        self.ready_info = {"model": {"name": "scripted"}}
        self.sent: list[dict] = []
        self.events: list[dict] = []

    def ensure_started(self):
        pass

    def send(self, request):
        request = {"id": f"r{len(self.sent) + 1}", **request}
        self.sent.append(request)
        return request["id"]

    def poll(self, max_events=100):
        out, self.events = self.events[:max_events], self.events[max_events:]
        return out

    def stop(self):
        self.state = "stopped"


@pytest.fixture()
def blender_scene(monkeypatch):
    import bpy
    import irg_blender_addon
    bpy.ops.wm.read_homefile(use_empty=True)
    irg_blender_addon.register()
    yield bpy.context.scene
    irg_blender_addon.unregister()


@pytest.fixture()
def motion_event(humanml3d_dir):
    import numpy as np
    from model_backend.wire.protocol import encode_array
    from model_backend.rig_math.skeleton import to_blender
    joints = to_blender(np.load(humanml3d_dir / "012314_joints.npy")[:16])

    def make(request_id, rnd=1, tokens=(5, 6, 7, 8)):
        return {"event": "motion", "id": request_id, "round": rnd, "tokens": list(tokens), "fps": 20.0,
                "joints": encode_array(joints), "source": "trace"}
    return make


def job_for(backend, armature_name=None, **settings):
    from irg_blender_addon.jobs.generate import GenerateJob
    from irg_blender_addon.settings import Settings
    job = GenerateJob(backend, armature_name, "a person walks", Settings(**settings))
    job.start()
    return job


def test_job_retries_in_direct_mode_once_after_a_trace_without_motion(blender_scene, motion_event):
    import bpy
    backend = ScriptedBackend()
    job = job_for(backend, mode="interleaved")
    assert backend.sent[0]["mode"] == "interleaved" and backend.sent[0]["prompt"] == "a person walks"
    backend.events = [{"event": "ack", "id": "r1", "type": "generate"},
                      {"event": "text", "id": "r1", "section": "analyze", "delta": "walking", "round": 1},
                      {"event": "done", "id": "r1", "motions": 0, "stop_reason": "max_tokens", "warnings": []}]
    assert job.pump() is True
    assert [r["mode"] for r in backend.sent] == ["interleaved", "direct"] and job.fell_back
    assert "Retrying in direct mode" in job.status and len(bpy.data.actions) == 0
    assert bpy.context.window_manager.irg_motion.trace == "Analysis: walking"
    backend.events = [motion_event("r1"),  # a late event of the first request: ignored
                      motion_event("r2"), {"event": "done", "id": "r2", "motions": 1, "stop_reason": "eos"}]
    assert finish(job) is False
    assert job.state == "done" and len(job.action_names) == 1 and len(bpy.data.actions) == 1
    assert "direct mode" in job.status and len(backend.sent) == 2


def test_direct_retry_happens_once_then_one_error(blender_scene):
    import bpy
    backend = ScriptedBackend()
    job = job_for(backend, mode="interleaved")
    backend.events = [{"event": "done", "id": "r1", "motions": 0, "stop_reason": "max_tokens"}]
    job.pump()
    backend.events = [{"event": "error", "id": "r2", "code": "no_motion", "message": "no usable motion"}]
    assert finish(job) is False
    assert job.state == "error" and job.error == "no usable motion" and len(backend.sent) == 2
    assert bpy.context.window_manager.irg_motion.level == "ERROR"
    assert len(bpy.data.actions) == 0 and len(bpy.data.objects) == 0


def test_assessments_land_on_their_round_and_rounds_chain(blender_scene, motion_event):
    import bpy
    from irg_blender_addon.anim import actions
    backend = ScriptedBackend()
    job = job_for(backend, mode="interleaved", seed=3)
    backend.events = [
        motion_event("r1", 1),
        {"event": "assessment", "id": "r1", "round": 1, "assessment": "too slow",
         "refinement": "walk faster", "satisfied": False},
        {"event": "assessment", "id": "r1", "round": 2, "assessment": "good",  # before its motion
         "refinement": "No refinements needed.", "satisfied": True},
        motion_event("r1", 2, tokens=(9, 10)),
        {"event": "done", "id": "r1", "motions": 2, "stop_reason": "satisfied", "warnings": []}]
    assert finish(job) is False and job.state == "done"
    first, second = (bpy.data.actions[n] for n in job.action_names)
    a, b = actions.version_info(first), actions.version_info(second)
    assert (a["round"], a["assessment"], a["refinement"]) == (1, "too slow", "walk faster")
    assert (b["round"], b["assessment"], b["refinement"]) == (2, "good", "No refinements needed.")
    assert list(b["tokens"]) == [9, 10] and a["model"] == "scripted"
    arm = bpy.data.objects[job.armature_name]
    assert actions.versions(arm) == [first, second] and arm.animation_data.action == second
    assert "Refinement: No refinements needed." in bpy.context.window_manager.irg_motion.assessment


def test_backend_death_mid_job_is_one_error_and_nothing_written(blender_scene):
    import bpy
    backend = ScriptedBackend()
    job = job_for(backend)
    backend.events = [{"event": "ack", "id": "r1", "type": "generate"},
                      {"event": "motion_tokens", "id": "r1", "round": 1, "tokens": [1, 2, 3]},
                      {"event": "error", "id": None, "code": "backend_exited", "message": "it died: see log"},
                      {"event": "error", "id": None, "code": "backend_exited", "message": "second"}]
    assert finish(job) is False
    assert job.state == "error" and job.error == "it died: see log"
    assert bpy.context.window_manager.irg_motion.status == "it died: see log"
    assert len(bpy.data.actions) == 0 and len(bpy.data.objects) == 0


def test_progress_cancel_and_deleted_armature(blender_scene, motion_event):
    import bpy
    from irg_blender_addon.rig import armature as rig
    backend = ScriptedBackend()
    arm = rig.ensure_armature(bpy.context)
    job = job_for(backend, arm.name, max_motion_tokens=8)
    backend.events = [{"event": "motion_tokens", "id": "r1", "round": 1, "tokens": [1, 2]}]
    job.pump()
    assert job.progress == pytest.approx(0.25) and "2 motion tokens" in job.status
    bpy.data.objects.remove(arm)
    backend.events = [motion_event("r1")]
    assert finish(job) is False and job.state == "error" and "was deleted" in job.error
    assert backend.sent[-1] == {"id": "r2", "type": "cancel", "target": "r1"}
    assert len(bpy.data.actions) == 0

    job = job_for(ScriptedBackend())
    job.cancel()
    assert job.running and job.client.sent[-1]["type"] == "cancel"
    job.cancel()  # a second press stops the backend at once
    assert job.state == "cancelled" and job.client.state == "stopped"
