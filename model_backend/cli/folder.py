"""Model folders: make-fixture (a tiny untrained one), inspect (what one holds; no torch), convert
(the released checkpoints into one)."""
from __future__ import annotations

import argparse
import json
import re
from pathlib import Path
from typing import Any

import numpy as np

from ..wire.manifest import ModelFolderError, llm_config_problem, read_manifest
from .common import MODEL_HELP, CliError, subparser

STAGE_USE = {1: "single-task prompts", 2: "interleaved reasoning", 3: "interleaved reasoning, refines more"}

def cmd_make_fixture(args: argparse.Namespace) -> int:
    from ..convert.fixture import make_fixture

    try:
        path = make_fixture(args.dir, args.seed, dataset=args.dataset, stage=args.stage, hidden_size=args.hidden_size)
    except ValueError as exc:  # ModelFolderError too: a non-empty folder that is not a fixture
        raise CliError(str(exc)) from None
    print(f"wrote a fixture model folder to {path} (seed {args.seed}, {args.dataset}, stage {args.stage}):")
    for rel, size in _files(path):
        print(f"  {rel:<28} {_size(size):>10}")
    print("It is untrained: its motion and text are noise. Use it to test the pipeline; for real motion "
          "convert a checkpoint with `irg-motion convert` (docs/model-setup.md).")
    return 0

def _files(folder: Path) -> list[tuple[str, int]]:
    return sorted((p.relative_to(folder).as_posix(), p.stat().st_size) for p in folder.rglob("*") if p.is_file())

def _size(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1000 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return ""

def safetensors_summary(paths: list[Path]) -> dict[str, Any]:
    """Parameter count, dtypes and tensor count from safetensors headers (reads no weights)."""
    params, tensors, dtypes = 0, 0, set()
    for path in paths:
        with open(path, "rb") as fh:
            size = int.from_bytes(fh.read(8), "little")
            if not 0 < size < 100_000_000:
                raise CliError(f"{path} is not a safetensors file (bad header length)")
            header = json.loads(fh.read(size))
        for name, entry in header.items():
            if name == "__metadata__":
                continue
            params += int(np.prod(entry["shape"], dtype=np.int64))
            tensors += 1
            dtypes.add(entry["dtype"])
    return {"parameters": params, "tensors": tensors, "dtypes": sorted(dtypes)}

def _llm_weight_files(llm_dir: Path) -> list[Path]:
    index = llm_dir / "model.safetensors.index.json"
    if index.is_file():
        shards = sorted(set(json.loads(index.read_text(encoding="utf-8"))["weight_map"].values()))
        return [llm_dir / s for s in shards]
    single = llm_dir / "model.safetensors"
    return [single] if single.is_file() else []

def _tokenizer_summary(llm_dir: Path, manifest: dict[str, Any]) -> dict[str, Any]:
    path = llm_dir / "tokenizer.json"
    if not path.is_file():
        return {"file": None, "note": "no llm/tokenizer.json (vocabulary not read)"}
    data = json.loads(path.read_text(encoding="utf-8"))
    vocab = data.get("model", {}).get("vocab", {})
    ids = list(vocab.values()) if isinstance(vocab, dict) else list(range(len(vocab)))
    added = {t["content"]: int(t["id"]) for t in data.get("added_tokens", [])}
    size = max([*ids, *added.values()], default=-1) + 1
    codes = sorted(i for name, i in added.items() if re.fullmatch(r"<Motion_\d+>", name))
    summary = {"file": "llm/tokenizer.json", "vocab_size": size, "motion_start_id": added.get("<Motion>"),
               "motion_end_id": added.get("</Motion>"), "motion_code_count": len(codes),
               "motion_first_id": added.get("<Motion_0>"), "motion_last_id": codes[-1] if codes else None}
    expected = manifest["motion_tokens"]
    summary["matches_manifest"] = (summary["motion_start_id"] == expected["start_id"]
                                   and summary["motion_first_id"] == expected["first_id"]
                                   and len(codes) == expected["count"])
    return summary

def folder_report(model_dir: str | Path) -> dict[str, Any]:
    """What a model folder holds (manifest, files, tokenizer, LLM, VQ-VAE), read without torch."""
    folder = Path(model_dir).expanduser().absolute()
    manifest = read_manifest(folder)
    llm_dir = folder / "llm"
    config = json.loads((llm_dir / "config.json").read_text(encoding="utf-8"))
    problem = llm_config_problem(config) if isinstance(config, dict) else "llm/config.json must hold a JSON object"
    if problem:
        raise ModelFolderError(f"model folder {folder}: {problem}")
    keys = ("model_type", "num_hidden_layers", "hidden_size", "intermediate_size", "num_attention_heads",
            "num_key_value_heads", "head_dim", "vocab_size", "tie_word_embeddings", "sliding_window")
    llm = {k: config.get(k) for k in keys}
    llm["architecture"] = (config.get("architectures") or [None])[0]
    llm["dtype"] = config.get("dtype", config.get("torch_dtype"))
    weights = _llm_weight_files(llm_dir)
    llm["weights"] = safetensors_summary(weights) if weights else None
    vq = dict(manifest["vqvae"])
    vq["weights"] = safetensors_summary([folder / vq["file"]]) if vq["file"].endswith(".safetensors") else None
    return {
        "dir": str(folder),
        "manifest": {k: manifest.get(k) for k in ("name", "stage", "dataset", "feature_size", "num_joints",
                                                  "fps", "fixture", "created_by", "created_at")},
        "sources": manifest.get("sources", []),
        "motion_tokens": manifest["motion_tokens"],
        "tokenizer": _tokenizer_summary(llm_dir, manifest),
        "llm": llm,
        "vqvae": vq,
        "files": [{"path": rel, "bytes": size} for rel, size in _files(folder)],
    }

def _params(weights: dict[str, Any] | None) -> str:
    if not weights:
        return "unknown (no safetensors file)"
    n = weights["parameters"]
    count = f"{n / 1e9:.3f} B" if n >= 1e8 else f"{n / 1e6:.2f} M"
    return f"{count} parameters in {weights['tensors']} tensors ({', '.join(weights['dtypes'])})"

def format_report(report: dict[str, Any]) -> str:
    """`folder_report` as text for people."""
    m, llm, tok, vq = report["manifest"], report["llm"], report["tokenizer"], report["vqvae"]
    lines = [f"Model folder {report['dir']}",
             f"  name        {m['name']}",
             f"  stage       {m['stage']} ({STAGE_USE.get(m['stage'], '?')})",
             f"  dataset     {m['dataset']}: {m['num_joints']} joints, {m['feature_size']} features, {m['fps']:g} fps",
             f"  fixture     {'yes: untrained, its motion is noise' if m['fixture'] else 'no'}",
             f"  created by  {m.get('created_by') or '?'}" + (f" at {m['created_at']}" if m.get("created_at") else "")]
    for src in report["sources"]:
        lines.append(f"  source      {src.get('role', '?')}: {src.get('file', '?')} "
                     f"({_size(src.get('bytes', 0))}, sha256 {str(src.get('sha256', ''))[:12]}...)")
    lines += ["LLM (llm/)",
              f"  model       {llm['architecture']} ({llm['model_type']}), {llm['num_hidden_layers']} layers, "
              f"hidden {llm['hidden_size']}, MLP {llm['intermediate_size']}",
              f"  attention   {llm['num_attention_heads']} heads / {llm['num_key_value_heads']} KV heads, "
              f"head_dim {llm['head_dim']}, sliding window {llm['sliding_window']}",
              f"  embedding   {llm['vocab_size']} rows, {'tied' if llm['tie_word_embeddings'] else 'untied'} "
              f"output head; saved as {llm['dtype']}",
              f"  weights     {_params(llm['weights'])}"]
    if tok.get("file"):
        mt = report["motion_tokens"]
        lines += ["Tokenizer (llm/tokenizer.json)",
                  f"  vocabulary  {tok['vocab_size']} tokens",
                  f"  motion ids  <Motion> {tok['motion_start_id']}, </Motion> {tok['motion_end_id']}, "
                  f"<Motion_0..{tok['motion_code_count'] - 1}> {tok['motion_first_id']}..{tok['motion_last_id']}"
                  + ("" if tok["matches_manifest"] else
                     f"  MISMATCH: the manifest says {mt['start_id']}, {mt['end_id']}, {mt['first_id']}..")]
    else:
        lines += ["Tokenizer", f"  {tok['note']}"]
    lines += [f"VQ-VAE ({vq['file']})",
              f"  shape       {vq['feature_size']} features, width {vq['width']}, code dim {vq['code_dim']}, "
              f"{vq['num_codes']} codes, depth {vq['depth']}, dilation growth {vq['dilation_growth']}, "
              f"time x{vq['stride_t'] ** vq['down_t']}",
              f"  weights     {_params(vq['weights'])}",
              "Files"]
    lines += [f"  {f['path']:<34} {_size(f['bytes']):>10}" for f in report["files"]]
    total = sum(f["bytes"] for f in report["files"])
    lines.append(f"  {'total':<34} {_size(total):>10}")
    return "\n".join(lines)

def cmd_inspect(args: argparse.Namespace) -> int:
    try:
        report = folder_report(args.dir)
    except (OSError, ValueError, KeyError, TypeError, AttributeError, OverflowError, RecursionError) as exc:
        if isinstance(exc, ModelFolderError):
            raise
        raise CliError(f"model folder {args.dir}: a file cannot be read ({type(exc).__name__}: {exc}); "
                       "convert the model again (`irg-motion convert`) or make the fixture again") from None
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        print(format_report(report))
    return 0


def add_make_fixture(subs: Any, p: dict[str, argparse.ArgumentParser]) -> None:
    """The `make-fixture` command and its arguments."""
    v, model, motion, sampling = p["verbose"], p["model"], p["motion"], p["sampling"]
    sub = subparser(subs, "make-fixture", "write a tiny untrained model folder for tests and demos", [v],
                     cmd_make_fixture)
    sub.add_argument("dir", metavar="DIR", help="folder to create (an earlier fixture there is replaced)")
    sub.add_argument("--seed", type=int, default=0, metavar="N",
                     help="random seed: the same seed gives identical files")
    sub.add_argument("--dataset", choices=("HumanML3D", "KIT-ML"), default="HumanML3D")
    sub.add_argument("--stage", type=int, choices=(1, 2, 3), default=2, help="training stage to imitate")
    sub.add_argument("--hidden-size", type=int, default=64, metavar="N",
                     help="LLM width, 4 heads of N/4 (default 64; 256 gives head_dim 64, which vLLM's CPU "
                          "attention needs)")


def add_inspect(subs: Any, p: dict[str, argparse.ArgumentParser]) -> None:
    """The `inspect` command and its arguments."""
    v, model, motion, sampling = p["verbose"], p["model"], p["motion"], p["sampling"]
    sub = subparser(subs, "inspect", "show what a model folder holds (fast, no torch)", [v], cmd_inspect)
    sub.add_argument("dir", metavar="DIR", nargs="?", help=MODEL_HELP)
    sub.set_defaults(model_argument="dir")
    sub.add_argument("--json", action="store_true", help="machine-readable output")


def add_convert(subs: Any, p: dict[str, argparse.ArgumentParser]) -> None:
    from ..convert.checkpoint import add_convert_arguments, run_convert

    sub = subs.add_parser("convert", parents=[p["verbose"]], formatter_class=argparse.RawDescriptionHelpFormatter,
                          help="released IRG-MotionLLM checkpoints to a model folder",
                          description="Convert the released IRG-MotionLLM pieces into one model folder "
                                      "(docs/model-setup.md).",
                          epilog="example:\n  irg-motion convert --checkpoint stage3.pth --base gemma-2-2b-it/ "
                                 "--vqvae vqvae.pth --mean mean.npy --std std.npy --out models/irg-stage3")
    add_convert_arguments(sub)
    sub.set_defaults(run=run_convert)
