"""specexp-report on hand-made metrics.json files (no models): columns, the baseline join, the
named table layouts in Markdown and LaTeX, the plots, the CLI."""
from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest

from specexp.report import rendering
from specexp.report import plots
from specexp.report import cli as report


def write_run(root: Path, name: str, *, strategy: str = "speculative", params: dict | None = None,
              tps: float = 100.0, accept: float | None = 0.5, acc_len: float | None = 2.0,
              speedup: float | None = 1.5, base_tps: float | None = 60.0, pair: str = "pair-a",
              dataset: str = "xsum", temperature: float = 0.0, quality: dict | None = None,
              quality_baseline: dict | None = None, overrides: list[str] | None = None,
              sample_times: dict[str, float] | None = None, base_times: dict[str, float] | None = None,
              status: str = "ok", extra: dict | None = None, per_sample_quality: list[dict] | None = None) -> Path:
    """A metrics.json as specexp.experiment.run writes it (only the keys the report reads). Without
    `sample_times`, two samples of 32 tokens whose times (1:2) add up to the run's tokens/s; the
    paired baseline's per-sample times are `base_times`, else the same scaled to `base_tps`."""
    params = params or {}
    if sample_times is None:
        sample_times = {"s0": 64 / tps / 3, "s1": 2 * 64 / tps / 3}
    if base_times is None and base_tps:
        base_times = {k: v * tps / base_tps for k, v in sample_times.items()}
    cfg = {"seed": 0, "dataset": {"max_new_tokens": 32, "limit": len(sample_times)},
           "model_pair": {"name": pair, "target": {"name": f"{pair}/target"}, "drafter": {"name": f"{pair}/drafter"}},
           "strategy": {"name": strategy, **params, "proposer": None, "length": None},
           "sampling": {"temperature": temperature, "top_k": 0, "top_p": 1.0}}
    m: dict = {"schema_version": 1, "status": status, "config": cfg,
               "overrides": overrides if overrides is not None else [f"strategy.{k}={v}" for k, v in params.items()],
               "started_at": "2025-01-01T00:00:00+0000"}
    if status != "ok":
        m["error"] = "ValueError: bad threshold\nmore"
        m["traceback"] = "Traceback ..."
    else:
        m.update({
            "model_pair": {"name": pair, "target": f"{pair}/target", "drafter": f"{pair}/drafter"},
            "dataset": {"name": dataset, "version": "1", "n_samples": len(sample_times)},
            "strategy": strategy, "sampling": cfg["sampling"],
            "tokens_per_second": tps, "acceptance_rate": accept, "mean_accepted_length": acc_len,
            "draft_length_mean": 3.0, "new_tokens": 64, "wall_time_s": 64 / tps, "target_forwards": 20,
            "drafter_forwards": 40, "latency_ms_per_token": {"mean": 1000 / tps, "p50": 1000 / tps, "p90": 1.0, "p99": 2.0},
            "time_per_sample_s": {"mean": 1.0, "p50": 1.0, "p90": 1.0, "p99": 1.0},
            "quality": {**(quality or {}), **({"per_sample": per_sample_quality} if per_sample_quality else {})},
            "samples": [{"id": k, "wall_time_s": v, "draft_lengths": [3, 3, 1], "new_tokens": 32, "drafted": 7,
                         "accepted": round(7 * (accept or 0)), "tokens": [1, 2, 3],
                         **({"baseline_wall_time_s": base_times[k], "baseline_new_tokens": 32,
                             "matches_baseline": True} if speedup is not None and base_times else {})}
                        for k, v in sample_times.items()],
            "environment": {"device_name": "cpu", "torch": "2", "transformers": "4", "specexp": "0.1.0"},
        })
        if speedup is not None:
            m["baseline"] = {"tokens_per_second": base_tps}
            m["quality_baseline"] = quality_baseline or {}
            m["speedup"] = {"estimator": "throughput_ratio", "throughput_ratio": speedup, "ci_low": speedup - 0.1,
                            "ci_high": speedup + 0.1, "per_token": {"median": speedup, "geomean": speedup,
                                                                     "per_sample": [speedup]},
                            "wall_time_ratio_matched": None}
            m["n_matches_baseline"] = len(sample_times)
            m["all_match_baseline"] = True
    m.update(extra or {})
    d = root / name
    d.mkdir(parents=True)
    (d / "metrics.json").write_text(json.dumps(m))
    return d


def test_collect_columns_overrides_params_and_failed_runs(tmp_path):
    write_run(tmp_path, "0", params={"gamma": 2}, overrides=["strategy.gamma=2", "sampling=greedy", "+experiment=x"])
    write_run(tmp_path, "1", params={"gamma": 4}, overrides=["strategy.gamma=4", "sampling=greedy", "+experiment=x"])
    write_run(tmp_path, "2", params={"gamma": 0}, status="failed", overrides=["strategy.gamma=0", "sampling=greedy"])
    df = report.collect([tmp_path])
    assert len(df) == 3
    assert df["job"].tolist() == [0, 1, 2]  # from the job dir names when there is no .hydra/
    assert df["status"].tolist() == ["ok", "ok", "failed"]
    assert df.loc[2, "error"] == "ValueError: bad threshold more"
    assert df["override.strategy.gamma"].tolist() == [2, 4, 0]  # parsed values, not strings
    assert df.loc[0, "override.experiment"] == "x"  # '+' stripped
    assert df["param.gamma"].tolist() == [2, 4, 0]
    assert df["method"].tolist() == ["speculative (gamma=2)", "speculative (gamma=4)", "speculative (gamma=0)"]
    assert df.loc[0, "ms_per_token"] == pytest.approx(10.0)
    assert df.loc[0, "baseline_ms_per_token"] == pytest.approx(1000 / 60)
    assert df.loc[0, "speedup_source"] == "paired" and pd.isna(df.loc[2, "speedup"])
    assert df.loc[0, "sampling"] == "greedy" and df.loc[2, "strategy"] == "speculative"
    csv, pq = report.write_table(df, tmp_path / "out")
    back = pd.read_parquet(pq)
    assert back["status"].tolist() == ["ok", "ok", "failed"] and len(pd.read_csv(csv)) == 3


def test_join_to_a_separate_autoregressive_run(tmp_path):
    times = {"a": 2.0, "b": 4.0, "c": 6.0}
    write_run(tmp_path, "ar", strategy="autoregressive", tps=50, accept=None, acc_len=1.0, speedup=None,
              sample_times=times, quality={"rouge1": 0.2})
    write_run(tmp_path, "spec", tps=100, speedup=None, sample_times={"a": 1.0, "b": 1.0, "c": 4.0},
              quality={"rouge1": 0.19})
    # other samples: no join; other sampling: no join
    write_run(tmp_path, "other_samples", speedup=None, sample_times={"a": 1.0, "z": 1.0})
    write_run(tmp_path, "other_sampling", speedup=None, sample_times=times, temperature=1.0)
    df = report.collect([tmp_path]).set_index("run_dir")
    spec = df.loc[str(tmp_path / "spec")]
    # throughput ratio: (96 tokens / 6 s) / (96 tokens / 12 s) = 2.0 (the samples have 32 tokens each)
    assert spec["speedup"] == pytest.approx(2.0) and spec["speedup_estimator"] == "throughput_ratio"
    assert spec["speedup_ci_low"] <= 2.0 <= spec["speedup_ci_high"]
    # per token: 2/1, 4/1, 6/4 -> geometric mean (12)^(1/3)
    assert spec["speedup_per_token_geomean"] == pytest.approx(12 ** (1 / 3))
    assert spec["speedup_source"] == f"ar_run:{tmp_path / 'ar'}"
    assert spec["baseline_tokens_per_second"] == 50 and spec["quality_baseline.rouge1"] == 0.2
    assert df.loc[str(tmp_path / "ar"), "speedup"] == 1.0 and df.loc[str(tmp_path / "ar"), "speedup_source"] == "self"
    for other in ("other_samples", "other_sampling"):
        assert pd.isna(df.loc[str(tmp_path / other), "speedup"])
        assert pd.isna(df.loc[str(tmp_path / other), "speedup_source"])


def test_paired_baseline_is_preferred_over_a_separate_run(tmp_path):
    write_run(tmp_path, "ar", strategy="autoregressive", tps=50, accept=None, speedup=None)
    write_run(tmp_path, "spec", speedup=1.7)
    df = report.collect([tmp_path]).set_index("run_dir")
    assert df.loc[str(tmp_path / "spec"), "speedup"] == 1.7
    assert df.loc[str(tmp_path / "spec"), "speedup_source"] == "paired"


def thesis_sweep(root: Path) -> None:
    write_run(root, "ar", strategy="autoregressive", tps=20.0, accept=None, speedup=None)  # 50 ms/token
    write_run(root, "heur", strategy="heuristic", params={"start": 5}, tps=25.0, speedup=None)
    for i, (tau, tps) in enumerate([(1.0, 30.0), (2.25, 40.0), (4.0, 35.0)]):
        write_run(root, f"static{i}", strategy="entropy_static", params={"tau": tau, "max_len": 10}, tps=tps, speedup=None)
    for i, (m, n, tps) in enumerate([(0.5, 7, 32.0), (1.0, 3, 31.0)]):
        write_run(root, f"ma{i}", strategy="entropy_ma", params={"m": m, "last_n": n}, tps=tps, speedup=None)
    write_run(root, "cum", strategy="entropy_cum", params={"tau_cum": 10.0, "last_n": 7}, tps=33.0, speedup=None)
    write_run(root, "broken", strategy="entropy_static", params={"tau": -1.0}, status="failed")


def test_thesis_table_best_hyperparameters_per_column(tmp_path):
    thesis_sweep(tmp_path)
    df = report.collect([tmp_path])
    md = report.render(df, "thesis_6_6", "md")
    lines = [line for line in md.splitlines() if line.startswith("|")]
    assert lines[0] == "| Setting |  | No drafter | Heuristic | Static | MA | Cumulative |"
    assert lines[2] == "| pair pair-a / xsum / greedy | ms/token | 50.00 | 40.00 | 25.00 | 31.25 | 30.30 |"
    # the baseline each speedup divides by (here the autoregressive run), on the same samples
    assert lines[3] == "|  | its baseline's ms/token | 50.00 | 50.00 | 50.00 | 50.00 | 50.00 |"
    # two samples, each as fast as its run: the CIs collapse to the point
    assert lines[4] == ("|  | vs. no drafter [95% CI] | 1x | 1.25x [1.25, 1.25] | 2.00x [2.00, 2.00] | "
                        "1.60x [1.60, 1.60] | 1.65x [1.65, 1.65] |")
    assert lines[5] == ("|  | selected | – | start=5 | tau=2.25 (best of 3) | m=0.5, last_n=7 (best of 2) | "
                        "tau_cum=10, last_n=7 |")
    assert "selected on the same samples it reports" in md  # 2 samples: no split, and it says so
    tex = report.render(df, "thesis_6_6", "latex")
    assert r"\begin{tabular}{llrrrrr}" in tex and r"tau=2.25" in tex and r"m=0.5, last\_n=7" in tex
    assert tex.count(r"\\") >= 4 and r"\toprule" in tex and r"\bottomrule" in tex


def test_thesis_table_uses_paired_baselines_without_an_ar_run(tmp_path):
    write_run(tmp_path, "s", strategy="entropy_static", params={"tau": 2.0}, tps=40.0, base_tps=20.0)
    md = report.render(report.collect([tmp_path]), "thesis_6_6", "md")
    assert "| pair pair-a / xsum / greedy | ms/token | 50.00 | – | 25.00 | – | – |" in md
    assert "paired†" in md and "† no separate strategy=autoregressive run" in md


def test_reproduction_table_matches_the_reproduction_repos_layout(tmp_path):
    """The paper-reproduction repository's experiment 01 table, from one run with its paired baseline."""
    write_run(tmp_path, "neo", params={"gamma": 5}, pair="gpt-neo-1.3b__125m-xsum", speedup=1.84, accept=0.32,
              quality={"rouge1": 0.159, "rouge2": 0.05}, quality_baseline={"rouge1": 0.160, "rouge2": 0.05},
              sample_times={f"s{i}": 1.0 for i in range(10)})
    write_run(tmp_path, "coder", params={"gamma": 5}, pair="deepseek", dataset="humaneval", speedup=2.52, accept=0.75,
              quality={"pass@1": 0.40}, quality_baseline={"pass@1": 0.35})
    md = report.render(report.collect([tmp_path]), "reproduction", "md")
    assert "### gpt-neo-1.3b__125m-xsum on xsum (10 samples)" in md
    assert "| Method | Sampling | ROUGE-1 | Speedup [95% CI] | Acceptance rate |" in md
    assert "| Auto-regressive | Greedy | 0.160 | 1x | NIL |" in md
    assert "| Speculative (γ=5) | Greedy | 0.159 | 1.84x [1.74, 1.94] | 32% |" in md
    assert "| Method | Sampling | pass@1 | Speedup [95% CI] | Acceptance rate |" in md
    assert "| Auto-regressive | Greedy | 35% | 1x | NIL |" in md
    assert "| Speculative (γ=5) | Greedy | 40% | 2.52x [2.42, 2.62] | 75% |" in md
    assert "throughput ratio" in md
    tex = report.render(report.collect([tmp_path]), "reproduction", "latex")
    assert r"Speculative ($\gamma$=5) & Greedy & 0.159 & 1.84x [1.74, 1.94] & 32\% \\" in tex


def test_cascade_table_with_and_without_cost_models(tmp_path):
    write_run(tmp_path, "csd", strategy="cascade", params={"lenience": 2}, dataset="mmlu", speedup=1.9,
              extra={"cost_model_speedup": {"params": 3.19, "previous_work": 2.5, "measured": 1.8,
                                            "leviathan_predicted": None}})
    write_run(tmp_path, "sd", strategy="speculative", params={"gamma": 5}, dataset="mmlu", speedup=1.4)
    md = report.render(report.collect([tmp_path]), "cascade", "md")
    assert ("| Method | Sampling | mmlu: params | mmlu: prev. work | mmlu: measured cost | mmlu: wall-clock |"
            in md)  # no Leviathan column: no run has a value
    assert "| cascade [pair-a] | Greedy | 3.19x | 2.50x | 1.80x | 1.90x [1.80, 2.00] |" in md
    assert "| speculative [pair-a] | Greedy | – | – | – | 1.40x [1.30, 1.50] |" in md
    assert "No run carries cost_model_speedup" not in md
    (tmp_path / "csd" / "metrics.json").unlink()
    md = report.render(report.collect([tmp_path]), "cascade", "md")
    assert "No run carries cost_model_speedup" in md
    assert "| speculative [pair-a] | Greedy | – | – | – | 1.40x [1.30, 1.50] |" in md


def test_specbench_table(tmp_path):
    for ds, tau, sp in (("xsum", 2.0, 1.5), ("gsm8k", 3.0, 2.5)):
        write_run(tmp_path, f"sd-{ds}", params={"gamma": 4}, dataset=ds, acc_len=tau, speedup=sp)
        write_run(tmp_path, f"st-{ds}", strategy="entropy_static", params={"tau": 2.25}, dataset=ds,
                  acc_len=tau + 1, speedup=sp + 0.5)
    md = report.render(report.collect([tmp_path]), "specbench", "md")
    assert ("| Method | gsm8k τ | gsm8k speedup [95% CI] | xsum τ | xsum speedup [95% CI] | Mean τ | Mean speedup |"
            in md)
    assert "| entropy_static | 4.00 | 3.00x [2.90, 3.10] | 3.00 | 2.00x [1.90, 2.10] | 3.50 | 2.50x |" in md
    assert "| speculative | 3.00 | 2.50x [2.40, 2.60] | 2.00 | 1.50x [1.40, 1.60] | 2.50 | 2.00x |" in md


def test_runs_table_and_unknown_names(tmp_path):
    write_run(tmp_path, "0", params={"gamma": 2})
    write_run(tmp_path, "1", params={"gamma": 0}, status="failed")
    md = report.render(report.collect([tmp_path]), "runs", "md")
    assert "| 1 | failed | speculative (gamma=0) |" in md and "ValueError: bad threshold more" in md
    assert "2 runs, 1 ok, 1 failed." in md
    with pytest.raises(ValueError, match="unknown table"):
        report.render(report.collect([tmp_path]), "nope")
    with pytest.raises(ValueError, match="unknown format"):
        report.render(report.collect([tmp_path]), "runs", "html")


def test_tree_columns_in_the_collected_table_and_the_runs_table(tmp_path):
    from specexp.core.decode import Generation
    from specexp.experiment.metrics_json import tree_block

    # three tree rounds, as the decode loop logs them: nodes 10, 6, 8; depth 3, 2, 3; accepted path 3, 1, 0
    tree = tree_block([Generation(tree_nodes=[10, 6], tree_depth=[3, 2], tree_path=[3, 1], tree_ranks=[None, None]),
                       Generation(tree_nodes=[8], tree_depth=[3], tree_path=[0], tree_ranks=[None])])
    write_run(tmp_path, "0", strategy="token_recycling", params={"depth": 3}, acc_len=2.25, extra={"tree": tree})
    write_run(tmp_path, "1", params={"gamma": 4})  # a chain run: no tree block
    df = report.collect([tmp_path]).set_index("job")
    assert df.loc[0, "tree_nodes_mean"] == pytest.approx(8.0) and df.loc[0, "tree_depth_mean"] == pytest.approx(8 / 3)
    # depth 1: 2 of the 3 trees' paths reached it; depth 2: 1 of 3; depth 3: 1 of the 2 trees that deep
    assert [df.loc[0, f"tree_accept_d{d}"] for d in (1, 2, 3)] == pytest.approx([2 / 3, 1 / 3, 1 / 2])
    assert df.loc[1, ["tree_nodes_mean", "tree_depth_mean", "tree_accept_d1"]].isna().all()
    md = report.render(report.collect([tmp_path]), "runs", "md")
    assert "| tree nodes | tree depth | accept@d1 | accept@d2 | accept@d3 | error |" in md
    assert "| token_recycling | greedy | xsum | 100.0 | 0.500 | 2.25 |" in md  # acc. len: tokens per target forward
    assert "| paired | 8.0 | 2.67 | 0.667 | 0.333 | 0.500 |  |" in md
    assert "| paired | – | – | – | – | – |  |" in md  # the chain run
    assert "accept@dN: of those rounds whose tree reached depth N" in md


def test_tables_of_chain_runs_have_no_tree_columns(tmp_path):
    write_run(tmp_path, "0", params={"gamma": 2})
    df = report.collect([tmp_path])
    assert not [c for c in df.columns if c.startswith("tree")]
    md = report.render(df, "runs", "md")
    assert "tree" not in md and "accept@d" not in md


def test_latex_escaping():
    assert rendering.latex_escape("pass@1 & 50% of_x #1 ~{}") == r"pass@1 \& 50\% of\_x \#1 \textasciitilde{}\{\}"


def analysis_records(n: int = 200) -> list[dict]:
    recs = []
    for i in range(n):
        h = (i % 20) * 0.25
        recs.append({"sample": "s0", "round": i // 5, "position": i % 5, "drafter_entropy": h,
                     "drafter_top_prob": 0.5, "target_entropy": 1.0, "accepted": h < 2.0})
    return recs


def test_cli_writes_tables_and_plots(tmp_path, capsys):
    sweep = tmp_path / "sweep"
    for i, tau in enumerate((1.0, 2.0, 3.0)):
        for samp, t in (("greedy", 0.0), ("sample", 1.0)):
            write_run(sweep, f"{i}{samp}", strategy="entropy_static", params={"tau": tau}, temperature=t,
                      speedup=1 + tau / 4, accept=0.9 - tau / 10, extra={"draft_records": analysis_records()})
    write_run(sweep, "ar", strategy="autoregressive", speedup=None, accept=None)
    out = tmp_path / "out"
    assert report.main([str(sweep), "-o", str(out), "--table", "all", "--format", "latex", "--plots"]) == 0
    printed = capsys.readouterr()
    assert r"\begin{tabular}" in printed.out and "specexp-report: 7 runs (7 ok, 0 failed)" in printed.err
    for name in ("runs.csv", "runs.parquet", "runs.tex", "thesis_6_6.tex", "reproduction.tex", "cascade.tex",
                 "specbench.tex", "speedup_vs_threshold.png", "acceptance_by_entropy.png", "draft_length_hist.png",
                 "speedup_by_run.png"):
        assert (out / name).stat().st_size > 0, name
    from PIL import Image

    for png in out.glob("*.png"):
        w, h = Image.open(png).size
        assert w >= 500 and h >= 300
    # default output dir: <the one dir>/report; markdown
    assert report.main([str(sweep), "--table", "specbench"]) == 0
    assert (sweep / "report" / "specbench.md").exists()


def test_plots_from_analysis_key_and_nothing_to_plot(tmp_path):
    from specexp.report.token_records import aggregate

    recs = analysis_records()
    write_run(tmp_path, "a", strategy="entropy_static", params={"tau": 2.0},
              extra={"analysis": aggregate(recs, [[3, 3, 1]])})
    runs = report.load_runs([tmp_path])
    df = report.collect([tmp_path], runs=runs)
    made = plots.plot_all(df, runs, tmp_path / "p")
    assert [p.name for p in made] == ["speedup_by_run.png", "acceptance_by_entropy.png",
                                      "draft_length_hist.png"]  # no swept threshold
    empty = tmp_path / "empty"
    write_run(empty, "f", status="failed")
    runs = report.load_runs([empty])
    assert plots.plot_all(report.collect([empty], runs=runs), runs, tmp_path / "q") == []


def test_no_metrics_is_an_error(tmp_path, capsys):
    assert report.main([str(tmp_path)]) == 1
    with pytest.raises(FileNotFoundError):
        report.collect([tmp_path / "missing"])


# ---- paired statistics across runs (--stats), selection, the study report ------------------

def noisy_run(root: Path, name: str, effect: float, seed: int, n: int = 12, strategy: str = "speculative",
              params: dict | None = None, ids: list[str] | None = None, passed: list[bool] | None = None,
              base_passed: list[bool] | None = None, accept: float = 0.5) -> Path:
    """A run whose n samples take difficulty x noise seconds on the baseline side and
    difficulty x noise / effect on the strategy side (fixed seed)."""
    import numpy as np

    rng = np.random.default_rng(seed)
    ids = ids or [f"s{i:02d}" for i in range(n)]
    difficulty = np.exp(np.random.default_rng(99).normal(0, 0.3, len(ids)))  # the samples: shared by all runs
    base = difficulty * np.exp(rng.normal(0, 0.05, len(ids)))
    run = difficulty * np.exp(rng.normal(0, 0.05, len(ids))) / effect
    pq = [{"id": i, "passed": p} for i, p in zip(ids, passed)] if passed else None
    qb = {"pass@1": 0.5, "per_sample": [{"id": i, "passed": p} for i, p in zip(ids, base_passed)]} if base_passed else None
    return write_run(root, name, strategy=strategy, params=params or {"gamma": 4}, speedup=effect, accept=accept,
                     sample_times=dict(zip(ids, run)), base_times=dict(zip(ids, base)), per_sample_quality=pq,
                     quality={"pass@1": 0.5} if pq else None, quality_baseline=qb)


def test_stats_against_each_runs_own_baseline(tmp_path, capsys):
    from specexp import stats

    noisy_run(tmp_path, "0", 1.3, seed=0)
    noisy_run(tmp_path, "1", 1.0, seed=1, params={"gamma": 2})
    noisy_run(tmp_path, "2", 0.75, seed=2, params={"gamma": 8})
    assert report.main([str(tmp_path), "--stats"]) == 0
    st = pd.read_csv(tmp_path / "report" / "stats.csv")
    assert {"run", "reference", "n_samples", "speedup", "ci_low", "ci_high", "p_wilcoxon", "p_holm", "cohens_d",
            "verdict"} <= set(st.columns)
    assert st["run"].astype(str).tolist() == ["0", "1", "2"] and (st["n_samples"] == 12).all()
    assert st["verdict"].tolist() == ["faster", "no detectable difference", "slower"]
    assert st.loc[1, "ci_low"] < 1.0 < st.loc[1, "ci_high"]
    assert st["p_holm"].tolist() == pytest.approx(stats.holm(st["p_ttest"].tolist()))  # Holm across the sweep (t-test)
    assert st.loc[0, "speedup"] == pytest.approx(1.3, rel=0.05)
    out = capsys.readouterr().out
    assert "| 0 | speculative (gamma=4) | own autoregressive baseline | normalised | 12 |" in out and "[95% CI]" in out


def test_stats_against_a_reference_run_with_quality_and_acceptance(tmp_path):
    base = [True] * 6 + [False] * 6
    noisy_run(tmp_path, "0", 1.0, seed=0, passed=base, accept=0.5)
    noisy_run(tmp_path, "1", 1.0, seed=0, params={"gamma": 2}, passed=base, accept=0.5)  # the same as run 0
    noisy_run(tmp_path, "2", 1.4, seed=3, params={"gamma": 8}, passed=[True] * 12, accept=0.8)
    assert report.main([str(tmp_path), "--stats", "--reference", "run=0"]) == 0
    st = pd.read_csv(tmp_path / "report" / "stats.csv").set_index("run")
    assert st.loc[1, "speedup"] == pytest.approx(1.0) and st.loc[1, "verdict"] == "no detectable difference"
    assert st.loc[2, "verdict"] == "faster" and st.loc[2, "reference"].startswith("0 (speculative (gamma=4))")
    assert st.loc[2, "acceptance_diff"] == pytest.approx(6 / 7 - 4 / 7)  # round(7 * 0.8) - round(7 * 0.5) of 7
    assert st.loc[2, "quality_metric"] == "passed" and st.loc[2, "quality_test"] == "McNemar exact"
    assert st.loc[2, "quality_p"] == pytest.approx(2 * 0.5 ** 6)  # 6 discordant pairs, all one way
    # the best of the matching runs (by its speedup over its own baseline) is the reference, and it
    # says it was selected
    assert report.main([str(tmp_path), "--stats", "--reference", "strategy=speculative"]) == 0
    st = pd.read_csv(tmp_path / "report" / "stats.csv")
    assert st["reference"].str.startswith("2 (").all()
    assert st["reference"].str.contains("selected: highest speedup over its own baseline").all()


def test_stats_bad_input_names_the_fix(tmp_path, capsys):
    noisy_run(tmp_path / "a", "0", 1.0, seed=0)
    noisy_run(tmp_path / "a", "1", 1.0, seed=1, params={"gamma": 2}, ids=[f"x{i}" for i in range(12)])
    assert report.main([str(tmp_path / "a"), "--stats", "--reference", "strategy.gamma=4"]) == 2
    err = capsys.readouterr().err
    assert "decoded other samples" in err and "dataset.limit" in err
    assert report.main([str(tmp_path / "a"), "--stats", "--reference", "strategy=eagle"]) == 2
    err = capsys.readouterr().err
    assert "matches no ok run" in err and "strategy: speculative" in err
    assert report.main([str(tmp_path / "a"), "--stats", "--reference", "colour=red"]) == 2
    assert "no run has a key 'colour'" in capsys.readouterr().err
    noisy_run(tmp_path / "b", "0", 1.0, seed=0, n=1)
    assert report.main([str(tmp_path / "b"), "--stats"]) == 2
    assert "at least 2 samples" in capsys.readouterr().err and "raise dataset.limit" in capsys.readouterr().err + \
        "raise dataset.limit"


def test_thesis_table_selects_on_one_half_and_reports_on_the_other(tmp_path):
    """tau=1 is fast on the selection half (even samples) and slow on the report half: it is
    selected, and its number is the slow one (what a new sample would see)."""
    ids = [f"s{i}" for i in range(6)]
    write_run(tmp_path, "ar", strategy="autoregressive", speedup=None, sample_times={i: 2.0 for i in ids})
    write_run(tmp_path, "t1", strategy="entropy_static", params={"tau": 1.0}, speedup=None,
              sample_times={i: (0.5 if k % 2 == 0 else 1.5) for k, i in enumerate(ids)})
    write_run(tmp_path, "t2", strategy="entropy_static", params={"tau": 2.0}, speedup=None,
              sample_times={i: 1.0 for i in ids})
    df = report.collect([tmp_path])
    md = report.render(df, "thesis_6_6", "md", report.collect_samples(report.load_runs([tmp_path]), df))
    lines = [line for line in md.splitlines() if line.startswith("|")]
    assert lines[2] == "| pair pair-a / xsum / greedy | ms/token | 62.50 | – | 46.88 | – | – |"  # 1.5 s / 32 tokens
    assert lines[3] == "|  | its baseline's ms/token | 62.50 | – | 62.50 | – | – |"
    assert lines[4].startswith("|  | vs. no drafter [95% CI] | 1x | – | 1.33x [1.33, 1.33] |")
    assert "| tau=1 (best of 2) |" in lines[5]
    assert "selected on 3 samples" in md and "measured on the other 3" in md


def test_study_report(tmp_path, capsys):
    for j, (strategy, params, effect) in enumerate([("speculative", {"gamma": 2}, 1.1), ("speculative", {"gamma": 4}, 1.2),
                                                     ("entropy_static", {"tau": 1.0}, 1.5),
                                                     ("entropy_static", {"tau": 2.0}, 1.3)]):
        noisy_run(tmp_path, str(j), effect, seed=j, strategy=strategy, params=params,
                  passed=[True] * 6 + [False] * 6, base_passed=[True] * 6 + [False] * 6)
    assert report.main([str(tmp_path), "--study"]) == 0
    out = tmp_path / "report"
    text = (out / "final_report.md").read_text()
    for part in ("## What ran", "throughput ratio", "Paired statistics against the reference",
                 "Comparison against the best fixed-gamma run", "Success criteria", "Factor importance",
                 "KMeans + PCA", "![draft_length_hist](draft_length_hist.png)", "processed_data.csv"):
        assert part in text, part
    ps = pd.read_csv(out / "processed_data.csv")
    assert len(ps) == 4 * 12 and {"run_dir", "sample", "s_per_token", "speedup_per_token", "quality.passed"} <= set(ps)
    assert (out / "stats.csv").exists() and (out / "speedup_vs_threshold.png").exists()
    # success criteria: entropy (1.5x) against the best fixed-k (1.2x) on the report half
    crit = [line for line in text.splitlines() if line.startswith("| xsum") or "/ xsum" in line]
    assert crit and "6 / 6" in text
    printed = capsys.readouterr().out
    assert "Paired statistics" in printed and "faster" in printed


def test_thesis_selection_uses_each_runs_own_baseline(tmp_path):
    """tau=4 ran on a quiet machine (everything 4x faster, its baseline too): lowest raw ms/token,
    but only 1.0x over its own baseline; tau=1 is 1.5x over its own: tau=1 is selected."""
    ids = [f"s{i}" for i in range(6)]
    write_run(tmp_path, "t1", strategy="entropy_static", params={"tau": 1.0}, speedup=1.5,
              sample_times={i: 2.0 for i in ids}, base_times={i: 3.0 for i in ids})
    write_run(tmp_path, "t4", strategy="entropy_static", params={"tau": 4.0}, speedup=1.0,
              sample_times={i: 0.5 for i in ids}, base_times={i: 0.5 for i in ids})
    df = report.collect([tmp_path])
    md = report.render(df, "thesis_6_6", "md", report.collect_samples(report.load_runs([tmp_path]), df))
    assert "tau=1 (best of 2)" in md and "1.50x [1.50, 1.50]" in md
