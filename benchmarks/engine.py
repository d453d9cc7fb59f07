"""Engine benchmark: LLM tokens/s, time to first motion token, VQ-VAE decode time, peak memory.

Runs on the CPU (CUDA with `--device cuda`), each measurement in its own subprocess so the
peak resident memory of one does not mix into another, and prints markdown tables.
Models, all with random weights (speed does not depend on training):
  - the tiny fixture (`irg-motion make-fixture`: 2 layers, hidden 64);
  - a Gemma-2 2B with the real shapes (hidden 2304, 26 layers, 8/4 heads, head_dim 256,
    intermediate 9216, vocabulary 256514), saved once in bf16 to a temporary model folder
    (5.2 GB of disk, deleted at the end) and loaded by the product's loader in bf16, nf4
    (4-bit quantisation at load time; a quantised model is never saved) and fp32;
  - the T2M-GPT VQ-VAE at its real size (width 512) decoding 49 tokens (9.8 s of motion).
The measured path is the product's: `model_backend.llm.engine.Engine.generate(mode="direct")`
(the forced-`<Motion>` prompt; the engine's constraint keeps the output motion codes).
Each model runs `--repeats` generations and the best is reported (the run least disturbed
by other processes on a shared machine), with the median beside it. The 2B folder reuses
the fixture's tokenizer (its ids are below the vocabulary size): every step still computes
all 256514 logits, so the cost is the real one. A random model may close the motion early:
the `tokens` column says how many codes were timed. Writes nothing but the temporary folder.
Usage: python benchmarks/engine.py [--tokens 16] [--repeats 3] [--skip-2b] [--device cuda]
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

from timing import best_time  # noqa: E402  (this folder: the script's own)

CAPTION = "a person walks forward and waves with the right hand"
GEMMA2_2B = dict(hidden_size=2304, num_hidden_layers=26, num_attention_heads=8, num_key_value_heads=4,
                 head_dim=256, query_pre_attn_scalar=256, intermediate_size=9216, vocab_size=256514)


def peak_rss_gb() -> float:
    """Peak resident memory of this process (Linux reports ru_maxrss in KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / 1e9


# ---------------------------------------------------------------- child cases (one per subprocess)

def build_model(out: Path, shape: str) -> dict[str, Any]:
    """A fixture folder; for `2b`, its LLM replaced by a random Gemma-2 2B saved in bf16."""
    from model_backend.convert.fixture import make_fixture

    t0 = time.perf_counter()
    make_fixture(out, seed=0)
    if shape == "2b":
        _replace_llm_with_2b(out / "llm")
    size = sum(p.stat().st_size for p in (out / "llm").glob("*.safetensors"))
    return {"build_s": time.perf_counter() - t0, "disk_gb": size / 1e9}


def _replace_llm_with_2b(llm_dir: Path) -> None:
    """Random weights (normal, std 0.02) of the real 2B shapes, built on meta then filled in place."""
    import torch
    from transformers import AutoConfig, Gemma2ForCausalLM

    from model_backend.llm.loader import hf_progress_bars_off

    config = AutoConfig.from_pretrained(llm_dir)
    for key, value in GEMMA2_2B.items():
        setattr(config, key, value)
    config.layer_types = ["sliding_attention" if i % 2 == 0 else "full_attention"
                          for i in range(config.num_hidden_layers)]
    config.dtype = torch.bfloat16
    with torch.device("meta"):
        model = Gemma2ForCausalLM(config).to(torch.bfloat16)  # cast while on meta: no memory yet
    model.to_empty(device="cpu")
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if name.endswith("norm.weight"):
                param.zero_()  # Gemma's RMSNorm scales by (1 + w)
            else:
                param.normal_(0.0, 0.02, generator=generator)
    model.tie_weights()
    (llm_dir / "model.safetensors").unlink()
    with hf_progress_bars_off():
        model.save_pretrained(llm_dir)


def run_llm(model_dir: Path, device: str, precision: str, tokens: int, repeats: int) -> dict[str, Any]:
    """Load with the product's Engine, then `repeats` direct-mode generations of `tokens` motion codes."""
    import transformers  # noqa: F401  (imported before the clock starts: load time is loading only)

    from model_backend.llm.engine import Engine
    from model_backend.llm.prompts import forced_generate_ids

    t0 = time.perf_counter()
    engine = Engine(model_dir, device, precision)
    load_s = time.perf_counter() - t0
    runs = [_generate_once(engine, tokens) for _ in range(repeats)]
    speeds = sorted(r["tokens_per_s"] for r in runs)
    result = {"precision": engine.llm.precision, "load_s": load_s, "repeats": repeats,
              "prompt_tokens": len(forced_generate_ids(engine.tokenizer, CAPTION)),
              "tokens": min(r["tokens"] for r in runs),
              "first_token_s": min(r["first_token_s"] for r in runs),
              "tokens_per_s": speeds[-1], "tokens_per_s_median": speeds[len(speeds) // 2],
              "peak_rss_gb": peak_rss_gb(),
              "load_avg": os.getloadavg()[0]}  # above the thread count: other processes competed for the cores
    if device.startswith("cuda"):
        import torch
        result["peak_cuda_gb"] = torch.cuda.max_memory_allocated() / 1e9
    return result


def _generate_once(engine: Any, tokens: int) -> dict[str, Any]:
    """One `Engine.generate(mode="direct")`, timed from its `motion_tokens` events (one stamp per code)."""
    import threading

    stamps: list[float] = []

    def emit(event: dict[str, Any]) -> None:
        if event.get("event") == "motion_tokens":
            stamps.extend([time.perf_counter()] * len(event.get("tokens", [])))

    start = time.perf_counter()
    engine.generate(CAPTION, mode="direct", max_motion_tokens=tokens, emit=emit, cancel=threading.Event())
    if not stamps:
        raise RuntimeError("the engine produced no motion token")
    later = len(stamps) - stamps.count(stamps[0])  # codes after the first event
    span = stamps[-1] - stamps[0]
    return {"tokens": len(stamps), "first_token_s": stamps[0] - start,
            "tokens_per_s": later / span if span > 0 else float("nan")}


def run_vqvae(tokens: int, repeats: int = 9) -> dict[str, Any]:
    """Decode `tokens` codes with a real-size VQ-VAE: the network alone, and the whole codec (+ joints)."""
    import numpy as np
    import torch

    from model_backend.vq.codec import MotionCodec
    from model_backend.convert.fixture import feature_statistics
    from model_backend.rig_math.skeleton import HUMANML3D
    from model_backend.vq.vqvae import VQVAE

    torch.manual_seed(0)
    vq = VQVAE(feature_size=263, width=512, code_dim=512).eval()
    with torch.no_grad():
        vq.vqvae.quantizer.codebook.normal_()
    mean, std = feature_statistics(HUMANML3D, 0)
    codec = MotionCodec(vq, mean, std, HUMANML3D)
    codes = [int(c) for c in np.random.default_rng(0).integers(0, 512, tokens)]
    motion = codec.decode(codes)  # warm-up: first-call allocations
    codec_s = best_time(lambda: codec.decode(codes), repeats)
    net_s = _time_network(vq, codes, repeats)
    return {"tokens": tokens, "frames": int(motion.joints.shape[0]), "net_s": net_s, "codec_s": codec_s,
            "parameters_m": sum(t.numel() for t in vq.state_dict().values()) / 1e6, "peak_rss_gb": peak_rss_gb(),
            "load_avg": os.getloadavg()[0]}


def _time_network(vq: Any, codes: list[int], repeats: int) -> float:
    import torch

    idx = torch.tensor([codes])
    core = vq.vqvae
    with torch.inference_mode():
        return best_time(lambda: core.decoder(core.quantizer.dequantize(idx).permute(0, 2, 1)), repeats)


# ---------------------------------------------------------------- the parent: run cases, print the table

def _child(args: list[str], label: str) -> dict[str, Any]:
    """Run one case in a fresh Python; its last stdout line is a JSON result."""
    print(f"[bench] {label} ...", file=sys.stderr, flush=True)
    t = time.perf_counter()
    proc = subprocess.run([sys.executable, __file__, *args], capture_output=True, text=True)
    if proc.returncode != 0:
        tail = "\n".join(proc.stderr.strip().splitlines()[-15:])
        raise RuntimeError(f"{label} failed (exit {proc.returncode}):\n{tail}")
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    print(f"[bench] {label}: done in {time.perf_counter() - t:.0f} s", file=sys.stderr, flush=True)
    return result


def _llm_row(name: str, r: dict[str, Any], build: dict[str, Any]) -> str:
    return (f"| {name} | {r['precision']} | {r['load_s']:.1f} | {r['first_token_s'] * 1000:.0f} ms | "
            f"{r['tokens_per_s']:.2f} / {r['tokens_per_s_median']:.2f} | {r['tokens']} | {r['peak_rss_gb']:.2f} | "
            f"{build['disk_gb']:.3f} | {r['load_avg']:.1f} |")


def _machine(device: str) -> str:
    import torch

    cpu = platform.processor() or platform.machine()
    return (f"{os.cpu_count()} CPU threads ({cpu}), torch {torch.__version__} with {torch.get_num_threads()} "
            f"threads, Python {platform.python_version()}, device {device}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tokens", type=int, default=16, help="motion tokens to generate per run (default 16)")
    parser.add_argument("--repeats", type=int, default=3,
                        help="generations per model; the best is reported (default 3)")
    parser.add_argument("--device", default="cpu", help="cpu (default) or cuda")
    parser.add_argument("--skip-2b", action="store_true", help="only the tiny fixture and the VQ-VAE")
    parser.add_argument("--case", help=argparse.SUPPRESS)  # internal: run one case in this process
    parser.add_argument("--model", help=argparse.SUPPRESS)
    parser.add_argument("--precision", help=argparse.SUPPRESS)
    parser.add_argument("--shape", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)

    if args.case:
        case = {"build": lambda: build_model(Path(args.model), args.shape),
                "llm": lambda: run_llm(Path(args.model), args.device, args.precision, args.tokens, args.repeats),
                "vqvae": lambda: run_vqvae(49)}[args.case]
        print(json.dumps(case()))
        return 0

    tmp = Path(tempfile.mkdtemp(prefix="irg-bench-"))
    rows: list[str] = []
    notes: list[str] = []
    try:
        shapes = ["tiny"] + ([] if args.skip_2b else ["2b"])
        for shape in shapes:
            folder = tmp / shape
            build = _child(["--case", "build", "--model", str(folder), "--shape", shape], f"build {shape} model")
            if shape == "2b":
                notes.append(f"2B folder: built (random init + bf16 save) in {build['build_s']:.0f} s, "
                             f"{build['disk_gb']:.2f} GB of safetensors on disk (deleted after the run)")
            for precision in ("bf16", "nf4", "fp32"):
                r = _child(["--case", "llm", "--model", str(folder), "--device", args.device,
                            "--precision", precision, "--tokens", str(args.tokens), "--repeats", str(args.repeats)],
                           f"{shape} {precision}")
                label = "tiny fixture (2 layers, hidden 64)" if shape == "tiny" else "Gemma-2 2B shape (random)"
                rows.append(_llm_row(label, r, build))
            shutil.rmtree(folder, ignore_errors=True)
        vq = _child(["--case", "vqvae"], "VQ-VAE decode")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)

    print(f"Machine: {_machine(args.device)}. Engine.generate(mode='direct'), {args.tokens} motion tokens per "
          f"run, {args.repeats} runs per model: best time to first token, best / median tokens/s.\n")
    print("| model | precision | load (s) | time to first motion token | tokens/s (best / median) | tokens "
          "| peak RSS (GB) | weights on disk (GB) | load avg |")
    print("|---|---|---|---|---|---|---|---|---|")
    print("\n".join(rows))
    print(f"\n| VQ-VAE (width 512, {vq['parameters_m']:.1f} M parameters) | tokens | frames | network decode | "
          "decode + joints (MotionCodec) | peak RSS (GB) | load avg |")
    print("|---|---|---|---|---|---|---|")
    print(f"| fp32 | {vq['tokens']} | {vq['frames']} | {vq['net_s'] * 1000:.1f} ms | {vq['codec_s'] * 1000:.1f} ms | "
          f"{vq['peak_rss_gb']:.2f} | {vq['load_avg']:.1f} |")
    print(f"\nload avg: the 1-minute load average when the case ended; above {os.cpu_count()} other processes "
          "were competing for the cores and the times are pessimistic.")
    print("\n" + "\n".join(f"- {n}" for n in notes))
    return 0


if __name__ == "__main__":
    sys.exit(main())
