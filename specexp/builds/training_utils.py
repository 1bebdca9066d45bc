"""Small training helpers shared by the pairs this project builds (specexp/builds/train_tiny_pair.py,
specexp/builds/train_distilled_drafter.py, specexp/builds/train_feature_drafter.py): precision, learning-rate schedules, an AdamW step,
distillation losses, random windows and a progress bar."""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F


def use_bf16(precision: str) -> bool:
    if precision == "auto":
        cpu = getattr(torch, "cpu", None)
        try:
            return bool(cpu._is_avx512_bf16_supported() or cpu._is_amx_tile_supported())
        except AttributeError:  # older torch: no probe, stay in float32
            return False
    if precision not in ("bf16", "fp32"):
        raise ValueError(f"precision must be auto, bf16 or fp32, got {precision!r}")
    return precision == "bf16"


def autocast(bf16: bool):
    return torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16)


def lr_at(step: int, total: int, peak: float, warmup: int, min_ratio: float) -> float:
    if step < warmup:
        return peak * (step + 1) / warmup
    frac = (step - warmup) / max(1, total - warmup)
    return peak * (min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * min(1.0, frac))))


def optimizer(model, lr: float, wd: float):
    return torch.optim.AdamW(model.parameters(), lr=lr, betas=(0.9, 0.95), weight_decay=wd)


def step(opt, model, loss, lr: float, clip: float) -> None:
    for g in opt.param_groups:
        g["lr"] = lr
    opt.zero_grad(set_to_none=True)
    loss.backward()
    if clip:
        torch.nn.utils.clip_grad_norm_(model.parameters(), clip)
    opt.step()


def kl(student_logits, teacher_logits) -> torch.Tensor:
    """Mean over positions of KL(teacher || student)."""
    s = F.log_softmax(student_logits.float().flatten(0, -2), -1)
    t = F.log_softmax(teacher_logits.float().flatten(0, -2), -1)
    return F.kl_div(s, t, log_target=True, reduction="batchmean")


def ce(logits, labels) -> torch.Tensor:
    return F.cross_entropy(logits.float().flatten(0, -2), labels.flatten())


def batches(stream: torch.Tensor, n: int, batch: int, seq: int, gen: torch.Generator):
    """n batches of `batch` random windows of seq+1 tokens."""
    hi = stream.numel() - seq - 1
    for _ in range(n):
        starts = torch.randint(0, hi, (batch,), generator=gen)
        yield torch.stack([stream[s: s + seq + 1] for s in starts.tolist()])


def bar(total: int, desc: str, enabled: bool):
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, disable=not enabled, dynamic_ncols=True, leave=True)


def warmup_cosine(step: int, total: int, peak: float, warmup: int = 20, min_ratio: float = 0.1) -> float:
    """The drafters' schedule (specexp-distill, specexp-eagle): a linear warm-up factor times a
    cosine from `peak` (step 0) to `min_ratio * peak` (step `total`)."""
    return peak * min(1.0, (step + 1) / warmup) * (min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * step / total)))


def train_adamw(model, rows: torch.Tensor, batch_loss, p: dict, desc: str, progress: bool) -> list[dict]:
    """The drafters' training loop (the feature drafter, Medusa's heads): AdamW (betas 0.9/0.95, no
    weight decay) on every parameter of `model`, `p["epochs"]` passes over `rows` in batches of
    `p["batch"]` (a seeded shuffle per pass), the learning rate warmed up then cosine-decayed to
    10% (warmup_cosine), gradients clipped to norm 1. `batch_loss(idx)` gives (loss, extras) for
    the rows idx. Returns the curve: every 10 steps the mean loss, with the last step's extras."""
    from tqdm.auto import tqdm

    params = list(model.parameters())
    for q in params:
        q.requires_grad_(True)
    opt = torch.optim.AdamW(params, lr=p["lr"], betas=(0.9, 0.95), weight_decay=0.0)
    steps = max(1, round(p["epochs"] * len(rows) / p["batch"]))
    gen = torch.Generator().manual_seed(p["seed"])
    order = torch.cat([rows[torch.randperm(len(rows), generator=gen)]
                       for _ in range(math.ceil(steps * p["batch"] / len(rows)) + 1)])
    curve, window = [], []
    model.train()
    bar = tqdm(range(steps), desc=desc, disable=not progress)
    for step in bar:
        idx = order[step * p["batch"]: (step + 1) * p["batch"]]
        for g in opt.param_groups:  # linear warm-up, cosine decay to 10%
            g["lr"] = warmup_cosine(step, steps, p["lr"])
        loss, extras = batch_loss(idx)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        window.append(loss.item())
        if (step + 1) % 10 == 0 or step + 1 == steps:
            curve.append({"step": step + 1, "loss": sum(window) / len(window), **extras})
            window = []
            bar.set_postfix(loss=f"{curve[-1]['loss']:.3f}")
    model.eval()
    for q in params:
        q.requires_grad_(False)
    return curve
