"""Entropy of a next-token distribution, in nats: the signal the entropy-based draft-length rules
read (specexp.length).

Three measures, as in the entropy-based drafting framework:
  shannon  H(p)        = -sum_x p(x) ln p(x)
  renyi    H_alpha(p)  = ln(sum_x p(x)^alpha) / (1 - alpha)      (alpha -> 1 gives Shannon;
                                                                  alpha = inf gives -ln max p)
  topk     Shannon of the k most likely tokens, renormalised     (at most ln k)

Which distribution is measured (see `step_probs`):
  * a policy's `temperature` set to a number: softmax(logits / temperature), always;
  * otherwise under sampling: the distribution the drafter samples from (`DraftStep.probs`:
    after the run's temperature, top-k and top-p), i.e. exactly the drafter's proposal q;
  * otherwise under greedy decoding: the drafter's softmax at temperature 1 before the argmax
    (the distribution greedy decoding samples from is one-hot, entropy 0, which says nothing).
"""
from __future__ import annotations

import math

import torch

TYPES = ("shannon", "renyi", "topk")


def _check(kind: str, alpha: float, k: int) -> None:
    if kind not in TYPES:
        raise ValueError(f"unknown entropy type {kind!r}: use one of {', '.join(TYPES)}")
    if kind == "renyi" and not alpha > 0:
        raise ValueError(f"Renyi entropy needs alpha > 0, got {alpha}")
    if kind == "topk" and k < 1:
        raise ValueError(f"top-k entropy needs k >= 1, got {k}")


def shannon(probs: torch.Tensor) -> torch.Tensor:
    """-sum p ln p over the last dimension (0 ln 0 = 0)."""
    p = probs.double()
    return -(p * p.clamp_min(1e-300).log()).sum(-1)


def renyi(probs: torch.Tensor, alpha: float = 2.0) -> torch.Tensor:
    """Renyi entropy of order alpha (> 0) over the last dimension."""
    p = probs.double()
    if abs(alpha - 1.0) < 1e-12:
        return shannon(p)
    if math.isinf(alpha):
        return -p.max(-1).values.log()
    return (p.pow(alpha).sum(-1)).log() / (1.0 - alpha)


def topk(probs: torch.Tensor, k: int = 50) -> torch.Tensor:
    """Shannon entropy of the k most likely tokens, renormalised to sum to 1."""
    p = probs.double()
    top = p.topk(min(k, p.shape[-1]), dim=-1).values
    return shannon(top / top.sum(-1, keepdim=True))


def measure(probs: torch.Tensor, kind: str = "shannon", alpha: float = 2.0, k: int = 50) -> torch.Tensor:
    """The entropy of type `kind` of `probs` [..., V] in nats (float64)."""
    _check(kind, alpha, k)
    if kind == "shannon":
        return shannon(probs)
    if kind == "renyi":
        return renyi(probs, alpha)
    return topk(probs, k)


def softmax(logits: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    if not temperature > 0:
        raise ValueError(f"entropy temperature must be > 0, got {temperature}")
    return (logits.double() / temperature).softmax(-1)


def of_logits(logits: torch.Tensor, kind: str = "shannon", alpha: float = 2.0, k: int = 50,
              temperature: float = 1.0) -> torch.Tensor:
    """Entropy of softmax(logits / temperature)."""
    return measure(softmax(logits, temperature), kind, alpha, k)


def is_greedy(step) -> bool:
    """Whether the step was drafted greedily: the drafter says so (`DraftStep.greedy`), else the
    distribution is missing or one-hot."""
    flag = getattr(step, "greedy", None)
    if flag is not None:
        return bool(flag)
    q = step.probs
    return q is None or int((q > 0).sum()) <= 1


def label(step, temperature: float | None = None, kind: str = "shannon") -> str:
    """What `step_probs(step, temperature)` is, for the records: e.g. "shannon of the sampling
    distribution q" or "shannon of softmax(logits / 1)"."""
    if temperature is None and not is_greedy(step):
        return f"{kind} of the sampling distribution q"
    return f"{kind} of softmax(logits / {temperature or 1:g})"


def step_probs(step, temperature: float | None = None) -> torch.Tensor:
    """The distribution an entropy rule measures at a draft step (module docstring)."""
    if temperature is not None:
        return softmax(step.logits, temperature)
    if not is_greedy(step):
        return step.probs.double()
    return softmax(step.logits, 1.0)
