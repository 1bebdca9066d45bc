"""The builds' instruction mix (specexp/builds/instruction_mix.py), the chat prompts by kind that
measure a drafter on kinds absent from its training (specexp/tasks/chat_categories.py), and the
acceptance-by-kind arithmetic of scripts/eagle_acceptance.py."""
from __future__ import annotations

import collections

import pytest
from conftest import CONF, load_script

from specexp.builds import instruction_mix as mix
from specexp.tasks.chat_categories import PROMPTS, TRAINED_AS, ChatCategories
from specexp.tasks.dataset_sources import shared_data_dir

needs_shared = pytest.mark.skipif(shared_data_dir() is None, reason="no shared data (../shared/data)")


@needs_shared
def test_the_broad_mix_asks_every_kind_in_its_share():
    turns = mix.reply_turns(500, 240, mix.BROAD_MIX, article_chars=300)
    counts = collections.Counter(k for k, _ in turns)
    assert set(counts) == set(mix.KINDS) == set(mix.BROAD_MIX)
    assert counts == {k: 20 * n for k, n in mix.BROAD_MIX.items()}  # 240 turns = 20 rounds of 12
    first_round = [k for k, _ in turns[:12]]
    assert first_round == [k for k, n in mix.BROAD_MIX.items() for _ in range(n)]
    texts = [q for _, q in turns]
    assert len(set(texts)) == len(texts)  # no turn twice


@needs_shared
def test_no_text_is_asked_about_twice_and_the_evaluation_keeps_its_part():
    turns = mix.reply_turns(500, 10_000, {k: 1 for k in ("xsum", "headline", "extract", "rewrite", "continue",
                                                         "questions")}, article_chars=200)
    body = collections.defaultdict(list)
    for k, q in turns:
        body[k].append(q.split("\n\n", 1)[1])
    for a, b in (("xsum", "headline"), ("xsum", "extract"), ("headline", "extract"),
                 ("rewrite", "continue"), ("rewrite", "questions"), ("continue", "questions")):
        assert not set(body[a]) & set(body[b]), (a, b)
    evaluated = {r["document"][:200] for r in mix.rows("xsum/test.jsonl", 0)[:500]}
    assert not evaluated & set(body["xsum"] + body["headline"] + body["extract"])
    wiki = (shared_data_dir() / "wikitext-2-raw" / "wiki.test.raw").read_text(encoding="utf-8").splitlines()
    first_half = {mix._detokenize(ln.strip())[:200] for ln in wiki[: len(wiki) // 2] if ln.strip()}
    assert len(body["rewrite"]) > 50 and not first_half & set(body["rewrite"] + body["continue"] + body["questions"])
    alone = [q for k, q in mix.reply_turns(500, 30, mix.REPLY_MIX, article_chars=200) if k == "xsum"]
    assert alone == [mix.SUMMARIZE + r["document"][:200] for r in mix.rows("xsum/test.jsonl", 500)[:6]]  # in order


@needs_shared
def test_multiple_choice_comes_from_the_validation_split():
    questions = mix.reply_prompts(0, 5, {"mmlu": 1})
    assert len(questions) == 5
    for q in questions:
        lines = q.splitlines()
        assert [ln[:3] for ln in lines[-5:-1]] == ["A. ", "B. ", "C. ", "D. "] and lines[-1].startswith("Answer with")
    test_split = " ".join(p.read_text(encoding="utf-8")[:2000] for p in (shared_data_dir() / "mmlu" / "test").glob("*.csv"))
    assert all(q.splitlines()[0] not in test_split for q in questions if len(q.splitlines()[0]) > 40)


def test_a_kind_without_data_here_is_left_out(tmp_path, monkeypatch):
    monkeypatch.setenv("SPECEXP_SHARED_DATA", str(tmp_path))  # an empty shared data folder
    turns = mix.reply_turns(500, 9, mix.BROAD_MIX)
    assert {k for k, _ in turns} == {"code"} and len(turns) == 9


def test_an_unknown_kind_names_the_key_and_the_known_kinds():
    with pytest.raises(ValueError, match=r"unknown kind\(s\) \['sharegpt'\] in reply_mix; known: .*'translate'"):
        mix.reply_turns(0, 3, {"sharegpt": 1})


def test_chat_categories_give_every_kind_and_say_which_a_build_mix_holds():
    samples = ChatCategories().samples()
    assert len(samples) == 45 and collections.Counter(s.category for s in samples) == {k: 3 for k in PROMPTS}
    assert set(TRAINED_AS) == set(PROMPTS)
    assert {v for v in TRAINED_AS.values() if v} <= set(mix.KINDS)
    absent = [k for k, v in TRAINED_AS.items() if v is None]
    assert len(absent) == 8 and "writing" in absent and "roleplay" in absent
    one_each = ChatCategories(limit=15, select="stratified").samples()
    assert sorted(s.category for s in one_each) == sorted(PROMPTS)


def test_the_chat_categories_config_is_commented_and_builds_the_task():
    import re

    from hydra.utils import instantiate
    from omegaconf import OmegaConf

    path = CONF / "dataset" / "chat_categories.yaml"
    lines = [line for line in path.read_text().splitlines() if re.match(r"^[a-z]\w*:", line)]
    assert lines and all("#" in line for line in lines), [line for line in lines if "#" not in line]
    task = instantiate(OmegaConf.load(path), _convert_="all")
    assert isinstance(task, ChatCategories) and task.chat == "auto" and task.max_new_tokens == 96
    assert len(task.samples()) == 45 and len(ChatCategories(limit=30, select="stratified").samples()) == 30


def test_acceptance_by_kind_pools_over_prompts_with_a_ci():
    ea = load_script("eagle_acceptance")
    rows = [[10, 5, 2, 0, 0], [20, 4, 1, 1, 0], [30, 12, 6, 3, 1]]  # accepted[j]: rounds accepting >= j drafts
    g = ea.pooled(rows)
    assert g["rounds"] == 60
    assert g["first_draft"] == pytest.approx(21 / 60)
    assert g["tokens_per_forward"] == pytest.approx(1 + (7 + 6 + 22) / 60)
    lo, hi = g["first_draft_ci"]
    assert lo < g["first_draft"] < hi and 0 <= lo and hi <= 1
    assert ea.pooled(rows[:1])["first_draft_ci"] == [None, None]  # one prompt: no interval, and it says so
    assert ea.interval([None, None]) == "[n/a: one prompt]"


def test_comparing_drafters_pairs_the_prompts_and_counts_only_kinds_absent_from_both():
    ea = load_script("eagle_acceptance")
    groups = {"writing": [0, 1, 2], "translation": [3, 4], "math": [5]}
    base_rows = [[10, 2, 0, 0, 0], [12, 3, 1, 0, 0], [9, 1, 0, 0, 0], [10, 1, 0, 0, 0], [11, 2, 0, 0, 0],
                 [10, 6, 3, 1, 0]]
    new_rows = [[10, 4, 1, 0, 0], [12, 5, 2, 0, 0], [9, 3, 1, 0, 0], [10, 6, 2, 0, 0], [11, 7, 3, 1, 0],
                [10, 6, 3, 1, 0]]

    def drafter(name, kinds, rows):
        return {"eagle_dir": name, "per_prompt": rows,
                "groups": {g: {"trained": ea.trained(g, kinds)} for g in groups}}

    out = ea.compare([drafter("old", ["code", "gsm8k", "xsum"], base_rows),
                      drafter("new", sorted(mix.BROAD_MIX), new_rows)], groups)["new"]
    both = out["absent_from_both"]
    assert both["kinds"] == ["writing"] and both["prompts"] == 3  # translation is trained in the new mix
    assert both["first_draft_difference"] == pytest.approx((12 - 6) / 31)
    lo, hi = both["first_draft_difference_ci"]
    assert lo is None or lo <= both["first_draft_difference"] <= hi
    assert out["all"]["prompts"] == 6
    assert ea.trained("humaneval", ["code"]) and not ea.trained("writing", sorted(mix.BROAD_MIX))


@pytest.mark.slow
def test_a_run_on_chat_categories_reports_acceptance_by_kind(run_specexp, trained_pair_dir):
    """`dataset=chat_categories` through the real CLI (the tiny pair has no chat template: the
    default chat: auto leaves the prompts plain): one sample per kind, a category block per kind."""
    import json

    _, run_dir = run_specexp("dataset=chat_categories", "dataset.limit=15", "dataset.max_new_tokens=12", "warmup=0",
                             "summary=false")
    m = json.loads((run_dir / "metrics.json").read_text())
    assert m["status"] == "ok" and m["n_samples"] == 15 and m["all_match_baseline"] is True
    assert set(m["categories"]) == set(PROMPTS)
    for c in m["categories"].values():
        assert c["n_samples"] == 1 and 0 <= c["acceptance_rate"] <= 1 and c["mean_accepted_length"] >= 1
