"""Tasks: every local format gives the same samples, the source order (path, shared copy, hub)
and its error, selection, prompt templates, chat templates, the shipped configs, and -- when the
shared copy is there (skipped cleanly otherwise) -- the real files."""
from __future__ import annotations

import csv
import gzip
import json
import re
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from hydra.utils import instantiate
from omegaconf import OmegaConf

from specexp.tasks import dataset_sources as loading
from specexp.tasks.base import Sample, Task
from specexp.tasks.gsm8k import GSM8K
from specexp.tasks.humaneval import HumanEval
from specexp.tasks.dataset_sources import DataUnavailable, render, shared_data_dir
from specexp.tasks.mmlu import MMLU, SUBJECTS
from specexp.tasks.wikitext import WikiText, split_words
from specexp.tasks.xsum import XSum

ROOT = Path(__file__).resolve().parents[1]
DATASETS = ROOT / "conf" / "dataset"
SHARED = shared_data_dir()
needs_shared = pytest.mark.skipif(SHARED is None, reason="no shared data copy (../shared/data or $SPECEXP_SHARED_DATA)")

GSM_ROWS = [{"question": "Tom has 3 apples and buys 2. How many?", "answer": "3 + 2 = <<3+2=5>>5\n#### 5"},
            {"question": "A $1,200 bike is 25% off. Price?", "answer": "1200 * 0.75 = 900\n#### 900"},
            {"question": "It is 4 degrees and drops 10. Temperature?", "answer": "4 - 10 = -6\n#### -6"}]


@pytest.fixture(autouse=True)
def offline(monkeypatch):
    """No test may reach the hub: it is offline here, and the switch makes that instant."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")


def write(path: Path, rows: list[dict], fmt: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    if fmt == "jsonl":
        path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    elif fmt == "jsonl.gz":
        with gzip.open(path, "wt") as f:
            f.write("".join(json.dumps(r) + "\n" for r in rows))
    elif fmt == "json":
        path.write_text(json.dumps(rows))
    elif fmt == "json-split":
        path.write_text(json.dumps({"train": [], "test": rows}))
    elif fmt == "json-columns":
        path.write_text(json.dumps({k: [r[k] for r in rows] for k in rows[0]}))
    elif fmt == "json-lines":  # what datasets' to_json writes, with a .json name
        path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    elif fmt == "csv":
        with open(path, "w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=list(rows[0]))
            w.writeheader()
            w.writerows(rows)
    elif fmt == "parquet":
        pq.write_table(pa.Table.from_pylist(rows), path)
    else:
        raise ValueError(fmt)
    return path


FORMATS = {"jsonl": "test.jsonl", "jsonl.gz": "test.jsonl.gz", "json": "test.json", "json-split": "all.json",
           "json-columns": "cols.json", "json-lines": "lines.json", "csv": "test.csv", "parquet": "test.parquet"}


# ---------------------------------------------------------------- formats
@pytest.mark.parametrize("fmt", list(FORMATS))
def test_gsm8k_reads_every_format_alike(tmp_path, fmt):
    path = write(tmp_path / FORMATS[fmt], GSM_ROWS, fmt)
    samples = GSM8K(path=str(path), template="Q: {question}\nA:").samples()
    assert [s.reference for s in samples] == ["5", "900", "-6"]
    assert [s.id for s in samples] == ["gsm8k/0", "gsm8k/1", "gsm8k/2"]
    assert samples[1].prompt == "Q: A $1,200 bike is 25% off. Price?\nA:"
    assert samples[2].meta["solution"].endswith("#### -6")


def test_folders_and_file_lists(tmp_path):
    write(tmp_path / "hf" / "main" / "test-00000-of-00002.parquet", GSM_ROWS[:2], "parquet")
    write(tmp_path / "hf" / "main" / "test-00001-of-00002.parquet", GSM_ROWS[2:], "parquet")
    write(tmp_path / "hf" / "main" / "train-00000-of-00001.parquet", GSM_ROWS[:1], "parquet")
    assert [s.reference for s in GSM8K(path=str(tmp_path / "hf")).samples()] == ["5", "900", "-6"]
    write(tmp_path / "two" / "main" / "test.jsonl", GSM_ROWS, "jsonl")
    write(tmp_path / "two" / "socratic" / "test.jsonl", GSM_ROWS, "jsonl")
    with pytest.raises(ValueError, match="several folders \\(main, socratic\\)"):
        GSM8K(path=str(tmp_path / "two")).samples()
    a = write(tmp_path / "a.jsonl", GSM_ROWS[:1], "jsonl")
    b = write(tmp_path / "b.csv", GSM_ROWS[1:], "csv")
    assert [s.reference for s in GSM8K(path=[str(a), str(b)]).samples()] == ["5", "900", "-6"]


def test_unknown_format_and_missing_fields_are_clear(tmp_path):
    bad = tmp_path / "data.xml"
    bad.write_text("<x/>")
    with pytest.raises(ValueError, match="unknown format .xml"):
        GSM8K(path=str(bad)).samples()
    other = write(tmp_path / "other.jsonl", [{"q": 1}], "jsonl")
    with pytest.raises(ValueError, match="'question' and 'answer'"):
        GSM8K(path=str(other)).samples()
    with pytest.raises(FileNotFoundError, match="does not exist"):
        GSM8K(path=str(tmp_path / "nope.jsonl")).samples()
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(FileNotFoundError, match="no test"):
        GSM8K(path=str(empty)).samples()


XSUM_ROWS = [{"document": "The council approved a new park.\nWork starts in May.", "summary": "A park is coming.", "id": "111"},
             {"document": "Rain fell all day.", "summary": "It rained.", "id": "222"}]


@pytest.mark.parametrize("fmt", ["jsonl", "parquet", "csv"])
def test_xsum_formats(tmp_path, fmt):
    path = write(tmp_path / f"test.{fmt}", XSUM_ROWS, fmt)
    samples = XSum(path=str(path)).samples()
    assert [s.id for s in samples] == ["111", "222"]
    assert samples[0].prompt == ("Article: The council approved a new park.\nWork starts in May.\n\n"
                                 "Summarize the above article in 1 sentence.\n")
    assert samples[1].reference == "It rained."


WIKI_RAW = (" = Title = \n"
            " one two three four five six seven eight nine ten eleven twelve \n"
            " = = Section = = \n"
            " short line \n"
            " alpha beta , gamma @-@ delta epsilon zeta eta theta \n")


def test_wikitext_raw_file_and_hub_layout_agree(tmp_path):
    raw = tmp_path / "wiki.test.raw"
    raw.write_text(WIKI_RAW)
    task = dict(prefix_words=4, min_words=6)
    from_raw = WikiText(path=str(raw), **task).samples()
    from_dir = WikiText(path=str(tmp_path), **task).samples()
    hub_rows = [{"text": line + "\n"} for line in WIKI_RAW.splitlines()] + [{"text": ""}]
    hub_rows.insert(2, {"text": " \n"})  # the hub's rows keep blank lines
    from_parquet = WikiText(path=str(write(tmp_path / "hub" / "test.parquet", hub_rows, "parquet")), **task).samples()
    assert [(s.id, s.prompt, s.reference) for s in from_raw] == [(s.id, s.prompt, s.reference) for s in from_dir] \
        == [(s.id, s.prompt, s.reference) for s in from_parquet]
    assert [s.id for s in from_raw] == ["wikitext/0", "wikitext/2"]  # the short paragraph (1) is skipped
    assert from_raw[0].prompt == "one two three four"
    assert from_raw[0].reference == " five six seven eight nine ten eleven twelve"
    assert from_raw[1].prompt == "alpha beta , gamma"
    for s in from_raw:
        assert s.prompt + s.reference == s.meta["paragraph"]


def test_split_words():
    assert split_words("a  b c", 2) == ("a  b", " c")
    assert split_words("a b", 5) == ("a b", "")


def write_mmlu(root: Path, subjects=("anatomy", "virology"), n_test=3):
    for split, n in (("test", n_test), ("dev", 5)):
        (root / split).mkdir(parents=True, exist_ok=True)
        for subj in subjects:
            with open(root / split / f"{subj}_{split}.csv", "w", newline="") as f:
                w = csv.writer(f)
                for i in range(n):
                    w.writerow([f"{subj} {split} q{i}, with a comma?", f"a{i}", f"b{i}", f"c{i}", f"d{i}", "ABCD"[i % 4]])
    return root


def test_mmlu_original_layout_fewshot_and_subjects(tmp_path):
    root = write_mmlu(tmp_path / "mmlu")
    task = MMLU(path=str(root), fewshot=2, subjects="virology")
    samples = task.samples()
    assert [s.id for s in samples] == ["virology/0", "virology/1", "virology/2"]
    assert [s.reference for s in samples] == ["A", "B", "C"]
    p = samples[1].prompt
    assert p.startswith("The following are multiple choice questions (with answers) about virology.\n\n")
    assert "virology dev q0, with a comma?\nA. a0\nB. b0\nC. c0\nD. d0\nAnswer: A\n\n" in p
    assert "virology dev q1, with a comma?\nA. a1\nB. b1\nC. c1\nD. d1\nAnswer: B\n\n" in p
    assert "dev q2" not in p and "anatomy" not in p
    assert p.endswith("virology test q1, with a comma?\nA. a1\nB. b1\nC. c1\nD. d1\nAnswer:")
    both = MMLU(path=str(root), subjects=["anatomy", "virology"]).samples()
    assert [s.id for s in both][:4] == ["anatomy/0", "anatomy/1", "anatomy/2", "virology/0"]
    assert len(MMLU(path=str(root), subjects="all").samples()) == 6
    assert len(MMLU(path=str(root / "test")).samples()) == 6  # the split folder itself
    with pytest.raises(ValueError, match=r"\['astronomy'\] have no test rows") as err:
        MMLU(path=str(root), subjects=["astronomy"]).samples()
    assert "not MMLU subject names" not in str(err.value)
    with pytest.raises(ValueError, match=r"not MMLU subject names: \['astrology'\]"):
        MMLU(path=str(root), subjects=["anatomy", "astrology"]).samples()


def test_mmlu_one_original_csv_finds_its_dev_shots(tmp_path):
    root = write_mmlu(tmp_path / "mmlu")
    samples = MMLU(path=str(root / "test" / "anatomy_test.csv"), fewshot=1).samples()
    assert len(samples) == 3 and "anatomy dev q0, with a comma?" in samples[0].prompt


def test_mmlu_flat_file_hub_layout(tmp_path):
    rows = [{"question": "2+2?", "subject": "elementary_mathematics", "choices": ["3", "4", "5", "6"], "answer": 1},
            {"question": "Capital of France?", "subject": "miscellaneous", "choices": ["Paris", "Rome", "Oslo", "Bern"],
             "answer": 0}]
    path = write(tmp_path / "test.parquet", rows, "parquet")
    csd = MMLU(path=str(path), header="", template="Question: {question}\n(A) {A} (B) {B} (C) {C} (D) {D}\n Answer: ")
    samples = csd.samples()
    assert [s.reference for s in samples] == ["B", "A"]
    assert samples[0].prompt == "Question: 2+2?\n(A) 3 (B) 4 (C) 5 (D) 6\n Answer: "
    with pytest.raises(ValueError, match="dev_path"):
        MMLU(path=str(path), fewshot=1).samples()
    dev = write(tmp_path / "dev.jsonl", [dict(r, question="dev " + r["question"]) for r in rows], "jsonl")
    shot = MMLU(path=str(path), dev_path=str(dev), fewshot=1, template="{question}\n{choices}\nAnswer:").samples()
    assert shot[0].prompt.endswith("dev 2+2?\nA. 3\nB. 4\nC. 5\nD. 6\nAnswer: B\n\n2+2?\nA. 3\nB. 4\nC. 5\nD. 6\nAnswer:")
    with pytest.raises(ValueError, match="fewshot"):
        MMLU(path=str(path), dev_path=str(dev), fewshot=2).samples()


def test_mmlu_rejects_bad_fewshot():
    with pytest.raises(ValueError, match="0-5"):
        MMLU(fewshot=6)


def test_humaneval_from_a_local_file(tmp_path):
    rows = [{"task_id": "T/0", "prompt": "def f():\n", "canonical_solution": "    return 1\n",
             "test": "def check(c):\n    assert c() == 1\n", "entry_point": "f"}]
    path = write(tmp_path / "he.jsonl.gz", rows, "jsonl.gz")
    (s,) = HumanEval(path=str(path), source="path").samples()
    assert (s.id, s.prompt, s.meta["entry_point"]) == ("T/0", "def f():\n", "f")
    assert HumanEval(path=str(path)).score([s], ["    return 1\n"])["pass@1"] == 1.0


def test_humaneval_from_the_package():
    samples = HumanEval(limit=None).samples()
    assert len(samples) == 164 and samples[0].id == "HumanEval/0" and samples[-1].id == "HumanEval/163"
    assert samples[0].prompt == samples[0].meta["code_prompt"]  # template "{prompt}": the raw prompt


# ---------------------------------------------------------------- sources
def test_auto_uses_path_then_shared_then_hub(tmp_path, monkeypatch):
    shared = tmp_path / "shared"
    write(shared / "gsm8k" / "test.jsonl", GSM_ROWS[:1], "jsonl")
    own = write(tmp_path / "own.jsonl", GSM_ROWS, "jsonl")
    monkeypatch.setenv("SPECEXP_SHARED_DATA", str(shared))
    assert shared_data_dir() == shared
    assert len(GSM8K(path=str(own)).samples()) == 3  # 1. path
    assert len(GSM8K().samples()) == 1  # 2. the shared copy
    assert len(GSM8K(source="shared").samples()) == 1
    import specexp.tasks.gsm8k as g

    calls = []
    monkeypatch.setattr(g, "load_hub", lambda *a: calls.append(a) or GSM_ROWS[:2])
    assert len(GSM8K(source="hub").samples()) == 2 and calls == [("openai/gsm8k", "main", "test")]
    monkeypatch.setenv("SPECEXP_SHARED_DATA", str(tmp_path / "nowhere"))
    assert len(GSM8K().samples()) == 2  # 3. the hub


def _no_network(*a, **k):
    raise AssertionError("offline: no connection may be attempted")


def test_nothing_reachable_names_every_source_fast(tmp_path, monkeypatch):
    """Offline, the hub is never contacted (an event, not a clock): a connection attempt fails the test."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("SPECEXP_SHARED_DATA", str(tmp_path / "nowhere"))
    attempts = []  # recorded, since the probe runs in a thread where an exception would be swallowed
    monkeypatch.setattr(loading.socket, "create_connection", lambda *a, **k: attempts.append(a) or _no_network())
    import datasets

    monkeypatch.setattr(datasets, "load_dataset", lambda *a, **k: attempts.append(a) or _no_network())
    with pytest.raises(DataUnavailable) as err:
        GSM8K().samples()
    assert attempts == []
    msg = str(err.value)
    assert "dataset.path: not set" in msg and "shared copy" in msg and "SPECEXP_SHARED_DATA" in msg
    assert "hub openai/gsm8k" in msg and "HF_HUB_OFFLINE=1" in msg and "dataset.source=hub" in msg
    with pytest.raises(DataUnavailable, match="shared copy"):
        MMLU(source="shared").samples()


def test_hub_unreachable_is_detected_without_hanging(tmp_path, monkeypatch):
    for var in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "TRANSFORMERS_OFFLINE", "HTTPS_PROXY", "https_proxy",
                "ALL_PROXY", "all_proxy"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")  # nothing listens on the discard port
    monkeypatch.setenv("SPECEXP_SHARED_DATA", str(tmp_path / "nowhere"))
    # events, not a clock: one probe with a finite timeout, and datasets is never asked to download
    probes, real = [], loading.socket.create_connection
    monkeypatch.setattr(loading.socket, "create_connection", lambda addr, timeout=None, *a: probes.append(
        (addr, timeout)) or real(addr, timeout, *a))
    import datasets

    monkeypatch.setattr(datasets, "load_dataset", _no_network)
    with pytest.raises(DataUnavailable, match="cannot connect to 127.0.0.1:9"):
        XSum().samples()
    assert probes == [(("127.0.0.1", 9), 3.0)]


def test_hub_errors_become_data_unavailable(monkeypatch):
    import datasets

    monkeypatch.delenv("HF_HUB_OFFLINE")
    monkeypatch.delenv("HF_DATASETS_OFFLINE")
    monkeypatch.setattr(loading, "hub_unreachable_reason", lambda timeout=3.0: None)

    def boom(*a, **k):
        raise ConnectionError("Couldn't reach 'x' on the Hub")

    monkeypatch.setattr(datasets, "load_dataset", boom)
    with pytest.raises(DataUnavailable, match="ConnectionError: Couldn't reach"):
        loading.load_hub("x/y", None, "test")


def test_source_validation(tmp_path):
    with pytest.raises(ValueError, match="source"):
        GSM8K(source="web").samples()
    with pytest.raises(ValueError, match="needs dataset.path"):
        GSM8K(source="path").samples()
    with pytest.raises(ValueError, match="source"):
        HumanEval(source="web")


# ---------------------------------------------------------------- selection and templates
class Numbers(Task):
    name = "numbers"

    def load(self):
        return [Sample(str(i), f"p{i}") for i in range(20)]


def test_selection_first_random_limit():
    assert [s.id for s in Numbers(limit=3).samples()] == ["0", "1", "2"]
    assert len(Numbers().samples()) == 20 and len(Numbers(limit=50).samples()) == 20
    a = [s.id for s in Numbers(limit=5, select="random", seed=1).samples()]
    assert a == [s.id for s in Numbers(limit=5, select="random", seed=1).samples()]  # reproducible
    assert a != [s.id for s in Numbers(limit=5, select="random", seed=2).samples()]
    assert len(set(a)) == 5 and a != ["0", "1", "2", "3", "4"]
    with pytest.raises(ValueError):
        Numbers(select="last")
    with pytest.raises(ValueError):
        Numbers(limit=0)


def test_render_only_touches_known_fields():
    assert render("Q: {question} {x} {{y}}", question="a {b}") == "Q: a {b} {x} {{y}}"


# ---------------------------------------------------------------- chat templates
class FakeChatTokenizer:
    chat_template = "fake"
    bos_token = "<s>"

    def apply_chat_template(self, messages, tokenize, add_generation_prompt):
        assert tokenize is False and add_generation_prompt is True
        return "<s>" + "".join(f"[{m['role']}]{m['content']}" for m in messages) + "[assistant]"


def test_chat_template_wraps_prompts_through_set_tokenizer():
    task = Numbers(limit=2, chat=True, system="Be brief.")
    with pytest.raises(ValueError, match="set_tokenizer"):
        task.samples()
    task.set_tokenizer(FakeChatTokenizer())
    s = task.samples()[1]
    assert s.prompt == "[system]Be brief.[user]p1[assistant]"  # the BOS is left to the encoder
    assert s.meta["raw_prompt"] == "p1" and s.meta["chat"] is True


def test_chat_auto_and_off():
    class Plain:
        chat_template = None

    auto = Numbers(limit=1, chat="auto")
    auto.set_tokenizer(Plain())
    assert auto.samples()[0].prompt == "p0"
    auto.set_tokenizer(FakeChatTokenizer())
    assert auto.samples()[0].prompt == "[user]p0[assistant]"
    on = Numbers(limit=1, chat=True)
    on.set_tokenizer(Plain())
    with pytest.raises(ValueError, match="no|none"):
        on.samples()
    off = Numbers(limit=1)
    off.set_tokenizer(FakeChatTokenizer())
    assert off.samples()[0].prompt == "p0"
    with pytest.raises(ValueError, match="chat"):
        Numbers(chat="yes")


def test_chat_with_a_real_tokenizer(tmp_path):
    from conftest import make_tokenizer

    tok = make_tokenizer()
    tok.chat_template = ("{% for m in messages %}<|{{ m['role'] }}|>{{ m['content'] }}\n{% endfor %}"
                         "{% if add_generation_prompt %}<|assistant|>{% endif %}")
    task = GSM8K(path=str(write(tmp_path / "t.jsonl", GSM_ROWS[:1], "jsonl")), template="{question}", chat=True)
    task.set_tokenizer(tok)
    assert task.samples()[0].prompt == "<|user|>Tom has 3 apples and buys 2. How many?\n<|assistant|>"


# ---------------------------------------------------------------- the shipped configs
CONFIGS = sorted(p for p in DATASETS.glob("*.yaml")  # not those without a source: prompt (one text: test_watch.py),
                 if p.stem not in ("prompt", "chat_categories"))  # chat_categories (shipped: test_instruction_mix.py)


def test_all_datasets_are_shipped():
    names = {p.stem for p in CONFIGS}
    assert {"humaneval", "wikitext", "xsum", "gsm8k", "mmlu", "gsm8k_csd", "mmlu_csd"} <= names


def fixture_path(kind: str, tmp_path: Path) -> str | None:
    if kind == "gsm8k":
        return str(write(tmp_path / "gsm8k.jsonl", GSM_ROWS, "jsonl"))
    if kind == "xsum":
        return str(write(tmp_path / "xsum.parquet", XSUM_ROWS, "parquet"))
    if kind == "mmlu":
        return str(write_mmlu(tmp_path / "mmlu"))
    if kind == "wikitext":
        (tmp_path / "wiki.test.raw").write_text(WIKI_RAW * 3)
        return str(tmp_path / "wiki.test.raw")
    if kind == "jsonl":  # the user's own rows
        return str(write(tmp_path / "rows.jsonl", [{"prompt": f"Q{i}", "answer": f"A{i}"} for i in range(3)], "jsonl"))
    return None  # humaneval: the package


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.stem)
def test_config_keys_are_commented_and_build_the_task(path, tmp_path):
    lines = [line for line in path.read_text().splitlines() if re.match(r"^[a-z]\w*:", line)]  # all but _target_
    assert lines and all("#" in line for line in lines), [line for line in lines if "#" not in line]
    cfg = OmegaConf.load(path)
    kind = path.stem.split("_")[0]
    cfg.path = fixture_path(kind, tmp_path)
    if kind == "wikitext":
        cfg.prefix_words, cfg.min_words = 4, 6
    if kind == "jsonl":  # no default limit or reference: the user's file decides
        cfg.limit, cfg.reference = 2, "answer"
    task = instantiate(cfg, _convert_="all")
    assert isinstance(task, Task) and task.name == (kind if kind != "jsonl" else "jsonl:rows") and task.chat is False
    assert task.limit and task.max_new_tokens > 0 and isinstance(task.stop, list)
    samples = task.samples()
    assert 0 < len(samples) <= task.limit and all(s.prompt and s.reference is not None for s in samples)


def test_csd_prompts_are_the_papers_verbatim():
    gsm = OmegaConf.load(DATASETS / "gsm8k_csd.yaml")
    mmlu = OmegaConf.load(DATASETS / "mmlu_csd.yaml")
    assert gsm.template.replace("{question}", "{}") == "Reason the math question below step by step. Question: {}.\n Answer: "
    assert re.sub(r"\{(question|A|B|C|D)\}", "{}", mmlu.template) == \
        "Question: {}\n(A) {} (B) {} (C) {} (D) {}\n Answer: \n Let's think step by step. "
    assert mmlu.fewshot == 0 and mmlu.header == ""


@pytest.mark.parametrize("name", ["gsm8k", "gsm8k_csd", "mmlu", "mmlu_csd", "xsum", "wikitext", "humaneval"])
def test_configs_compose_in_the_app_with_overrides(name):
    from conftest import compose

    cfg = compose([f"dataset={name}", "dataset.limit=2", "dataset.select=random", "dataset.chat=auto"])
    task = instantiate(cfg.dataset, _convert_="all")
    assert (task.limit, task.select, task.chat) == (2, "random", "auto")
    assert isinstance(task.stop, list)


# ---------------------------------------------------------------- the real files (shared copy)
@needs_shared
@pytest.mark.parametrize("name, n", [("gsm8k", 1319), ("xsum", 1000), ("mmlu", 14042), ("humaneval", 164)])
def test_shared_copy_full_sizes(name, n):
    cfg = OmegaConf.load(DATASETS / f"{name}.yaml")
    cfg.limit = None
    if name == "mmlu":
        cfg.fewshot = 0
    samples = instantiate(cfg, _convert_="all").samples()
    assert len(samples) == n and len({s.id for s in samples}) == n


@needs_shared
def test_shared_gsm8k_references_are_numbers():
    samples = GSM8K(limit=None).samples()
    assert samples[0].reference == "18" and all(s.reference is not None for s in samples)
    assert all(s.meta["solution"].split("####")[-1].strip().replace(",", "") == s.reference for s in samples)


@needs_shared
def test_shared_mmlu_all_subjects_with_five_shots():
    task = MMLU(limit=None, fewshot=5, subjects="all")
    samples = task.samples()
    assert {s.meta["subject"] for s in samples} == set(SUBJECTS) and len(SUBJECTS) == 57
    first = samples[0]
    assert first.id == "abstract_algebra/0" and first.prompt.count("\nAnswer: ") == 5
    assert all(s.reference in "ABCD" for s in samples)


@needs_shared
def test_shared_wikitext_paragraphs():
    samples = WikiText(limit=None).samples()
    assert len(samples) > 1000
    s = samples[0]
    assert s.id == "wikitext/0" and s.prompt.startswith("Robert Boulter is an English film")
    assert len(s.prompt.split()) == 32 and s.prompt + s.reference == s.meta["paragraph"]


@needs_shared
def test_shared_xsum_prompt_and_reference():
    s = XSum(limit=1).samples()[0]
    assert s.prompt.startswith("Article: The owners said their planned")
    assert s.reference.startswith("Proposals for an indoor water park")


@needs_shared
def test_random_selection_on_real_data_is_stable():
    a = [s.id for s in GSM8K(limit=5, select="random", seed=3).samples()]
    assert a == [s.id for s in GSM8K(limit=5, select="random", seed=3).samples()]
    assert a != [f"gsm8k/{i}" for i in range(5)]
