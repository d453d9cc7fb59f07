"""Backend management against the real backend subprocess: a backend killed mid-stream or hung
gives one clear error with its log and the next Generate restarts it; a slow backend that
answers pings is kept; one request at a time with a local queue; ping, start, stop and the
log from the operators; a remote server with a token; the Backend panel in every state."""
from __future__ import annotations

import os
import re
import secrets
import signal
import subprocess
import time

import bpy
import pytest

from irg_blender_addon.anim import actions
from irg_blender_addon.jobs import batch, base as jobs
from irg_blender_addon.jobs import generate as generate_jobs
from irg_blender_addon import settings
from irg_blender_addon.ui import backend as backend_ui
from irg_blender_addon.backend import local as client
from irg_blender_addon.backend import registry
from irg_blender_addon.rig import armature as rig
from irg_blender_addon.backend.base import BackendError
from ui_recorder import draw


def local_client() -> client.BackendClient:
    s = settings.get_settings()
    return registry.get_client(s.backend_python, s.model_dir, s.device, s.precision)


def start_long_generation() -> generate_jobs.GenerateJob:
    """Generate with a long reasoning trace (the fixture model writes 1300 tokens of text) and
    return once the model is writing: mid-stream."""
    bpy.context.scene.irg_motion.prompt = "a person runs in a circle"
    assert bpy.ops.irg.generate() == {"FINISHED"}
    job = jobs.manager.job
    deadline = time.monotonic() + 120
    while not job.trace:
        assert job.pump(), job.status
        assert time.monotonic() < deadline, "no text from the backend"
        time.sleep(0.005)
    return job


def generate_fast(pump, addon_prefs) -> generate_jobs.GenerateJob:
    addon_prefs.mode, addon_prefs.max_motion_tokens = "direct", 3
    bpy.context.scene.irg_motion.prompt = "a person walks"
    assert bpy.ops.irg.generate() == {"FINISHED"}
    return pump(jobs.manager.job, timeout=120)


def draw_backend_panel() -> str:
    return draw(backend_ui.IRG_PT_backend, bpy.context).text()


def test_backend_killed_mid_stream(scene, addon_prefs, pump, counts):
    addon_prefs.mode, addon_prefs.max_trace_tokens = "interleaved", 1300
    before = counts()
    job = start_long_generation()
    backend = job.client
    pid = backend.pid
    assert "Ready (pid" in draw_backend_panel()
    os.kill(pid, signal.SIGKILL)
    pump(job, timeout=60)
    assert job.state == "error"
    assert job.error.startswith("The backend process was killed by signal 9 (SIGKILL)")
    assert "Generate again to restart it" in job.error
    assert f"Last lines of the backend log ({backend.log_path}):" in job.error
    rt = bpy.context.window_manager.irg_motion
    assert rt.level == "ERROR" and rt.status == job.error and not rt.running
    assert counts() == before  # nothing written
    assert backend.state == "dead" and backend.pid is None
    assert "Stopped unexpectedly: the next request restarts it" in draw_backend_panel()

    again = generate_fast(pump, addon_prefs)
    assert again.state == "done", again.status
    assert again.client is backend and backend.state == "ready"
    assert backend.pid not in (None, pid) and backend.restarts == 1
    assert len(again.action_names) == 1
    log = backend.log_path.read_text()
    assert len(re.findall(r"^=== .* starting the backend: ", log, re.M)) >= 2  # the dead run's log is kept
    assert "starting the backend" not in backend.log_tail(1000)  # the tail is the current run's


def test_hung_backend_is_stopped_and_restarted(scene, addon_prefs, pump, counts):
    addon_prefs.mode, addon_prefs.max_trace_tokens = "interleaved", 1300
    backend = local_client()
    backend.hang_timeout, backend.pong_timeout = 0.3, 0.5
    before = counts()
    job = start_long_generation()
    pid = backend.pid
    try:
        os.kill(pid, signal.SIGSTOP)  # alive but frozen: no events, no pong
        started = time.monotonic()
        pump(job, timeout=30)
        took = time.monotonic() - started
    finally:
        for sig in (signal.SIGCONT, signal.SIGKILL):
            try:
                os.kill(pid, sig)
            except ProcessLookupError:
                pass
    assert job.state == "error", job.status
    assert job.error.startswith(f"The backend (pid {pid}) stopped answering: nothing came for ")
    assert "did not answer a ping within 0.5 s" in job.error and "generate again to restart it" in job.error
    assert took < 10 and backend.state == "dead" and backend.watchdog_pings == 1
    assert counts() == before
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)  # killed and reaped

    backend.hang_timeout, backend.pong_timeout = client.HANG_TIMEOUT_S, client.PONG_TIMEOUT_S
    again = generate_fast(pump, addon_prefs)
    assert again.state == "done" and backend.pid != pid, again.status


def test_a_slow_backend_that_answers_pings_is_kept(scene, addon_prefs, pump):
    backend = local_client()
    backend.wait_ready(120)
    pid, pings = backend.pid, backend.watchdog_pings
    backend.hang_timeout, backend.pong_timeout = 0.0, 10.0  # ping whenever nothing is in flight
    try:
        addon_prefs.mode, addon_prefs.max_trace_tokens = "interleaved", 160
        bpy.context.scene.irg_motion.prompt = "a person dances"
        assert bpy.ops.irg.generate() == {"FINISHED"}
        job = pump(jobs.manager.job, timeout=120)
    finally:
        backend.hang_timeout, backend.pong_timeout = client.HANG_TIMEOUT_S, client.PONG_TIMEOUT_S
    assert job.state == "done", job.status
    assert backend.watchdog_pings > pings and backend.pid == pid and backend.state == "ready"


def collect(backend, until, timeout: float = 60.0) -> list[dict]:
    events, deadline = [], time.monotonic() + timeout
    while not any(until(e) for e in events):
        assert time.monotonic() < deadline, events
        events += backend.poll()
        time.sleep(0.005)
    return events


def test_one_request_at_a_time_with_a_local_queue(scene):
    backend = local_client()
    backend.wait_ready(120)
    ask = {"type": "generate", "prompt": "a person walks", "mode": "direct", "max_motion_tokens": 3}
    first, second, third = (backend.send(ask) for _ in range(3))
    assert backend.busy and backend.queued == 2  # written one at a time
    assert backend.send({"type": "cancel", "target": third}) and backend.queued == 1
    events = collect(backend, lambda e: e.get("id") == second and e["event"] in ("done", "error"))
    order = [(e["event"], e["id"]) for e in events if e["event"] in ("ack", "done", "error")]
    assert [step for step in order if step[1] != third] == [("ack", first), ("done", first), ("ack", second),
                                                            ("done", second)]
    answers = [e for e in events if e["id"] == third]
    assert len(answers) == 1 and answers[0]["event"] == "done"  # answered here, never acked: it was not sent
    assert answers[0]["stop_reason"] == "cancelled" and answers[0]["motions"] == 0
    assert next(e for e in events if e["event"] == "ack" and e["id"] == second)["queued"] == 0
    assert not backend.busy and backend.queued == 0


def test_ping_start_stop_and_log_operators(scene, addon_prefs, pump, no_backends_left):
    backend = local_client()
    backend.wait_ready(120)
    assert backend.status_text().startswith(f"Ready (pid {backend.pid}): ")
    assert 0 < backend.ping(timeout=10) < 10
    assert bpy.ops.irg.backend_ping() == {"FINISHED"}
    assert bpy.ops.irg.show_backend_log() == {"FINISHED"}
    text = bpy.data.texts[backend_ui.LOG_TEXTS["BACKEND"]].as_string()
    assert text.startswith(f"# {backend.log_path}") and "starting the backend" in text
    assert str(settings.get_settings().model_dir) in text

    assert bpy.ops.irg.backend_stop() == {"FINISHED"}
    assert registry.running_clients() == [] and backend.state == "stopped"
    with pytest.raises(BackendError, match="not ready"):
        backend.ping()
    assert bpy.ops.irg.backend_ping() == {"CANCELLED"}  # a warning: not running
    assert "Not running: it starts on the first request." in draw_backend_panel()

    assert bpy.ops.irg.backend_start() == {"FINISHED"}  # warm up before the first Generate
    warm = local_client()
    assert warm.state in ("starting", "ready")
    assert "Loading the model" in draw_backend_panel() or warm.state == "ready"
    warm.wait_ready(120)
    pid = warm.pid
    job = generate_fast(pump, addon_prefs)
    assert job.state == "done" and job.client is warm and warm.pid == pid  # kept warm, not restarted


def test_a_batch_on_a_remote_server_with_a_token(scene, addon_prefs, backend_python, fixture_model, tmp_path,
                                                  pump, no_backends_left):
    token = secrets.token_urlsafe(24)
    token_file = tmp_path / "token.txt"
    token_file.write_text(token)
    token_file.chmod(0o600)
    server = subprocess.Popen(
        [str(backend_python), "-m", "model_backend", "serve", "--http", "127.0.0.1:0", "--token-file",
         str(token_file), "--model", str(fixture_model), "--device", "cpu", "--precision", "fp32"],
        stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
        env=dict(os.environ, HF_HUB_OFFLINE="1", OMP_NUM_THREADS="1"))
    try:
        address, lines = None, []
        while address is None:
            line = server.stderr.readline()
            assert line, "the server stopped:\n" + "".join(lines)
            lines.append(line)
            found = re.match(r"listening on (\S+)", line)
            address = found and found.group(1)
        addon_prefs.server_url, addon_prefs.server_token = address, token
        addon_prefs.mode, addon_prefs.max_motion_tokens = "direct", 2
        merged = settings.get_settings()
        assert merged.remote and token not in repr(merged)
        remote = registry.client_for(merged)
        assert type(remote).__name__ == "RemoteBackendClient" and token not in repr(remote)
        arm = rig.create_default_rig(bpy.context)
        results = batch.bake_batch(arm, ["a person walks", "a person jumps"])
        assert [r.status for r in results] == ["done", "done"], [r.error for r in results]
        assert remote.state == "ready" and registry.running_clients() == [remote]
        assert "Server" in draw_backend_panel()
        addon_prefs.server_token = "wrong-" + token
        with pytest.raises(BackendError, match="refused the token"):
            registry.client_for(settings.get_settings()).wait_ready(30)
    finally:
        addon_prefs.server_url, addon_prefs.server_token = "", ""
        registry.shutdown_all()
        server.send_signal(signal.SIGINT)
        try:
            lines.append(server.communicate(timeout=30)[1])
        except subprocess.TimeoutExpired:
            server.kill()
            server.communicate()
    assert token not in "".join(lines)  # the server never prints it either


def test_a_remote_server_killed_mid_stream_is_reported_and_nothing_is_written(scene, addon_prefs, backend_python,
                                                                              fixture_model, pump, counts,
                                                                              no_backends_left):
    server = subprocess.Popen(
        [str(backend_python), "-m", "model_backend", "serve", "--http", "127.0.0.1:0", "--model", str(fixture_model),
         "--device", "cpu", "--precision", "fp32"],
        stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
        env=dict(os.environ, HF_HUB_OFFLINE="1", OMP_NUM_THREADS="1"))
    try:
        address = None
        while address is None:
            line = server.stderr.readline()
            assert line, "the server stopped"
            found = re.match(r"listening on (\S+)", line)
            address = found and found.group(1)
        addon_prefs.server_url = address
        addon_prefs.mode, addon_prefs.max_trace_tokens = "interleaved", 1300
        before = counts()
        job = start_long_generation()
        server.kill()  # the machine went away mid-stream: no goodbye
        server.wait(30)
        pump(job, timeout=60)
        assert job.state == "error"
        assert job.error.startswith(f"The connection to the IRG Motion server at {address} was lost")
        assert "nothing was written" in job.error
        assert counts() == before  # no version, no half-written Action
        assert job.client.state == "dead"
    finally:
        addon_prefs.server_url = ""
        registry.shutdown_all()
        if server.poll() is None:
            server.kill()
        server.wait(30)


@pytest.mark.parametrize("parallel,most", [(0, 1), (3, 3)])
def test_a_batch_on_a_server_keeps_its_bound_of_prompts_in_flight(scene, addon_prefs, backend_python, fixture_model,
                                                                   tmp_path, no_backends_left, parallel, most):
    """batch_parallel 0 on a server that does not batch (transformers engine): one prompt at a
    time; 3: three requests in flight at once, each job seeing only its own events, and the
    strips laid out in list order whatever order the items finish in."""
    from serve_process import HttpServer, write_token_file

    token = secrets.token_urlsafe(24)
    server = HttpServer(backend_python, fixture_model, "--token-file", str(write_token_file(tmp_path, token)),
                        "--time-slice", "0.05")
    try:
        addon_prefs.server_url, addon_prefs.server_token = server.url, token
        addon_prefs.mode, addon_prefs.thumbnails = "direct", False
        arm = rig.create_default_rig(bpy.context)
        prompts = [("a person walks", 5), ("a person jumps", 9), ("a person waves", 2), ("a person bows", 4),
                   ("a person sits", 7)]  # lengths differ, so later items can finish first
        entries = [{"prompt": p, "length": tokens * 0.2} for p, tokens in prompts]
        batch.fill_items(bpy.context.scene.irg_batch, batch.as_prompts(entries), replace=True)
        job = batch.start_batch(bpy.context, "ALL", arm, batch_parallel=parallel)
        in_flight, deadline = set(), time.monotonic() + 120
        while job.pump():
            in_flight.add(sum(1 for j in job.jobs.values() if j.request_id))
            assert time.monotonic() < deadline, job.status
            time.sleep(0.005)
        assert job.state == "done", job.status
        assert max(in_flight) == most
        results = batch.results(bpy.context.scene.irg_batch)
        assert [r.status for r in results] == ["done"] * 5, [r.error for r in results]
        for result, (_prompt, tokens) in zip(results, prompts):  # each item got its own motion
            info = actions.version_info(result.action)
            assert info["prompt"] == result.prompt and 2 <= len(info["tokens"]) <= tokens
        strips = sorted(arm.animation_data.nla_tracks["IRG Batch"].strips, key=lambda s: s.frame_start)
        assert [s.action.name for s in strips] == [r.action.name for r in results]
    finally:
        addon_prefs.server_url, addon_prefs.server_token = "", ""
        registry.shutdown_all()
        server.end()
