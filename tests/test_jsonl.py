"""dataset=jsonl: prompts from your own file (field paths, templates, categories, references),
stratified selection, scoring, and the per-category breakdown in metrics.json."""
from __future__ import annotations

import json

import pytest
from conftest import compose, pair_overrides

from specexp.tasks.base import Sample, stratified
from specexp.tasks.jsonl import JsonlTask, fill, get_path, parse_path

ROWS = [  # Spec-Bench's layout: question_id, category, turns (+ a reference here)
    {"question_id": 81, "category": "writing", "turns": ["def add(a, b):", "more"], "answer": "return a + b"},
    {"question_id": 82, "category": "writing", "turns": ["class Point:", "x"], "answer": "pass"},
    {"question_id": 83, "category": "math", "turns": ["for i in range(10):", "y"], "answer": "print(i)"},
    {"question_id": 84, "category": "math", "turns": ["x = 1", "z"], "answer": "y = 2"},
    {"question_id": 85, "category": "coding", "turns": ["def f(x):", "w"], "answer": "return x"},
]


@pytest.fixture
def spec_bench(tmp_path):
    p = tmp_path / "question.jsonl"
    p.write_text("".join(json.dumps(r) + "\n" for r in ROWS))
    return p


def test_paths_and_templates():
    row = {"turns": ["a", "b"], "meta": {"lang": "py"}, "q": "why?"}
    assert parse_path("turns[0].text") == ["turns", 0, "text"]
    assert get_path(row, "turns[-1]", "dataset.prompt") == "b" and get_path(row, "meta.lang", "k") == "py"
    assert fill("Q: {q} [{turns[1]}] {meta.lang} {not_a_field} {x: 1}", row, "k") == "Q: why? [b] py {not_a_field} {x: 1}"
    with pytest.raises(KeyError, match=r"dataset.prompt='turns\[5\]': no 5 in this row \(its fields: turns, meta, q\)"):
        get_path(row, "turns[5]", "dataset.prompt")
    with pytest.raises(ValueError, match="not a field path"):
        parse_path("turns[")


def test_loads_spec_bench_layout(spec_bench):
    t = JsonlTask(path=str(spec_bench), prompt="turns[0]", category="category", id="question_id", reference="answer")
    s = t.samples()
    assert [x.id for x in s] == ["81", "82", "83", "84", "85"]
    assert s[0].prompt == "def add(a, b):" and s[0].category == "writing" and s[0].reference == "return a + b"
    assert t.name == "jsonl:question" and t.version.startswith("1+sha256:")
    t2 = JsonlTask(path=str(spec_bench), prompt="# {category}\n{turns[0]}", name="spec_bench")
    assert t2.samples()[2].prompt == "# math\nfor i in range(10):" and t2.samples()[2].id == "spec_bench/2"
    assert t2.samples()[2].category is None


def test_csv_and_json_files(tmp_path):
    (tmp_path / "p.csv").write_text("prompt,kind\nhello,a\nworld,b\n")
    (tmp_path / "p.json").write_text(json.dumps([{"prompt": "hello"}, {"prompt": "world"}]))
    assert [s.prompt for s in JsonlTask(path=str(tmp_path / "p.csv"), category="kind").samples()] == ["hello", "world"]
    assert [s.prompt for s in JsonlTask(path=str(tmp_path / "p.json")).samples()] == ["hello", "world"]
    with pytest.raises(ValueError, match="dataset.path"):
        JsonlTask()
    with pytest.raises(ValueError, match="dataset.metric"):
        JsonlTask(path="x.jsonl", metric="bleu")


def test_stratified_selection_splits_the_limit_evenly():
    items = [Sample(str(i), "p", category=c) for i, c in enumerate("aaaaabbc")]
    picked = stratified(items, 5, seed=0)
    cats = [s.category for s in picked]
    assert (cats.count("a"), cats.count("b"), cats.count("c")) == (2, 2, 1)  # round robin: a b c a b
    assert [int(s.id) for s in picked] == sorted(int(s.id) for s in picked)  # dataset order kept
    assert stratified(items, 5, seed=0) == picked and len(stratified(items, None)) == 8
    with pytest.raises(ValueError, match="dataset.category"):
        stratified([Sample("0", "p")], 1)
    with pytest.raises(ValueError, match="stratified"):
        JsonlTask(path="x.jsonl", select="balanced")


def test_scoring_exact_and_rouge(spec_bench):
    t = JsonlTask(path=str(spec_bench), prompt="turns[0]", reference="answer", metric="exact")
    s = t.samples()[:2]
    q = t.score(s, [" return a + b\n", "nope"])
    assert q["exact_match"] == 0.5 and q["n_scored"] == 2 and q["per_sample"][0]["exact_match"] == 1.0
    r = JsonlTask(path=str(spec_bench), prompt="turns[0]", reference="answer").score(s, ["return a + b", "pass it"])
    assert r["rouge1"] == pytest.approx((1.0 + 2 * (1 * 0.5) / (1 + 0.5)) / 2)  # F1 of 1/1 and P=1/2,R=1
    assert JsonlTask(path=str(spec_bench)).score(s, ["a", "b"]) == {}


def test_config_composes(spec_bench):
    from hydra.utils import instantiate

    cfg = compose(["dataset=jsonl", f"dataset.path={spec_bench}", "dataset.prompt='turns[0]'",
                   "dataset.category=category", "dataset.select=stratified", "dataset.limit=3"])
    t = instantiate(cfg.dataset)
    assert [s.category for s in t.samples()] == ["writing", "math", "coding"]


def test_run_breaks_aggregates_down_per_category(spec_bench, random_pair_dir, run_specexp, capsys):
    _, run_dir = run_specexp("dataset=jsonl", f"dataset.path={spec_bench}", "dataset.prompt='turns[0]'",
                             "dataset.category=category", "dataset.id=question_id", "dataset.reference=answer",
                             "dataset.max_new_tokens=8", "warmup=0", "summary=false", *pair_overrides(random_pair_dir))
    m = json.loads((run_dir / "metrics.json").read_text())
    assert m["status"] == "ok" and m["dataset"]["name"] == "jsonl:question"
    cats = m["categories"]
    assert list(cats) == ["writing", "math", "coding"]
    assert [s["category"] for s in m["samples"]] == [r["category"] for r in ROWS]
    for name, c in cats.items():
        mine = [s for s in m["samples"] if s["category"] == name]
        assert c["n_samples"] == len(mine) and c["new_tokens"] == sum(s["new_tokens"] for s in mine)
        assert c["tokens_per_second"] == pytest.approx(c["new_tokens"] / sum(s["wall_time_s"] for s in mine))
        assert c["mean_accepted_length"] == pytest.approx(
            c["new_tokens"] / sum(s["target_forwards"] for s in mine))
        assert c["speedup"]["estimator"] == "throughput_ratio" and c["speedup"]["throughput_ratio"] > 0
        assert set(c["quality"]) >= {"rouge1", "rougeL", "n_scored"} and c["quality"]["n_scored"] == len(mine)
    assert sum(c["n_samples"] for c in cats.values()) == m["dataset"]["n_samples"] == 5
    # specexp-report --table specbench: Spec-Bench's layout, a column per category
    from specexp.report import cli

    assert cli.main([str(run_dir), "--table", "specbench", "--no-write"]) == 0
    out = capsys.readouterr().out
    assert "Method | writing | math | coding | Overall | Mean accepted tokens" in out.replace("  ", " ")
    sp = cats["math"]["speedup"]
    assert f"{sp['throughput_ratio']:.2f}x [{sp['ci_low']:.2f}, {sp['ci_high']:.2f}]" in out
