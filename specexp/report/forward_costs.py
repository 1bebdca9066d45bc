"""Cost models: speedups computed from forward counts rather than the clock.

The standardized walltime improvement (Chen et al. 2023, Cascade Speculative Drafting) of a run
that emitted N tokens with F_m forwards of each model m, under a cost model c (cost of one
forward of each model), is the autoregressive cost over the strategy's cost:

    SWI = N * c_target / sum_m F_m * c_m

(autoregressive decoding spends one target forward per token; model-free drafters cost 0).
Four cost models:

  params         c_m = the model's real parameter count (`sum(p.numel())`, embeddings included;
                 counted by the run: specexp.models.loading.n_params)
  csd_paper      the CS-Drafting paper's "SWI (model size)" table (the original code's
                 TIME_COST['model_parameters'], lfsszd/CS-Drafting@05b22e1 model.py): FLAN-T5 xxl
                 11300, xl 3000, large 770, base 220, small 60; llama-68m 68, llama-160m 160,
                 LLaMA-7B 70000 (sic: the table costs "7b"/"llama" at 70000, not 7000). T5
                 models by size (name, else width), LLaMA models by "llama-68m", "llama-160m" or
                 "7b" in their name; null unless every model is one of these
  previous_work  the T5 ratios of earlier work (xxl 1, large 0.11, base 0.04, small 0.02), when
                 every model is a T5 of one of these sizes (else null)
  measured       c_m = seconds per forward of m, measured in this run (CPU wall time, or CUDA
                 event time, of its forwards). The autoregressive side's c_target is the target's
                 per-forward time in the run's autoregressive baseline when there is one (one
                 token per forward), else in the strategy's run (where it verifies k+1 tokens at
                 once: on a GPU about the same cost, on a CPU more). Prefill forwards (from an
                 empty cache: the prompt) are left out of these averages when there are others:
                 with short generations they would dominate them, while the formula charges
                 them as ordinary forwards, as the other cost models do. Time outside forwards
                 (drafting logic, sampling, verification) is in no cost model: compare
                 `measured` with the wall-clock speedup to see it

For the classic algorithm (one drafter model, a fixed gamma) it also gives what Leviathan et al.'s
formula predicts, (1 - a^(g+1)) / ((1 - a)(g c + 1)), with c = the measured drafter/target
per-forward time ratio (the target's autoregressive step, as above) and a = the per-token acceptance probability estimated from the run
(maximum likelihood under the formula's i.i.d. model: accepted drafts / (accepted drafts +
rounds that ended in a rejection)). Encoder passes of encoder-decoder models (one per sample and
model, `Generation.model_encoder_seconds`) are in the `measured` model, on both sides:
(N t_ar + the target's encoder time) / (sum_m F_m c_m + every model's encoder time). The
forward-count models (params, csd_paper, previous_work) count decoder forwards only, as the paper
counts reviews (its cached FLAN-T5-XXL target runs no encoder at all).
"""
from __future__ import annotations

import re

PREVIOUS_WORK_T5 = {"xxl": 1.0, "large": 0.11, "base": 0.04, "small": 0.02}
# CS-Drafting's SWI (model size) costs (its TIME_COST['model_parameters']), by T5 size / LLaMA name
CSD_PAPER = {"xxl": 11300.0, "xl": 3000.0, "large": 770.0, "base": 220.0, "small": 60.0,
             "llama-68m": 68.0, "llama-160m": 160.0, "7b": 70000.0}
_T5_SIZES = ("xxl", "xl", "large", "base", "small")
_T5_D_MODEL = {512: "small", 768: "base", 1024: "large", 2048: "xl", 4096: "xxl"}  # the released T5 / FLAN-T5 widths


def t5_size(model, name: str | None = None) -> str | None:
    """"small" / "base" / "large" / "xl" / "xxl" for a T5 model: from its name (e.g.
    google/flan-t5-xxl), else from its width; None for other models."""
    cfg = getattr(model, "config", None)
    if getattr(cfg, "model_type", None) != "t5":
        return None
    low = (name or getattr(cfg, "_name_or_path", "") or "").lower()
    for size in _T5_SIZES:
        if re.search(rf"(^|[-_/.]){size}($|[-_/.])", low):
            return size
    return _T5_D_MODEL.get(getattr(cfg, "d_model", None))


def param_costs(params: dict[str, int] | None) -> dict[str, float] | None:
    """The params cost model from each role's parameter count (None: not known)."""
    return None if params is None else {role: float(n) for role, n in params.items()}


def previous_work_costs(models: dict, names: dict[str, str] | None = None) -> dict[str, float] | None:
    """The previous-work T5 ratios per role, or None unless every model is a T5 of a listed size."""
    out = {}
    for role, m in models.items():
        size = t5_size(m, (names or {}).get(role))
        if size not in PREVIOUS_WORK_T5:
            return None
        out[role] = PREVIOUS_WORK_T5[size]
    return out


def csd_paper_costs(models: dict, names: dict[str, str] | None = None) -> dict[str, float] | None:
    """The CS-Drafting paper's table per role (CSD_PAPER: a T5 by its size, a LLaMA by "llama-68m",
    "llama-160m" or "7b" in its name), or None unless every model has an entry."""
    out = {}
    for role, m in models.items():
        cfg = getattr(m, "config", None)
        name = ((names or {}).get(role) or getattr(cfg, "_name_or_path", "") or "").lower()
        key = None
        if getattr(cfg, "model_type", None) == "t5":
            key = t5_size(m, name)
        elif getattr(cfg, "model_type", None) == "llama":
            key = next((k for k in ("llama-68m", "llama-160m", "7b") if k in name), None)
        if key not in CSD_PAPER:
            return None
        out[role] = CSD_PAPER[key]
    return out


def _sum(dicts) -> dict:
    out: dict = {}
    for d in dicts:
        for r, v in d.items():
            out[r] = out.get(r, 0) + v
    return out


def totals(gens) -> tuple[int, dict[str, int], dict[str, float], dict[str, int], dict[str, float]]:
    """Tokens emitted, and per role: forwards, seconds in forwards, prefill forwards, seconds in
    prefill forwards, over `gens`."""
    return (sum(len(g.tokens) for g in gens), _sum(g.model_forwards for g in gens),
            _sum(g.model_forward_seconds for g in gens), _sum(getattr(g, "model_prefills", {}) for g in gens),
            _sum(getattr(g, "model_prefill_seconds", {}) for g in gens))


def measured_costs(forwards: dict[str, int], seconds: dict[str, float], prefills: dict[str, int] | None = None,
                   prefill_seconds: dict[str, float] | None = None) -> dict[str, float | None]:
    """Seconds per forward of each role, prefill forwards left out when there are others."""
    out = {}
    for r, f in forwards.items():
        sec, pf, psec = seconds.get(r, 0.0), (prefills or {}).get(r, 0), (prefill_seconds or {}).get(r, 0.0)
        if f > pf > 0:
            f, sec = f - pf, sec - psec
        out[r] = sec / f if f else None
    return out


def swi(n_tokens: int, forwards: dict[str, int], costs: dict[str, float | None] | None) -> float | None:
    """Standardized walltime improvement: N c_target / sum_m F_m c_m (None when a cost is missing)."""
    if costs is None or costs.get("target") is None or n_tokens <= 0:
        return None
    den = _forward_cost(forwards, costs)
    return n_tokens * costs["target"] / den if den else None


def _forward_cost(forwards: dict[str, int], costs: dict) -> float | None:
    """sum_m F_m c_m over the models that ran (None when one of them has no cost)."""
    if any(f and costs.get(r) is None for r, f in forwards.items()):
        return None
    return sum(f * costs[r] for r, f in forwards.items() if f)


def _swi_measured(n: int, forwards: dict[str, int], costs: dict, t_ar: float | None,
                  encoders: dict[str, float] | None = None, encoder_ar: float | None = None) -> float | None:
    """(N t_ar + the autoregressive side's encoder time) / (sum_m F_m c_m + every model's encoder
    time): the measured cost model, encoder passes of encoder-decoder models included."""
    if not t_ar or n <= 0 or not costs.get("target"):
        return None
    den = _forward_cost(forwards, costs)
    if den is None:
        return None
    den += sum((encoders or {}).values())
    return (n * t_ar + (encoder_ar or 0.0)) / den if den > 0 else None


def acceptance_alpha(gens) -> float | None:
    """Per-token acceptance probability under the i.i.d. model of Leviathan et al.: accepted
    drafts / (accepted drafts + rounds that ended in a rejection), the maximum-likelihood estimate
    (a round with n < k accepted saw n acceptances then one rejection; n = k saw k acceptances).
    A round cut by a stop (EOS or stop string) among its accepted drafts rejected nothing: its
    drafts after the stop were cut, not rejected (Generation.rejected is empty for it), so it
    counts its acceptances and no rejection. Generations without per-round `rejected` lists fall
    back to n < k."""
    acc = rej = 0
    for g in gens:
        rejected = getattr(g, "rejected", None) or []
        known = len(rejected) == len(g.drafted)
        for i, (k, n) in enumerate(zip(g.drafted, g.accepted)):
            acc += n
            rej += int(bool(rejected[i])) if known else int(n < k)
    return acc / (acc + rej) if acc + rej else None


def leviathan_speedup(alpha: float, gamma: int, c: float) -> float:
    """Expected walltime improvement (Leviathan et al. 2023, Theorem 3.8)."""
    tokens = gamma + 1 if alpha >= 1 else (1 - alpha ** (gamma + 1)) / (1 - alpha)
    return tokens / (gamma * c + 1)


def report(gens, models: dict, names: dict[str, str] | None = None, gamma: int | None = None,
           base=None, params: dict[str, int] | None = None) -> dict:
    """`cost_model_speedup` ({params, csd_paper, previous_work, measured, leviathan_predicted}) and the
    `cost_model` details behind it. `models`: role -> model (or CachedLM) for every model that ran
    forwards, the target as "target" (read for their configs: T5 sizes, LLaMA names); `gamma`: set
    for the classic algorithm (specexp.experiment.metrics_json.classic_gamma); `base`: the
    autoregressive baseline's generations of the same samples, if any (the target's step cost);
    `params`: role -> parameter count (specexp.models.loading.n_params; None: no params model)."""
    models = {r: getattr(m, "model", m) for r, m in models.items()}
    n, fw, sec, pre, pre_sec = totals(gens)
    for r in models:
        fw.setdefault(r, 0)
    costs = {"params": param_costs(params), "csd_paper": csd_paper_costs(models, names),
             "previous_work": previous_work_costs(models, names),
             "measured": measured_costs(fw, sec, pre, pre_sec)}
    t_ar = costs["measured"].get("target")  # the target's autoregressive step
    enc = _sum(getattr(g, "model_encoder_seconds", {}) for g in gens)  # encoder passes (seq2seq), per role
    enc_ar = enc.get("target", 0.0)  # the autoregressive side pays the target's encoder too
    if base:
        _, bfw, bsec, bpre, bpre_sec = totals(base)
        t_ar = measured_costs(bfw, bsec, bpre, bpre_sec).get("target") or t_ar
        enc_ar = _sum(getattr(b, "model_encoder_seconds", {}) for b in base).get("target", 0.0)
    alpha = acceptance_alpha(gens) if gamma is not None else None
    ratio = None
    if gamma is not None:
        drafter = next((r for r in fw if r != "target"), None)
        d_c = costs["measured"].get(drafter)
        ratio = d_c / t_ar if (t_ar and d_c is not None) else None
    predicted = leviathan_speedup(alpha, gamma, ratio) if (alpha is not None and ratio is not None) else None
    return {
        "cost_model_speedup": {
            "params": swi(n, fw, costs["params"]),
            "csd_paper": swi(n, fw, costs["csd_paper"]),
            "previous_work": swi(n, fw, costs["previous_work"]),
            "measured": _swi_measured(n, fw, costs["measured"], t_ar, enc, enc_ar),
            "leviathan_predicted": predicted,
        },
        "cost_model": {
            "new_tokens": n,
            "forwards": fw,
            "forward_seconds": sec,
            "prefills": pre,
            "prefill_seconds": pre_sec,
            "costs": costs,
            "measured_target_autoregressive": t_ar,
            "encoder_seconds": enc,
            "encoder_seconds_autoregressive": enc_ar,
            "leviathan": None if gamma is None else {"gamma": gamma, "alpha": alpha, "cost_ratio": ratio},
        },
    }
