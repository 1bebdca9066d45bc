"""Sample until it knows: Stein's two-stage rule (stats.stein_samples) on its own, and
`timing.target_ci` through the CLI (stops at the first stage, or at dataset.limit, and says why)."""
from __future__ import annotations

import json
import math

import numpy as np
import pytest
from conftest import pair_overrides
from scipy import stats as sps

from specexp import stats
from specexp.experiment import run


def test_stein_n_by_hand():
    pilot = [0.1, 0.3, 0.2, 0.4]  # sd 0.1291, t(3, 0.975) = 3.1824
    q = stats.stein_samples(pilot, 0.05)
    assert q["n0"] == 4 and q["s0"] == pytest.approx(0.129099, abs=1e-6)
    assert q["N"] == math.floor((3.182446 * 0.129099 / 0.05) ** 2) + 1 == 68
    assert stats.stein_samples(pilot, 10.0)["N"] == 4  # a wide target: the first stage is enough
    assert stats.stein_samples([0.2, 0.2, 0.2], 0.01)["N"] == 3  # no spread
    with pytest.raises(ValueError, match="first-stage"):
        stats.stein_samples([0.2], 0.05)
    with pytest.raises(ValueError, match="half-width"):
        stats.stein_samples(pilot, 0.0)


def test_stein_interval_has_its_width_and_coverage():
    """Stein's interval mean(N) +- t(n0-1) s0 / sqrt(N) is never wider than the target and covers
    0.95 under normality, whatever the variance (2000 replicates, seeded; Monte Carlo error ~0.005)."""
    rng = np.random.default_rng(0)
    n0, target, truth = 4, 0.05, math.log(1.2)
    t = sps.t.ppf(0.975, n0 - 1)
    for sd in (0.05, 0.2):
        cover = 0
        for _ in range(2000):
            first = rng.normal(truth, sd, n0)
            q = stats.stein_samples(first, target)
            x = np.concatenate([first, rng.normal(truth, sd, q["N"] - n0)])
            half = t * q["s0"] / math.sqrt(q["N"])
            assert half <= target
            cover += abs(x.mean() - truth) <= half
        assert 0.935 <= cover / 2000 <= 0.965, (sd, cover / 2000)


def test_check_sequential_refuses_what_it_cannot_do():
    assert run.check_sequential({"target_ci": None}, True, 1, 8) is None
    assert run.check_sequential({"target_ci": 0.05, "pilot": 3}, True, 1, 8) == {"target": 0.05, "n0": 3}
    for timing, base, b, n, msg in [({"target_ci": 0.05}, False, 1, 8, "own baseline"),
                                    ({"target_ci": 0.05}, True, 2, 8, "batch_size=1"),
                                    ({"target_ci": 0.0}, True, 1, 8, "must be > 0"),
                                    ({"target_ci": 0.05, "pilot": 1}, True, 1, 8, "timing.pilot must be"),
                                    ({"target_ci": 0.05, "pilot": 4}, True, 1, 3, "raise dataset.limit")]:
        with pytest.raises(ValueError, match=msg):
            run.check_sequential(timing, base, b, n)


@pytest.mark.parametrize("target, n, stopped", [(100.0, 3, "target reached"), (1e-6, 5, "dataset.limit reached")])
def test_target_ci_stops_and_says_why(run_specexp, random_pair_dir, target, n, stopped):
    proc, run_dir = run_specexp(*pair_overrides(random_pair_dir), "dataset.limit=5", "dataset.max_new_tokens=8",
                                "warmup=1", "timing.pilot=3", f"timing.target_ci={target}", "summary=true")
    m = json.loads((run_dir / "metrics.json").read_text())
    q = m["sequential"]
    assert q["rule"] == stats.STEIN and q["n0"] == 3 and q["target"] == target and q["stopped"] == stopped
    assert (q["N"] == 3) if stopped == "target reached" else (q["N"] > 5)
    assert m["n_samples"] == n and len(m["samples"]) == n and m["speedup"]["n_samples"] == n
    assert f"{stopped} after {n} samples" in proc.stdout
