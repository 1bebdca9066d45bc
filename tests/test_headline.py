"""Headlines say what they measure: a batched run's summary, log line and sweep objective report
batch throughput and the speedup against autoregressive at the same batch size (CIs over repeats,
or why there are none), the per-row figures apart and labelled; at batch 1 nothing changes."""
from __future__ import annotations

import json
import math
import re
import statistics
from pathlib import Path

import pytest
from omegaconf import OmegaConf
from scipy.stats import t

from conftest import pair_overrides
from specexp import stats
from specexp.experiment import run
from specexp.experiment import sweep_callbacks as sweep

BATCHED = ["dataset.limit=3", "dataset.max_new_tokens=12", "warmup=0", "batch_size=2", "strategy.gamma=3",
           "timing.repeats=2"]


@pytest.fixture(scope="module")
def batched_run(random_pair_dir, tmp_path_factory):
    """`specexp batch_size=2 timing.repeats=2` on 3 samples (summary on): (printed summary, metrics.json)."""
    import contextlib
    import io

    run_dir = tmp_path_factory.mktemp("batched") / "run"
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        code = run.run_cli([*pair_overrides(random_pair_dir), *BATCHED, "summary=true", f"hydra.run.dir={run_dir}"])
    assert code == 0
    return out.getvalue(), json.loads((run_dir / "metrics.json").read_text()), run_dir


def row(text: str, label: str) -> list[str]:
    """The cells of the summary table's row `label` (cells are separated by two or more spaces)."""
    line = next(ln for ln in text.splitlines() if ln.strip().startswith(label + " "))
    return re.split(r"\s{2,}", line.strip())


def test_batched_summary_reports_batch_throughput_and_speedup(batched_run):
    text, m, _ = batched_run
    b, h = m["batch"], m["headline"]
    assert h["measure"] == "batch throughput" and h["batch_size"] == 2 and h["repeats"] == 2
    assert h["tokens_per_second"] == b["tokens_per_second"]["strategy"]
    assert h["speedup"] == b["speedup_vs_autoregressive_same_batch"]
    header = re.split(r"\s{2,}", next(ln for ln in text.splitlines() if "batch tok/s" in ln).strip())
    assert header[:3] == ["batch tok/s", "95% CI", "per-row tok/s"]
    strategy, ar = row(text, "strategy"), row(text, "autoregressive")
    # the headline columns hold metrics.json["batch"]; the per-row figures sit apart, labelled
    assert strategy[1] == f"{b['tokens_per_second']['strategy']:.1f}"
    assert ar[1] == f"{b['tokens_per_second']['autoregressive']:.1f}"
    assert strategy[3] == f"{m['tokens_per_second']:.1f}" and ar[3] == f"{m['baseline']['tokens_per_second']:.1f}"
    lo, hi = h["modes"]["strategy"]["ci"]
    assert strategy[2] == f"[{lo:.1f}, {hi:.1f}]"
    speed = next(ln for ln in text.splitlines() if ln.strip().startswith("speedup at batch 2"))
    lo, hi = h["speedup_ci"]
    assert "vs autoregressive at batch 2" in speed
    assert f": {stats.format_ratio(b['speedup_vs_autoregressive_same_batch'], lo, hi)};" in speed
    per_row = next(ln for ln in text.splitlines() if ln.strip().startswith("per-row speedup"))
    assert stats.format_speedup(m["speedup"]) in per_row
    # the log line leads with the batch figures too
    line = sweep.run_line(m)
    assert f"batch 2: {b['tokens_per_second']['strategy']:.1f} tok/s [" in line
    assert f"per-row {m['tokens_per_second']:.1f} tok/s" in line


def test_batch_cis_are_t_intervals_over_repeats(batched_run):
    """Each repeat times the whole dataset: a mode's per-repeat throughput is its tokens over that
    repeat's time; the CI is the t interval of their log (the speedup's: paired by repeat)."""
    _, m, _ = batched_run
    b, h = m["batch"], m["headline"]
    walls = b["wall_time_s"]
    tokens = {k: v * statistics.median(walls[k]) for k, v in b["tokens_per_second"].items()}
    assert tokens["strategy"] == pytest.approx(m["new_tokens"])  # the same tokens in every repeat (greedy)

    def interval(xs):
        logs = [math.log(x) for x in xs]
        half = t.ppf(0.975, len(xs) - 1) * statistics.stdev(logs) / math.sqrt(len(xs))
        return pytest.approx([math.exp(statistics.fmean(logs) - half), math.exp(statistics.fmean(logs) + half)])

    thr = {k: [tokens[k] / s for s in walls[k]] for k in walls}
    assert h["modes"]["strategy"]["ci"] == interval(thr["strategy"])
    assert h["speedup_ci"] == interval([s / a for s, a in zip(thr["strategy"], thr["autoregressive"])])


def test_one_repeat_says_why_there_is_no_ci(batched_run):
    _, m, _ = batched_run
    one = json.loads(json.dumps(m))
    one["batch"]["wall_time_s"] = {k: v[:1] for k, v in one["batch"]["wall_time_s"].items()}
    del one["headline"]
    h = sweep.headline(one)
    assert h["tokens_per_second_ci"] is None and h["speedup_ci"] is None
    assert "one repeat (timing.repeats=1)" in h["why_no_ci"] and "timing.repeats>=2" in h["why_no_ci"]
    assert "(no CI: one repeat" in sweep.format_headline_speedup(h)
    assert "no CI: one repeat" in run.summary(one, Path("metrics.json"))


def test_objective_returns_the_batch_figure(batched_run, caplog):
    """The sweep objective (default headline.tokens_per_second) is the batch throughput of a
    batched run; headline.speedup the speedup at its batch size; a per-row key is read as it is,
    with a warning that names the batch figure."""
    from hydra.core.utils import JobReturn, JobStatus

    _, m, run_dir = batched_run
    b = m["batch"]
    assert sweep.objective(m) == (b["tokens_per_second"]["strategy"], None)
    assert sweep.objective(m, "headline.speedup") == (b["speedup_vs_autoregressive_same_batch"], None)
    assert sweep.objective(m, "tokens_per_second") == (m["tokens_per_second"], None)
    no_block = {k: v for k, v in m.items() if k != "headline"}  # a metrics.json written before the block
    assert sweep.objective(no_block) == (b["tokens_per_second"]["strategy"], None)

    config = OmegaConf.create({"hydra": {"runtime": {"output_dir": str(run_dir)}}, "metrics_file": "metrics.json"})
    job = JobReturn()
    job.status = JobStatus.COMPLETED
    sweep.Objective().on_job_end(config, job)  # the callback as an Optuna sweep configures it
    assert job.return_value == b["tokens_per_second"]["strategy"]
    sweep.Objective(metric="tokens_per_second").on_job_end(config, job)
    assert job.return_value == m["tokens_per_second"]
    assert "per-row figure" in caplog.text and "metric=headline.tokens_per_second" in caplog.text


def test_batch_one_headline_is_unchanged():
    m = {"status": "ok", "batch_size": 1, "tokens_per_second": 100.0,
         "speedup": {"throughput_ratio": 1.5, "ci_low": 1.2, "ci_high": 1.8, "n_samples": 4,
                     "ci": {"method": "paired bootstrap over samples"}}}
    h = sweep.headline(m)
    assert h["measure"] == "throughput" and h["tokens_per_second"] == 100.0
    assert h["speedup"] == 1.5 and h["speedup_ci"] == [1.2, 1.8]
    assert sweep.objective(m) == (100.0, None) and sweep.objective(m, "headline.speedup") == (1.5, None)
