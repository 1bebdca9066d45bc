"""Smoke test of scripts/bench.py (the benchmark against transformers' generate) on the random tiny
pair: every mode runs, greedy and sampled, and what it reports is well-formed and consistent.
Timings themselves are not checked (they depend on the machine's load)."""
from __future__ import annotations

import json
import math

import pytest

from conftest import CORPUS, load_script, pair_overrides

SETTINGS = ("greedy", "T=0.7")


def load_bench():
    return load_script("bench")


@pytest.fixture(scope="module")
def bench_run(random_pair_dir, tmp_path_factory):
    bench = load_bench()
    tmp = tmp_path_factory.mktemp("bench")
    corpus = tmp / "corpus.txt"
    corpus.write_text(CORPUS)
    out = tmp / "bench.json"
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("SPECEXP_CACHE", str(tmp / "cache"))  # the bigram table lands here
        overrides = [a for o in pair_overrides(random_pair_dir) for a in ("--override", o)]
        report = bench.main(["--pair", "tiny", *overrides, "--datasets", "humaneval", "--per-dataset", "2",
                             "--repeats", "1", "--new-tokens", "12", "--gamma", "3", "--lookup-tokens", "4",
                             "--truncated-layers", "1", "--bigram-corpus", str(corpus), "--temperature", "0.7",
                             "--json", str(out)])
    return bench, report, out


def rows_by(report):
    return {(r["setting"], r["mode"]): r for r in report["rows"]}


def test_every_mode_runs_in_both_settings(bench_run):
    bench, report, _ = bench_run
    rows = rows_by(report)
    # every mode but the subset-head one, which needs a drafter from specexp-distill (draft_vocab.json),
    # and the feature-drafter / shipped-pair modes (only with --pair smollm2 or --eagle-dir)
    skipped = {"ours-spec-vocab", "ours-lookup-store"} | {m for m in bench.MODE_KEYS
                                                       if m.startswith("ours-eagle") or m.endswith("-shipped")}
    assert set(rows) == {(s, m) for s in SETTINGS for m in bench.MODE_KEYS if m not in skipped}
    assert len(report["prompts"]) == 2 and {p["dataset"] for p in report["prompts"]} == {"humaneval"}
    for r in rows.values():
        assert r["tokens"] > 0 and r["wall_s"] > 0 and r["tokens_per_s"] > 0, r["name"]
        assert r["decode_tokens_per_s"] >= r["tokens_per_s"]
        assert 0.0 <= r["overhead_share"] <= 1.0, (r["name"], r["overhead_share"])
        assert 0.0 <= r["prefill_s"] <= r["forward_s"] <= r["wall_s"]
        assert r["forwards"]["target"] >= 2 and r["prefills"]["target"] == 2  # one prefill per prompt
        assert r["tau"] >= 1.0


def test_greedy_outputs_are_identical_to_ours_autoregressive(bench_run):
    _, report, _ = bench_run
    greedy = [r for r in report["rows"] if r["setting"] == "greedy"]
    assert all(r["identical"] is True and r["identical_calls"] == [2, 2] for r in greedy), \
        [(r["name"], r["identical_calls"]) for r in greedy if not r["identical"]]
    sampled = [r for r in report["rows"] if r["setting"] != "greedy"]
    assert all(r["identical"] is None for r in sampled)


def test_acceptance_and_predictions(bench_run):
    _, report, _ = bench_run
    rows = rows_by(report)
    for s in SETTINGS:
        for mode in ("ours-spec", "hf-assisted", "ours-truncated", "hf-truncated", "ours-bigram"):
            r = rows[(s, mode)]
            assert r["rounds"] > 0 and 0 < r["drafted"] <= 3 * r["rounds"], (s, mode)  # gamma 3
            assert 0.0 <= r["accept_rate"] <= 1.0 and 0.0 <= r["alpha"] <= 1.0
            assert r["speedup"] > 0 and r["decode_speedup"] > 0
            # the throughput ratio (specexp.stats) is tokens/s over the autoregressive tokens/s, with its CI
            base = rows[(s, "hf-ar" if mode.startswith("hf") else "ours-ar")]
            assert r["speedup"] == pytest.approx(r["tokens_per_s"] / base["tokens_per_s"])
            lo, hi = r["speedup_ci"]
            assert lo <= r["speedup"] <= hi
            assert math.isfinite(r["predicted"]) and r["predicted"] > 0, (s, mode)
            assert math.isfinite(r["measured_over_predicted"])
            assert r["cost_ratio_c"] > 0 if r["drafter"] else r["cost_ratio_c"] == 0.0
        for mode in ("ours-lookup", "hf-lookup"):  # drafts 0..L tokens a round: no prediction
            r = rows[(s, mode)]
            assert r["drafted"] <= 4 * r["rounds"] and r["predicted"] is None
        for mode in ("ours-ar", "hf-ar"):
            assert rows[(s, mode)]["speedup"] is None and rows[(s, mode)]["drafted"] is None
    # Greedy, same drafter, same target: transformers' assisted generation (constant schedule, no
    # confidence threshold) runs the same rounds as ours, which checks how its rounds are counted.
    for ours, hf in (("ours-spec", "hf-assisted"), ("ours-truncated", "hf-truncated")):
        a, b = rows[("greedy", ours)], rows[("greedy", hf)]
        assert (a["rounds"], a["drafted"], a["accepted"]) == (b["rounds"], b["drafted"], b["accepted"]), (ours, hf)
        assert a["forwards"] == b["forwards"]
    # Prompt lookup: the same rule, except that in a prompt's last round transformers may draft up
    # to the whole remaining budget where ours drafts one less (its own token fills the budget).
    a, b = rows[("greedy", "ours-lookup")], rows[("greedy", "hf-lookup")]
    assert (a["rounds"], a["accepted"], a["forwards"]) == (b["rounds"], b["accepted"], b["forwards"])
    assert 0 <= b["drafted"] - a["drafted"] <= len(report["prompts"])


def test_ratios_table_json_and_cleanup(bench_run):
    bench, report, out = bench_run
    pairs = {(q["setting"], q["ours"], q["hf"]) for q in report["ratios"]}
    assert pairs == {(s, o, h) for s in SETTINGS for o, h in
                     (("ours-ar", "hf-ar"), ("ours-spec", "hf-assisted"), ("ours-lookup", "hf-lookup"),
                      ("ours-truncated", "hf-truncated"))}
    assert all(q["ratio"] > 0 and q["ratio_ci"][0] <= q["ratio"] <= q["ratio_ci"][1] for q in report["ratios"])
    assert {g["setting"] for g in report["goals"]} == set(SETTINGS)
    saved = json.loads(out.read_text())
    assert saved["rows"] == json.loads(json.dumps(report["rows"]))
    assert saved["machine"]["torch_threads"] >= 1 and saved["machine"]["transformers"]
    assert saved["settings"]["gamma"] == 3 and "--repeats" in saved["command"]
    table = bench.format_table(report)
    for r in report["rows"]:
        assert r["name"] in table
    assert "speedup [95% CI]" in table and "throughput ratio, 95% CI" in table
    # the forward hooks and the round counter are gone from the (process-cached) models
    from specexp.models.loading import _MODEL_CACHE

    for model in _MODEL_CACHE.values():
        assert not model._forward_hooks and not model._forward_pre_hooks
        assert "_get_candidate_generator" not in vars(model)


def test_missing_dataset_is_skipped_with_a_note(random_pair_dir, tmp_path, monkeypatch):
    bench = load_bench()
    monkeypatch.setenv("SPECEXP_SHARED_DATA", str(tmp_path / "nowhere"))
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    pair, _ = bench.load_pair("tiny", overrides=pair_overrides(random_pair_dir))
    notes = []
    prompts = bench.load_prompts(["gsm8k", "humaneval"], 1, pair.tokenizer, pair.device, note=notes.append)
    assert [p.dataset for p in prompts] == ["humaneval"] and prompts[0].ids.numel() > 0
    assert len(notes) == 1 and "gsm8k skipped" in notes[0]


def test_batch_sizes_flag_runs_the_batched_bench(random_pair_dir, tmp_path, monkeypatch):
    """`bench.py --batch-sizes 1,2`: every mode at every batch size, transformers'
    batched generate included, each row identical to batch-1 autoregressive; a crossover entry per
    drafter; --ignore-eos decodes exactly --new-tokens per prompt on every side."""
    bench = load_bench()
    corpus = tmp_path / "corpus.txt"
    corpus.write_text(CORPUS)
    monkeypatch.setenv("SPECEXP_CACHE", str(tmp_path / "cache"))
    overrides = [a for o in (*pair_overrides(random_pair_dir), f"++strategy.corpus={corpus}")
                 for a in ("--override", o)]
    out = tmp_path / "batch.json"
    res = bench.main(["--pair", "tiny", *overrides, "--batch-sizes", "1,2", "--batch-prompts", "3",
                      "--new-tokens", "6", "--repeats", "1", "--ignore-eos", "--json", str(out)])
    assert json.loads(out.read_text())["crossover_batch_size"] == res["crossover_batch_size"]
    modes = {"ours-autoregressive", "hf-generate", "ours-speculative", "ours-prompt_lookup", "ours-bigram"}
    assert {(r["batch_size"], r["mode"]) for r in res["rows"]} == {(b, m) for b in (1, 2) for m in modes}
    for r in res["rows"]:
        assert r["identical_to_batch1_ar"] == 3 and r["tokens_per_second"] > 0, r
    assert set(res["crossover_batch_size"]) == {"speculative", "prompt_lookup", "bigram"}
    assert res["ignore_eos"] and set(res["autoregressive_scaling"]) == {1, 2}
    assert res["forward_ceiling"][1]["vs_batch1"] == 1.0 and res["forward_ceiling"][2]["ms_per_step"] > 0


def test_feature_goals_pick_the_best_feature_mode_and_transformers_fastest_speculative_mode():
    from specexp.report.bench_analysis import feature_goals

    def row(mode, side, tps, tau=None, speedup=None, gamma=4):
        return {"setting": "greedy", "mode": mode, "name": mode, "side": side, "tokens_per_s": tps, "tau": tau,
                "speedup": speedup, "speedup_ci": [speedup - 0.1, speedup + 0.1] if speedup else None, "gamma": gamma}

    rows = [row("ours-ar", "ours", 20.0, 1.0, None, None), row("hf-ar", "hf", 30.0, 1.0, None, None),
            row("hf-lookup", "hf", 22.0, 1.7), row("ours-lookup-store", "ours", 40.0, 1.9, 2.0),
            row("ours-eagle-vocab", "ours", 17.0, 2.6, 0.85), row("ours-eagle-store-cost", "ours", 29.0, 2.1, 1.45)]
    goals = {g["goal"].split(" (")[0]: g for g in feature_goals(rows)}
    tau, sp, hf = goals.values()
    assert tau["value"] == "2.60 (ours-eagle-vocab)" and tau["met"]  # the most tokens per forward of the feature modes
    assert sp["value"] == "1.45x [1.35, 1.55] (ours-eagle-store-cost)" and sp["met"]  # the fastest one; no model-free mode
    # over transformers' fastest speculative mode (lookup, 22 tok/s), not its autoregressive one (30)
    assert hf["value"] == f"{29 / 22:.2f}x (ours-eagle-store-cost / hf-lookup)" and not hf["met"]
    assert feature_goals([r for r in rows if not r["mode"].startswith("ours-eagle")]) == []


def test_tree_modes_end_to_end(random_pair_dir, tmp_path, monkeypatch, capsys):
    """The token-tree modes alone on one prompt: they run, greedy output equals ours autoregressive,
    the nodes and tree columns are filled, --tree-sizes adds a mode per new template, and every
    setting gets the tree goals."""
    bench = load_bench()
    monkeypatch.setenv("SPECEXP_CACHE", str(tmp_path / "cache"))
    overrides = [a for o in pair_overrides(random_pair_dir) for a in ("--override", o)]
    report = bench.main(["--pair", "tiny", *overrides, "--datasets", "humaneval", "--per-dataset", "1",
                         "--repeats", "1", "--warmup", "0", "--new-tokens", "8", "--temperature", "0.7",
                         "--modes", "ours-ar,hf-ar,ours-recycling,ours-recycling-sized,ours-lookup-trie",
                         "--tree-depth", "3", "--tree-max-nodes", "12", "--tree-sized-depth", "3",
                         "--tree-sizes", "4,2,1;2,1", "--tree-lookup-nodes", "2",
                         "--json", str(tmp_path / "trees.json")])
    out = capsys.readouterr().out
    trees = {"ours-recycling", "ours-recycling-b2-1", "ours-lookup-trie", "ours-recycling-sized"}
    rows = rows_by(report)
    assert set(rows) == {(s, m) for s in SETTINGS for m in trees | {"ours-ar", "hf-ar"}}
    assert "ours-recycling-b4-2-1" not in {m for _, m in rows}  # the default template: measured once, said so
    assert "is ours-recycling's template: measured once" in out
    for (s, m), r in rows.items():
        assert r["tree"] == (m in trees)
        if m in trees:
            assert r["gamma"] == (8 if m == "ours-lookup-trie" else 3) and r["tokens"] > 0
            assert r["nodes_per_forward"] == pytest.approx(r["drafted"] / r["forwards"]["target"])
            if m.startswith("ours-recycling"):  # seeded from the prompt's bigrams: it drafts from the first round
                assert r["tree_rounds"] > 0 and 1 <= r["tree_depth_mean"] <= 3 and r["tree_nodes_mean"] >= 1
            if m == "ours-recycling-b2-1":
                assert r["tree_nodes_mean"] <= 2 + 2 + 2 + 2  # 2 children of the context, one per node, 2 lookup
            if s == "greedy":
                assert r["identical"] is True, m
        else:
            assert r["nodes_per_forward"] is None and r["tree_rounds"] is None
    for s in SETTINGS:
        goals = [g for g in report["goals"] if g["setting"] == s and g["goal"].startswith("trees:")]
        assert len(goals) == 4, goals
        assert all(isinstance(g["met"], bool) and g["value"] for g in goals)
    assert " nodes " in bench.format_table(report).splitlines()[2]


def test_tree_goals_from_timed_calls():
    """bench_analysis.analyse + goals on synthetic timed calls (4 prompts, one repeat): the tree
    goals pick the best tree mode, compare it with our autoregressive and transformers' fastest mode,
    and judge the machine-sized tree by its ratio's point estimate, saying whether the CI decides it."""
    from types import SimpleNamespace as NS

    from specexp.core.decode import Generation
    from specexp.models.sampling import Sampling
    from specexp.report.bench_analysis import analyse, goals, ratios

    def gen(seconds, forwards, nodes=0, tree=False):
        """60 tokens in `seconds` and `forwards` target forwards (one a round, the first a prefill),
        drafting `nodes` tokens a round (with `tree`: a tree 3 deep whose path accepts one)."""
        rounds = forwards if tree else 0
        return Generation(tokens=list(range(60)), wall_time=seconds, drafted=[nodes] * forwards,
                          accepted=[min(nodes, 1)] * forwards, model_forwards={"target": forwards},
                          model_forward_seconds={"target": 0.9 * seconds}, model_prefills={"target": 1},
                          model_prefill_seconds={"target": 0.01}, tree_nodes=[nodes] * rounds,
                          tree_depth=[3] * rounds, tree_path=[1] * rounds, tree_ranks=[None] * rounds)

    def mode(key, side, gamma=4, counterpart=None, tree=False):
        return NS(key=key, name=key, side=side, gamma=gamma, fixed_gamma=False, drafter=None,
                  counterpart=counterpart, tree=tree)

    trees = ("ours-recycling", "ours-recycling-b8-2-1", "ours-recycling-sized", "ours-lookup-trie")
    modes = [mode("ours-ar", "ours", None, "hf-ar"), mode("hf-ar", "hf", None, "ours-ar"), mode("hf-lookup", "hf"),
             *[mode(k, "ours", tree=True) for k in trees]]
    sets = [NS(name="greedy", sampling=Sampling()),
            NS(name="T=0.7", sampling=Sampling(temperature=0.7, top_k=0, top_p=1.0))]
    noise = [1.0, 1.05, 0.95, 1.02]  # per prompt: the machine's drift, shared by every mode
    # per setting and mode: (seconds per prompt, the mode's own per-prompt factors, target forwards, nodes a round)
    plan = {"greedy": {"ours-ar": (3.0, [1] * 4, 60, 0), "hf-ar": (2.0, [1] * 4, 60, 0),
                       "hf-lookup": (1.2, [1] * 4, 30, 4),
                       "ours-recycling": (1.5, [1, 1.01, 0.99, 1], 18, 12),  # 3.33 tokens per forward
                       "ours-recycling-b8-2-1": (1.4, [1, 0.99, 1.01, 1], 17, 24),  # 3.53: the best, the fastest
                       "ours-recycling-sized": (1.4 / 0.9, [1, 1.01, 0.99, 1], 21, 16),  # 0.90x the best fixed
                       "ours-lookup-trie": (2.5, [1] * 4, 30, 8)},
            "T=0.7": {"ours-ar": (3.0, [1] * 4, 60, 0), "hf-ar": (4.5, [1] * 4, 60, 0),  # hf's fastest: its AR
                      "hf-lookup": (5.0, [1] * 4, 40, 4),
                      "ours-recycling": (2.6, [1] * 4, 25, 12),
                      "ours-recycling-b8-2-1": (2.5, [1] * 4, 25, 24),  # the fastest: 1.2x ours-ar, 1.8x hf-ar
                      "ours-recycling-sized": (2.5, [1.25, 0.95, 1.2, 0.95], 25, 16),  # point 0.93x, a wide CI
                      "ours-lookup-trie": (2.8, [1] * 4, 30, 8)}}
    calls = {(s, k): [NS(repeat=0, prompt=i, gen=gen(sec * noise[i] * f[i], fw, nodes, k in trees)) for i in range(4)]
             for s, by_mode in plan.items() for k, (sec, f, fw, nodes) in by_mode.items()}
    rows = analyse(calls, modes, sets)
    by = {(r["setting"], r["mode"]): r for r in rows}
    assert by[("greedy", "ours-recycling")]["nodes_per_forward"] == pytest.approx(12.0)
    assert by[("greedy", "ours-recycling")]["tree_nodes_mean"] == pytest.approx(12.0)
    assert by[("greedy", "ours-ar")]["nodes_per_forward"] is None  # no drafts
    assert by[("greedy", "hf-lookup")]["nodes_per_forward"] is None  # ours only
    lo, hi = by[("greedy", "ours-recycling-b8-2-1")]["tau_ci"]
    assert lo == pytest.approx(60 / 17) == pytest.approx(hi)  # every prompt 60 tokens in 17 forwards
    out = {(g["setting"], g["goal"].split(" (")[0]): g for g in goals(rows, ratios(rows, modes, calls), calls)
           if g["goal"].startswith("trees:")}
    tau = out[("greedy", "trees: >= 3.0 tokens per target forward")]
    assert tau["met"] and tau["value"] == "3.53 [3.53, 3.53] (ours-recycling-b8-2-1)"
    assert not out[("T=0.7", "trees: >= 3.0 tokens per target forward")]["met"]  # 2.40 at most
    sp = out[("greedy", "trees: >= 1.8x our autoregressive")]
    assert sp["met"] and sp["value"].startswith(f"{3.0 / 1.4:.2f}x [")
    assert sp["value"].endswith("(ours-recycling-b8-2-1)")
    sp = out[("T=0.7", "trees: >= 1.5x our autoregressive")]
    assert not sp["met"] and sp["value"].startswith(f"{3.0 / 2.5:.2f}x")
    hf = out[("greedy", "trees: >= 1.5x transformers' fastest mode")]  # hf-lookup, 50 tokens/s
    assert not hf["met"] and hf["value"].startswith(f"{1.2 / 1.4:.2f}x [") and "/ hf-lookup)" in hf["value"]
    hf = out[("T=0.7", "trees: >= 1.5x transformers' fastest mode")]  # transformers' autoregressive is its fastest
    assert hf["met"] and hf["value"].startswith(f"{4.5 / 2.5:.2f}x") and "/ hf-ar)" in hf["value"]
    sized = {s: out[(s, "trees: the machine-sized tree within 5% of the best fixed tree")] for s in SETTINGS}
    # greedy: 0.90x with a tight CI, decided; sampled: a point below 0.95 whose CI holds 0.95: undecided
    assert not sized["greedy"]["met"] and sized["greedy"]["value"].startswith("0.90x [")
    assert "the CI decides it" in sized["greedy"]["value"]
    assert not sized["T=0.7"]["met"] and "(ours-recycling-sized / ours-recycling-b8-2-1;" in sized["T=0.7"]["value"]
    assert "undecided at this n" in sized["T=0.7"]["value"]
    point = sum(noise) / sum(n * f for n, f in zip(noise, [1.25, 0.95, 1.2, 0.95]))  # total seconds: best / sized
    assert sized["T=0.7"]["value"].startswith(f"{point:.2f}x [") and point < 0.95
