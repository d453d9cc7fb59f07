"""Train the demo model's small Gemma-2 on IRG task examples (CPU, deterministic for a seed).

The model is `Gemma2ForCausalLM` with Gemma-2's real architecture (soft-capped eager
attention, sliding window, tied embeddings) at a tiny size; head_dim 64 as in common
serving kernels. Training: AdamW, linear warm-up then cosine decay, bf16 autocast on
the CPU (fp32 master weights), loss on the response tokens only, batches of examples of
similar length under a token budget. Examples are drawn fresh for every epoch.
"""
from __future__ import annotations

import math
import random
import time
from dataclasses import asdict, dataclass, field
from typing import Any, Sequence

import torch

from . import tasks as T

__all__ = ["LLMConfig", "TrainResult", "train_llm", "batches", "evaluate_loss"]

WIDTH_STEP = 32


@dataclass
class LLMConfig:
    """Model size and training schedule of the demo LLM."""

    hidden_size: int = 256
    num_layers: int = 4
    heads: int = 4
    kv_heads: int = 2
    head_dim: int = 64
    intermediate_size: int = 768
    epochs: int = 20
    examples_per_epoch: int = 2500
    batch_tokens: int = 3072
    lr: float = 3e-3
    warmup_steps: int = 60
    weight_decay: float = 0.01
    seed: int = 0
    threads: int = 2
    bf16: bool = True
    eval_examples: int = 140   # held-out examples for the held-out loss


@dataclass
class TrainResult:
    """What training measured (for the manifest and the model card)."""

    config: dict[str, Any]
    parameters: int
    steps: int
    tokens: int
    seconds: float
    final_loss: float
    eval_loss: dict[str, float] = field(default_factory=dict)
    losses: list[float] = field(default_factory=list)


def _width(n: int) -> int:
    """Sequence lengths rounded up to a multiple of WIDTH_STEP, so few batch shapes recur
    (every new shape costs the CPU kernels a fresh plan and memory)."""
    return -(-n // WIDTH_STEP) * WIDTH_STEP


def batches(examples: Sequence[T.Example], batch_tokens: int, rng: random.Random) -> list[list[T.Example]]:
    """Examples grouped by length: each batch pads to one rounded width and holds at most
    `batch_tokens` tokens of it; the batches are shuffled."""
    by_width: dict[int, list[T.Example]] = {}
    for example in sorted(examples, key=lambda e: len(e.ids)):
        by_width.setdefault(_width(len(example.ids)), []).append(example)
    out: list[list[T.Example]] = []
    for width, group in sorted(by_width.items()):
        rows = max(1, batch_tokens // width)
        out += [group[i:i + rows] for i in range(0, len(group), rows)]
    rng.shuffle(out)
    return out


def _tensors(batch: Sequence[T.Example], pad_id: int) -> dict[str, torch.Tensor]:
    """Right-padded input ids, attention mask and labels (-100 on prompt and padding)."""
    width = _width(max(len(e.ids) for e in batch))
    ids = torch.full((len(batch), width), pad_id, dtype=torch.long)
    labels = torch.full((len(batch), width), T.IGNORE, dtype=torch.long)
    mask = torch.zeros((len(batch), width), dtype=torch.long)
    for row, example in enumerate(batch):
        n = len(example.ids)
        ids[row, :n] = torch.tensor(example.ids)
        labels[row, :n] = torch.tensor(example.labels)
        mask[row, :n] = 1
    return {"input_ids": ids, "attention_mask": mask, "labels": labels}


def _lr(step: int, total: int, config: LLMConfig) -> float:
    if step < config.warmup_steps:
        return config.lr * (step + 1) / config.warmup_steps
    progress = (step - config.warmup_steps) / max(1, total - config.warmup_steps)
    return config.lr * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(1.0, progress))))


def evaluate_loss(model: Any, examples: Sequence[T.Example], pad_id: int, config: LLMConfig) -> dict[str, float]:
    """Mean response loss per task on `examples` (no gradient)."""
    model.eval()
    sums: dict[str, list[float]] = {}
    with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=config.bf16):
        for example in examples:
            loss = model(**_tensors([example], pad_id)).loss
            sums.setdefault(example.task, []).append(float(loss))
    model.train()
    return {task: round(sum(v) / len(v), 4) for task, v in sorted(sums.items())}


def train_llm(tokenizer: Any, clips: Sequence[T.Clip], config: LLMConfig,
              progress: bool = True) -> tuple[Any, Any, TrainResult]:
    """Build and train the LLM on examples from `clips`; return (model, generation config, result)."""
    from ..convert.fixture import build_llm
    from .progress import progress as bar

    torch.set_num_threads(config.threads)
    torch.manual_seed(config.seed)
    model, generation = build_llm(tokenizer, config.seed, config.hidden_size, config.num_layers, heads=config.heads,
                                  kv_heads=config.kv_heads, head_dim=config.head_dim,
                                  intermediate_size=config.intermediate_size)
    model.train()
    pad_id = int(tokenizer.pad_token_id)
    decay = [p for n, p in model.named_parameters() if p.ndim >= 2]
    other = [p for n, p in model.named_parameters() if p.ndim < 2]
    optimizer = torch.optim.AdamW([{"params": decay, "weight_decay": config.weight_decay},
                                   {"params": other, "weight_decay": 0.0}], lr=config.lr, betas=(0.9, 0.95))
    rng = random.Random(config.seed)
    epochs = [T.sample_examples(tokenizer, clips, config.examples_per_epoch, seed=config.seed * 1000 + e)
              for e in range(config.epochs)]
    plan = [b for examples in epochs for b in batches(examples, config.batch_tokens, rng)]
    losses: list[float] = []
    tokens, started = 0, time.monotonic()
    for step, batch in enumerate(bar(plan, len(plan), "llm", enabled=progress)):
        for group in optimizer.param_groups:
            group["lr"] = _lr(step, len(plan), config)
        inputs = _tensors(batch, pad_id)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=config.bf16):
            loss = model(**inputs).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        losses.append(loss.item())
        tokens += int(inputs["attention_mask"].sum())
    model.eval()
    held_out = [c for c in clips if c.split != "train"]
    eval_examples = (T.sample_examples(tokenizer, [_as_train(c) for c in held_out], config.eval_examples,
                                       seed=config.seed + 7)
                     if len({c.content for c in held_out}) >= 2 else [])
    result = TrainResult(config=asdict(config), parameters=sum(p.numel() for p in model.parameters()),
                         steps=len(plan), tokens=tokens, seconds=round(time.monotonic() - started, 1),
                         final_loss=round(sum(losses[-20:]) / max(1, len(losses[-20:])), 4),
                         eval_loss=evaluate_loss(model, eval_examples, pad_id, config) if eval_examples else {},
                         losses=[round(x, 4) for x in losses])
    return model, generation, result


def _as_train(clip: T.Clip) -> T.Clip:
    """A held-out clip presented as a sampling source (for the held-out loss only)."""
    return T.Clip(clip.name, clip.codes, clip.content, clip.style, "train")
