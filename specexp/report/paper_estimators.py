"""The estimators of the paper-reproduction repository behind the `repro_*` experiments
(github.com/AkshatT2307/Paper-Reproduction-Speculative-Decoding, benchmarks/bench1.ipynb and
bench2.ipynb), computed from a run's per-sample records so that its published numbers
(experiment 01: 1.84x and 32%; experiment 02: 2.52x and 75%) can be set next to specexp's own
estimators of the same run:

  speedup_mean_of_ratios    mean over samples of (speculative tokens/s) / (autoregressive tokens/s),
                            each sample's tokens/s = its new tokens / its decode time (the repository's
                            `speculative_speed / inference_speed`, averaged with numpy's mean)
  acceptance_mean_of_rates  mean over samples of accepted drafts / drafted tokens (the repository's
                            per-sample `acceptance_ratio`, averaged; here as a fraction, not %)

specexp's own: the speedup is the ratio of total throughputs with a bootstrap interval
(`metrics.json["speedup"]`), the acceptance rate is pooled (all accepted / all drafted). A mean of
per-sample ratios weights a short sample like a long one and is pulled up by a few large ratios
(the arithmetic mean of the ratios is at least their geometric mean), so the two differ even on the same runs.
Differences of protocol that remain: the repository's last round always drafts gamma tokens and may
overshoot the budget by up to gamma (specexp drafts at most budget - 1 and never overshoots), and
its timer starts after tokenization, as specexp's does.
"""
from __future__ import annotations

from statistics import fmean

REPO = "AkshatT2307/Paper-Reproduction-Speculative-Decoding"  # the repository these estimators follow


def repro_estimators(samples: list[dict]) -> dict:
    """From metrics.json's `samples` records (`new_tokens`, `wall_time_s`, `drafted`, `accepted`,
    and `baseline_new_tokens`, `baseline_wall_time_s` when the run had its paired baseline):
    {"speedup_mean_of_ratios", "acceptance_mean_of_rates", "n_speedup", "n_acceptance"}; an
    estimator with no usable sample is None."""
    ratios, rates = [], []
    for s in samples or []:
        t, n = s.get("wall_time_s"), s.get("new_tokens")
        bt, bn = s.get("baseline_wall_time_s"), s.get("baseline_new_tokens")
        if t and n and bt and bn:
            ratios.append((n / t) / (bn / bt))
        if s.get("drafted"):
            rates.append(s["accepted"] / s["drafted"])
    return {"speedup_mean_of_ratios": fmean(ratios) if ratios else None,
            "acceptance_mean_of_rates": fmean(rates) if rates else None,
            "n_speedup": len(ratios), "n_acceptance": len(rates)}
