"""Aggregates of the per-drafted-token analysis records (`records=true`), written under the
metrics JSON's `analysis` key:

  acceptance_by_entropy   acceptance rate per drafter-entropy bin: 20 equal bins on [0, 5] nats
                          (an entropy above 5 counts in the last bin, see `above_range`)
  acceptance_by_position  acceptance rate per 0-based position in the draft
  correlation             Pearson and Spearman correlation (scipy.stats; average ranks for
                          ties) of the drafter's entropy, the drafter's top probability and the
                          target's entropy with acceptance (1 accepted, 0 not); None when
                          undefined
  draft_length            mean, population std and histogram (index = length) of the draft
                          length of every round (all rounds, as record.aggregate's
                          draft_length_mean; a round with no draft counts as 0)
  acceptance_by_source    per `source` of the records (proposers that mix drafters: lookup /
                          drafter for LookupFirst, the cascade's levels, lookup / bigram):
                          rounds it drafted, tokens drafted and accepted, acceptance rate and
                          accepted drafts per round; {} when no record names a source

A record is {sample, round, position, drafter_entropy, drafter_entropy_of, drafter_entropy_t1,
drafter_top_prob, target_entropy, target_entropy_t1, accepted}. `drafter_entropy` is the entropy
the length rule read (its type, of the distribution it measures: under sampling the sampling
distribution at the run's temperature), `drafter_entropy_of` says which, and the `_t1` fields are
Shannon entropies of softmax(logits) at temperature 1. "accepted" is False for every token after
the round's first rejection and for a draft at or after a stop (specexp.core.decode's convention).
"""
from __future__ import annotations

import math
from collections.abc import Iterable, Sequence

import numpy as np
from scipy import stats

N_BINS, LO, HI = 20, 0.0, 5.0


def _defined(x: Sequence[float], y: Sequence[float]) -> bool:
    """A correlation needs two paired series of >= 2 values, neither constant."""
    return len(x) == len(y) and len(set(x)) > 1 and len(set(y)) > 1


def pearson(x: Sequence[float], y: Sequence[float]) -> float | None:
    return float(stats.pearsonr(x, y).statistic) if _defined(x, y) else None


def ranks(x: Sequence[float]) -> list[float]:
    """1-based ranks, ties given their average rank."""
    return stats.rankdata(x).tolist()


def spearman(x: Sequence[float], y: Sequence[float]) -> float | None:
    return float(stats.spearmanr(x, y).statistic) if _defined(x, y) else None


def _rate(acc: int, n: int) -> float | None:
    return acc / n if n else None


def by_entropy(records: Sequence[dict], key: str = "drafter_entropy", bins: int = N_BINS,
               lo: float = LO, hi: float = HI) -> dict:
    width = (hi - lo) / bins
    n, acc = [0] * bins, [0] * bins
    above = below = 0
    for r in records:
        h = r.get(key)
        if h is None or (isinstance(h, float) and math.isnan(h)):
            continue
        if h >= hi:
            above += 1
        if h < lo:
            below += 1
        b = min(bins - 1, max(0, int((h - lo) // width)))
        n[b] += 1
        acc[b] += bool(r["accepted"])
    return {
        "measure": key, "lo": lo, "hi": hi, "bins": bins, "above_range": above, "below_range": below,
        "edges": [lo + i * width for i in range(bins + 1)],
        "n": n, "accepted": acc, "acceptance_rate": [_rate(a, c) for a, c in zip(acc, n)],
    }


def by_position(records: Sequence[dict]) -> dict:
    top = max((int(r["position"]) for r in records), default=-1)
    n, acc = [0] * (top + 1), [0] * (top + 1)
    for r in records:
        n[r["position"]] += 1
        acc[r["position"]] += bool(r["accepted"])
    return {"n": n, "accepted": acc, "acceptance_rate": [_rate(a, c) for a, c in zip(acc, n)]}


def correlations(records: Sequence[dict], keys: Iterable[str] = ("drafter_entropy", "drafter_top_prob",
                                                                  "target_entropy")) -> dict:
    out = {}
    for key in keys:
        pairs = [(float(r[key]), float(bool(r["accepted"]))) for r in records
                 if r.get(key) is not None and not math.isnan(float(r[key]))]
        x, y = [p[0] for p in pairs], [p[1] for p in pairs]
        out[key] = {"n": len(pairs), "pearson": pearson(x, y), "spearman": spearman(x, y)}
    return out


def draft_lengths(lengths: Iterable[int] | Iterable[Iterable[int]]) -> dict:
    """Mean, population std and histogram of draft lengths: a flat list of per-round lengths or
    one list per sample (a Generation's `.drafted`, a sample record's `draft_lengths`)."""
    flat: list[int] = []
    for x in lengths:
        if isinstance(x, (list, tuple)):
            flat.extend(int(k) for k in x)
        else:
            flat.append(int(x))
    if not flat:
        return {"n_rounds": 0, "mean": None, "std": None, "histogram": []}
    a = np.asarray(flat)
    return {"n_rounds": len(flat), "mean": float(a.mean()), "std": float(a.std()),  # numpy's std: population (ddof 0)
            "histogram": np.bincount(a).tolist()}


def by_source(records: Sequence[dict]) -> dict:
    """Per record `source`: rounds it drafted, drafted, accepted, their rate, accepted per round."""
    out: dict = {}
    for r in records:
        if r.get("source") is None:
            continue
        d = out.setdefault(r["source"], {"rounds": set(), "drafted": 0, "accepted": 0})
        d["rounds"].add((r.get("sample"), r.get("round")))
        d["drafted"] += 1
        d["accepted"] += bool(r["accepted"])
    for d in out.values():
        d["rounds"] = len(d["rounds"])
        d["acceptance_rate"] = _rate(d["accepted"], d["drafted"])
        d["accepted_per_round"] = _rate(d["accepted"], d["rounds"])
    return out


def aggregate(records: Sequence[dict], lengths, entropy_type: str = "shannon") -> dict:
    """Everything above, for one run. `entropy_type`: the measure the records' drafter_entropy
    is (the length policy's, or Shannon)."""
    return {
        "n_records": len(records),
        "drafter_entropy_type": entropy_type,
        "drafter_entropy_of": sorted({r["drafter_entropy_of"] for r in records if r.get("drafter_entropy_of")}),
        "acceptance_rate": _rate(sum(bool(r["accepted"]) for r in records), len(records)),
        "acceptance_by_entropy": by_entropy(records),
        "acceptance_by_position": by_position(records),
        "correlation": correlations(records),
        "draft_length": draft_lengths(lengths),
        "acceptance_by_source": by_source(records),
    }
