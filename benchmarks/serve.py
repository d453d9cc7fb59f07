"""Serving benchmark: the HTTP server with each engine on the same model, 1, 8 and 32 concurrent clients.

    .venv-backend/bin/python benchmarks/serve.py [--model DIR] [--clients 1,8,32] [--requests 6]
        [--max-seconds 90] [--engines transformers,vllm]

Loopback only (each server binds 127.0.0.1:0, no token). Every client sends its requests one after
another: a `direct` generation of `--motion-tokens` motion tokens, greedy, each with its own seed
so prompts differ. A level stops after `--requests` per client or `--max-seconds`, whichever
comes first (requests still open then are cancelled and not counted). Reported per engine and
level: completed requests per second (wall clock), p50 / p95 time to the first motion token and
to `done`, as seen by the client. The transformers engine runs from .venv-backend, vLLM from
.venv-vllm (make venv-vllm); an engine whose environment is missing is skipped with a note.

Model: --model, else presets/models/irg-tiny when it exists, else a fixture with head_dim 64
(vLLM's CPU attention needs a head size of 64 or more), built once in out/.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import signal
import statistics
import subprocess
import sys
import threading
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import requests

ROOT = Path(__file__).resolve().parents[1]
PYTHONS = {"transformers": ROOT / ".venv-backend" / "bin" / "python", "vllm": ROOT / ".venv-vllm" / "bin" / "python"}
PROMPTS = ("a person walks forward", "a person jumps twice", "someone waves with the right hand",
           "a man runs in a circle", "a woman sits down slowly", "the person turns around")
STARTUP_S = 600.0


def default_model() -> Path:
    tiny = ROOT / "presets" / "models" / "irg-tiny"
    if (tiny / "manifest.json").is_file():
        return tiny
    fixture = ROOT / "out" / "fixture-model-hd64"
    if not (fixture / "manifest.json").is_file():
        subprocess.run([str(PYTHONS["transformers"]), "-m", "model_backend", "make-fixture", str(fixture),
                        "--seed", "0", "--hidden-size", "256"], check=True, cwd=ROOT)
    return fixture


class Server:
    """`serve --http 127.0.0.1:0 --engine E` in a subprocess, until stop()."""

    def __init__(self, engine: str, model: Path, precision: str):
        env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1"),
               "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
        env.pop("IRG_SERVER_TOKEN", None)
        self.proc = subprocess.Popen(
            [str(PYTHONS[engine]), "-m", "model_backend", "serve", "--http", "127.0.0.1:0", "--engine", engine,
             "--model", str(model), "--device", "cpu", "--precision", precision, "--max-queue", "256",
             "--max-per-client", "256"],
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env, cwd=ROOT)
        self.url = ""
        self.log: list[str] = []
        ready = threading.Event()

        def read() -> None:
            for raw in self.proc.stderr:
                line = raw.decode("utf-8", "replace")
                self.log.append(line)
                if line.startswith("listening on "):
                    self.url = line.split()[-1]
                    ready.set()
            ready.set()
        threading.Thread(target=read, daemon=True).start()
        if not ready.wait(STARTUP_S) or not self.url:
            self.stop()
            raise RuntimeError(f"the {engine} server did not start:\n" + "".join(self.log[-20:]))

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def one_request(url: str, body: dict[str, Any], stop: threading.Event) -> dict[str, float] | None:
    """Times of one generation, as the client sees them; None when it did not finish (stopped or failed)."""
    started = time.perf_counter()
    first = None
    with requests.post(f"{url}/v1/generate", json=body, stream=True, timeout=(5, 300)) as response:
        if response.status_code != 200:
            return None
        for line in response.iter_lines(chunk_size=None):  # as the add-on reads: each chunk as it comes
            if stop.is_set():
                return None
            if not line:
                continue
            event = json.loads(line)
            if event["event"] == "motion_tokens" and first is None:
                first = time.perf_counter() - started
            if event["event"] in ("done", "error"):
                if event["event"] == "error" or first is None:
                    return None
                return {"first_motion_s": first, "done_s": time.perf_counter() - started}
    return None


def run_level(url: str, clients: int, per_client: int, max_seconds: float, motion_tokens: int) -> dict[str, Any]:
    """`clients` threads, each sending up to `per_client` requests in turn, for at most `max_seconds`."""
    results: list[dict[str, float]] = []
    lock = threading.Lock()
    stop = threading.Event()

    def client(index: int) -> None:
        for n in range(per_client):
            if stop.is_set():
                return
            body = {"prompt": PROMPTS[(index + n) % len(PROMPTS)], "mode": "direct",
                    "max_motion_tokens": motion_tokens, "seed": index * 1000 + n}
            result = one_request(url, body, stop)
            if result is not None:
                with lock:
                    results.append(result)

    threads = [threading.Thread(target=client, args=(i,), daemon=True) for i in range(clients)]
    started = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(max(0.0, max_seconds - (time.perf_counter() - started)))
    stop.set()
    elapsed = time.perf_counter() - started
    for thread in threads:
        thread.join(30)
    return {"clients": clients, "completed": len(results), "elapsed_s": elapsed,
            "rps": len(results) / elapsed if elapsed else 0.0,
            "first_motion_s": percentiles([r["first_motion_s"] for r in results]),
            "done_s": percentiles([r["done_s"] for r in results])}


def percentiles(values: list[float]) -> tuple[float, float]:
    if not values:
        return float("nan"), float("nan")
    if len(values) == 1:
        return values[0], values[0]
    cuts = statistics.quantiles(values, n=20, method="inclusive")
    return statistics.median(values), cuts[18]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", type=Path, default=None)
    parser.add_argument("--engines", default="transformers,vllm")
    parser.add_argument("--clients", default="1,8,32")
    parser.add_argument("--requests", type=int, default=6, help="requests per client per level (default 6)")
    parser.add_argument("--max-seconds", type=float, default=90.0, help="time bound of one level (default 90)")
    parser.add_argument("--motion-tokens", type=int, default=49)
    parser.add_argument("--precision", default="fp32")
    args = parser.parse_args()
    model = args.model or default_model()
    levels = [int(c) for c in args.clients.split(",")]
    rows: list[tuple[str, dict[str, Any]]] = []
    for engine in args.engines.split(","):
        if not PYTHONS[engine].exists():
            print(f"skipped {engine}: {PYTHONS[engine]} is missing (make venv-{engine if engine == 'vllm' else 'backend'})")
            continue
        started = time.perf_counter()
        server = Server(engine, model, args.precision)
        print(f"{engine}: started in {time.perf_counter() - started:.0f} s at {server.url}", flush=True)
        try:
            run_level(server.url, 1, 1, args.max_seconds, args.motion_tokens)  # warm-up, not reported
            for clients in levels:
                row = run_level(server.url, clients, args.requests, args.max_seconds, args.motion_tokens)
                rows.append((engine, row))
                print(f"  {clients:>3} clients: {row['completed']} done in {row['elapsed_s']:.1f} s, "
                      f"{row['rps']:.2f} req/s", flush=True)
        finally:
            server.stop()
    print(f"\n{datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC, {platform.processor() or platform.machine()}, "
          f"{os.cpu_count()} CPUs, model {model.name}, direct generation of {args.motion_tokens} motion tokens, "
          f"greedy, {args.precision}\n")
    print("| engine | clients | done | req/s | first motion p50 / p95 (s) | done p50 / p95 (s) |")
    print("|---|---|---|---|---|---|")
    for engine, row in rows:
        print(f"| {engine} | {row['clients']} | {row['completed']} | {row['rps']:.2f} | "
              f"{row['first_motion_s'][0]:.2f} / {row['first_motion_s'][1]:.2f} | "
              f"{row['done_s'][0]:.2f} / {row['done_s'][1]:.2f} |")
    by_engine = {(e, r["clients"]): r["rps"] for e, r in rows}
    for clients in levels:
        base, fast = by_engine.get(("transformers", clients)), by_engine.get(("vllm", clients))
        if base and fast:
            print(f"\nvLLM / transformers throughput at {clients} clients: {fast / base:.1f}x", end="")
    print()
    return 0


if __name__ == "__main__":
    sys.exit(main())
