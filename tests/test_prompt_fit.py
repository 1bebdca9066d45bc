"""Prompts cut to fit the models' context (specexp/models/prompt_ids.py): dataset.max_prompt_tokens=auto is
what every model reads with max_new_tokens after it; XSum keeps the article's start and its
instruction whole, HumanEval (and the default) the prompt's end; an explicit N wins, null never
cuts (and a prompt that does not fit fails before decoding); metrics.json records each cut and the
summary says so."""
from __future__ import annotations

import json
import shutil

import pytest
from conftest import pair_overrides

from specexp.models.cached_lm import CachedLM
from specexp.models.prompt_ids import budget, fit_prompts
from specexp.tasks.humaneval import HumanEval
from specexp.tasks.dataset_sources import shared_data_dir
from specexp.tasks.xsum import XSum

CONTEXT = 128  # the short pair's position limit
INSTRUCTION = "\n\nSummarize the above article in 1 sentence.\n"  # XSum's template after the article
LONG = " ".join(f"Sentence {i} of the story says the council met on day {i}." for i in range(60))  # ~1,000 tokens
SHORT = "A short one."


@pytest.fixture(scope="module")
def short_pair(random_pair_dir, tmp_path_factory):
    """The random pair with a 128-position context (its configs edited: Llama's rotary positions
    need no weights per position)."""
    root = tmp_path_factory.mktemp("short_pair")
    shutil.copytree(random_pair_dir, root, dirs_exist_ok=True)
    for role in ("target", "drafter"):
        cfg = json.loads((root / role / "config.json").read_text())
        cfg["max_position_embeddings"] = CONTEXT
        (root / role / "config.json").write_text(json.dumps(cfg))
    return root


@pytest.fixture(scope="module")
def models(short_pair):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(short_pair / "target")
    lms = {role: CachedLM(AutoModelForCausalLM.from_pretrained(short_pair / role)) for role in ("target", "drafter")}
    return tok, lms


def xsum_file(tmp_path):
    path = tmp_path / "xsum.jsonl"
    rows = [{"id": "long", "document": LONG, "summary": "The council met."},
            {"id": "short", "document": SHORT, "summary": "Short."}]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def humaneval_file(tmp_path):
    doc = "".join(f"    >>> add({i}, {i})\n    {2 * i}\n" for i in range(80))
    prompt = f'def add(a, b):\n    """Add two numbers.\n{doc}    """\n'
    path = tmp_path / "he.jsonl"
    path.write_text(json.dumps({"task_id": "T/0", "prompt": prompt, "test": "def check(f):\n    assert f(1, 2) == 3\n",
                                "entry_point": "add"}) + "\n")
    return path


def test_auto_is_the_tightest_models_room(models):
    tok, lms = models
    b = budget("auto", lms, 8)
    assert (b.max_tokens, b.role, b.context) == (CONTEXT - 8, "target", CONTEXT)
    small = {**lms, "drafter": CachedLM(lms["drafter"].model)}
    small["drafter"].model.config.max_position_embeddings = 64
    try:
        assert (budget("auto", small, 8).max_tokens, budget("auto", small, 8).role) == (56, "drafter")
    finally:
        small["drafter"].model.config.max_position_embeddings = CONTEXT
    assert budget(40, lms, 8).max_tokens == 40 and budget(None, lms, 8).max_tokens is None
    assert budget("auto", lms, CONTEXT).max_tokens is None  # no room at all: nothing cut, check_context refuses


def test_a_long_xsum_prompt_keeps_the_article_start_and_the_instruction(models, tmp_path):
    tok, lms = models
    task = XSum(source="path", path=str(xsum_file(tmp_path)), max_new_tokens=8)
    samples = task.samples()
    prompts, fitted, info = fit_prompts(tok, samples, task, lms, "cpu")
    long, short = fitted
    assert long.original > 500 and len(long.ids) <= CONTEXT - 8 and len(long.ids) >= CONTEXT - 8 - 3
    assert (long.kept, long.part) == ("start", "article")
    text = tok.decode(long.ids)
    assert text.startswith("Article: Sentence 0 of the story") and text.endswith(INSTRUCTION)
    article = text[len("Article: "):-len(INSTRUCTION)]
    assert LONG.startswith(article) and len(article) > 50  # a prefix of the article, the template whole
    assert (short.kept, short.ids) == (None, tok(samples[1].prompt)["input_ids"])  # short prompts untouched
    assert prompts[0].tolist() == long.ids
    assert info["n_cut"] == 1 and info["max_prompt_tokens_used"] == CONTEXT - 8 and info["keep"] == "start"


def test_a_humaneval_prompt_keeps_its_end(models, tmp_path):
    tok, lms = models
    task = HumanEval(source="path", path=str(humaneval_file(tmp_path)), max_new_tokens=16)
    s = task.samples()[0]
    (ids,), (f,), info = fit_prompts(tok, [s], task, lms, "cpu")
    full = tok(s.prompt)["input_ids"]
    assert len(full) > CONTEXT and f.ids == full[-(CONTEXT - 16):] and (f.kept, f.part) == ("end", "prompt")
    assert tok.decode(f.ids).endswith('    """\n')  # the docstring's end: what the completion continues


def test_explicit_max_prompt_tokens_and_truncate_win(models, tmp_path):
    tok, lms = models
    task = XSum(source="path", path=str(xsum_file(tmp_path)), max_new_tokens=8, max_prompt_tokens=70)
    (f, _), info = fit_prompts(tok, task.samples(), task, lms, "cpu")[1:]
    assert len(f.ids) <= 70 and tok.decode(f.ids).endswith(INSTRUCTION) and info["context_role"] is None
    task = XSum(source="path", path=str(xsum_file(tmp_path)), max_new_tokens=8, truncate="end")
    s = task.samples()[0]
    f = fit_prompts(tok, [s], task, lms, "cpu")[1][0]
    assert f.ids == tok(s.prompt)["input_ids"][-(CONTEXT - 8):] and f.kept == "end"
    task = HumanEval(source="path", path=str(humaneval_file(tmp_path)), max_new_tokens=8, max_prompt_tokens=30)
    s = task.samples()[0]
    assert fit_prompts(tok, [s], task, lms, "cpu")[1][0].ids == tok(s.prompt)["input_ids"][-30:]


def test_bad_settings_name_their_key():
    with pytest.raises(ValueError, match="dataset.max_prompt_tokens must be auto, an integer >= 1 or null"):
        XSum(max_prompt_tokens="all")
    with pytest.raises(ValueError, match="dataset.max_prompt_tokens"):
        XSum(max_prompt_tokens=0)
    with pytest.raises(ValueError, match="dataset.truncate must be one of auto, start, end"):
        XSum(truncate="middle")


def run(tmp_path, short_pair, *overrides):
    from specexp.experiment.run import run_cli

    out = tmp_path / "run"
    rc = run_cli([*pair_overrides(short_pair), "dataset=xsum", "dataset.source=path",
                  f"dataset.path={xsum_file(tmp_path)}", "warmup=0", f"hydra.run.dir={out}", *overrides])
    return rc, json.loads((out / "metrics.json").read_text())


def test_a_run_records_each_cut_and_says_so(short_pair, tmp_path, capsys):
    rc, m = run(tmp_path, short_pair, "max_new_tokens=8")
    assert rc == 0 and m["status"] == "ok"
    long, short = m["samples"]
    assert long["prompt_tokens"] <= CONTEXT - 8 < long["prompt_tokens_original"]
    assert (long["prompt_kept"], long["prompt_cut_part"]) == ("start", "article")
    assert short["prompt_tokens"] == short["prompt_tokens_original"] and short["prompt_kept"] is None
    fit = m["dataset"]["prompt_fit"]
    assert (fit["max_prompt_tokens"], fit["max_prompt_tokens_used"], fit["n_cut"]) == ("auto", CONTEXT - 8, 1)
    assert ("1 of 2 prompts cut to 120 tokens to fit the target's 128-token context with max_new_tokens 8 "
            "(article start kept, template whole)") in capsys.readouterr().out


def test_null_never_cuts_and_fails_before_decoding(short_pair, tmp_path):
    rc, m = run(tmp_path, short_pair, "max_new_tokens=8", "dataset.max_prompt_tokens=null")
    assert rc != 0 and m["status"] == "failed" and "samples" not in m
    assert "the longest prompt" in m["error"] and f"target model reads at most {CONTEXT}" in m["error"]
    assert f"dataset.max_prompt_tokens <= {CONTEXT - 8} or auto" in m["error"]


def test_max_new_tokens_alone_past_the_context_fails_before_decoding(short_pair, tmp_path):
    rc, m = run(tmp_path, short_pair, f"max_new_tokens={CONTEXT}")
    assert rc != 0 and m["status"] == "failed" and "samples" not in m
    assert "not even a one-token prompt fits" in m["error"]


def test_xsum_runs_on_the_default_pair_with_no_flag(tmp_path, capsys):
    """`specexp dataset=xsum dataset.limit=2 max_new_tokens=16` as typed, on the default tiny pair
    (built on first use, ~3 min): the articles run past its 640 positions and are cut to fit."""
    if shared_data_dir() is None or not (shared_data_dir() / "xsum").is_dir():
        pytest.skip("../shared/data/xsum is absent")
    from specexp.experiment.run import run_cli

    out = tmp_path / "run"
    assert run_cli(["dataset=xsum", "dataset.limit=2", "max_new_tokens=16", f"hydra.run.dir={out}"]) == 0
    m = json.loads((out / "metrics.json").read_text())
    fit = m["dataset"]["prompt_fit"]
    assert m["status"] == "ok" and fit["max_prompt_tokens_used"] == 640 - 16 and fit["n_cut"] >= 1
    for s in m["samples"]:
        assert s["prompt_tokens"] <= 624
        assert (s["prompt_kept"] == "start") == (s["prompt_tokens_original"] > 624)
    assert f"{fit['n_cut']} of 2 prompts cut to 624 tokens to fit the target's 640-token context" in capsys.readouterr().out
