"""Watching one generation (issue 8): `specexp prompt=...` prints the generation with its draft
tokens marked (specexp/experiment/watch.py), and specexp-console (specexp/experiment/console.py) changes settings
between prompts without reloading the pair.

Output that is not a terminal is plain text: `== title ==` headers, `-- ` statistics lines, the
console echoes each input line as `> line`, and a marked generation shows accepted drafts as is,
rejected drafts as [-...-] and the target's own tokens as {+...+}."""
from __future__ import annotations

import io
import json
import os
import re
import subprocess
import sys

import pytest
import torch
from conftest import ROOT, compose, make_tokenizer, pair_overrides

from specexp.experiment import watch
from specexp.core.decode import Generation

KYIV = "Towering over Kyiv for six decades, Hotel Ukraine has witnessed"  # the prompt (a comma!)


def strip(marked: str) -> str:
    """The output text of a marked generation: rejected spans dropped, target markers removed."""
    return re.sub(r"\{\+(.*?)\+\}", r"\1", re.sub(r"\[-.*?-\]", "", marked, flags=re.S), flags=re.S)


def sections(text: str) -> list[tuple[str, str, str]]:
    """(title, body, statistics line) for each `== title ==` of plain output: the body is the
    lines up to the next header, `-- ` statistics line or `> ` echo of a console input line."""
    out, open_ = [], False
    lines = text.split("\n")  # not splitlines(): a generation may hold other line breaks
    for line in lines[:-1] if text.endswith("\n") else lines:
        head = re.fullmatch(r"== (.*) ==", line)
        if head:
            out.append([head.group(1), [], ""])
            open_ = True
        elif open_ and line.startswith("-- "):
            out[-1][2], open_ = line[3:], False
        elif open_ and line.startswith("> "):
            open_ = False
        elif open_:
            out[-1][1].append(line)
    return [(t, "\n".join(b), s) for t, b, s in out]


def section(text: str, prefix: str) -> tuple[str, str, str]:
    (found,) = [s for s in sections(text) if s[0].startswith(prefix)]
    return found


def cli(*args: str, stdin: str | None = None, exe: str = "specexp") -> subprocess.CompletedProcess:
    """The installed console script, one torch thread (the machine is shared), offline."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    proc = subprocess.run([os.path.join(os.path.dirname(sys.executable), exe), *args], input=stdin,
                          capture_output=True, text=True, env=env, cwd=ROOT, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return proc


# ---- the marking itself -----------------------------------------------------------------------

def test_spans_follow_the_rounds_exactly():
    """A hand-made decode: a rejection, a fully accepted draft (bonus token), a round without a
    draft, and a stop string that cuts the last round inside its accepted drafts."""
    tok = make_tokenizer()
    ids = tok("def add(a, b):\n    return a + b\n")["input_ids"]
    assert len(ids) >= 8
    x, y = tok("print")["input_ids"][0], tok("class")["input_ids"][0]
    gen = Generation(tokens=ids[:8], drafted=[3, 2, 0, 4], accepted=[2, 2, 0, 4], emitted=[3, 3, 1, 1],
                     rejected=[[x], [], [], []])
    d = lambda a, b: watch.decode(tok, ids[a:b])  # noqa: E731 (the tokenizer spells these ids context-free)
    expected = [(watch.ACCEPTED, d(0, 2)), (watch.REJECTED, watch.decode(tok, [x])), (watch.TARGET, d(2, 3)),
                (watch.ACCEPTED, d(3, 5)), (watch.TARGET, d(5, 7)), (watch.ACCEPTED, d(7, 8))]
    assert watch.spans(tok, gen) == expected
    assert strip(watch.plain(expected)) == watch.decode(tok, ids[:8])
    # the rejected drafts are never part of the text, the rest always is, whatever the tokens are
    gen.rejected[0] = [y, x]
    assert "".join(t for k, t in watch.spans(tok, gen) if k != watch.REJECTED) == watch.decode(tok, ids[:8])


def test_colours_on_a_terminal(trained_pair_dir):
    from specexp.experiment.console import Console

    out = io.StringIO()
    console = Console(["max_new_tokens=16"], out=out, color=True)
    gen = console.generate("def add(a, b):")["speculative"]
    text = out.getvalue()
    pieces = watch.spans(console.pair.tokenizer, gen)
    assert {k for k, _ in pieces} == {watch.ACCEPTED, watch.REJECTED, watch.TARGET}
    assert re.search(r"\x1b\[(\d+;)*9(;\d+)*m", text)  # strike-through: the rejected drafts
    assert "[-" not in text and "{+" not in text  # colours, not markers
    shown = "".join(t.replace("\n", "↵") if k == watch.REJECTED else t for k, t in pieces)  # visible line breaks
    assert shown in re.sub(r"\x1b\[[0-9;]*m", "", text)


# ---- specexp prompt=... -----------------------------------------------------------------------

def test_prompt_run_marks_the_drafts_and_reproduces_the_run(trained_pair_dir, tmp_path):
    """The issue's command as the shell hands it over (quotes gone, a comma in the text): the marked
    output, with the markers stripped and re-tokenized, is exactly the run's token sequence. (The
    tiny pair writes ASCII Python, whose byte-level BPE encoding is canonical: decode then encode
    gives the ids back, which the test checks on the raw tokens first.)"""
    proc = cli(f"prompt={KYIV}", "max_new_tokens=48", "strategy=speculative", f"hydra.run.dir={tmp_path}")
    m = json.loads((tmp_path / "metrics.json").read_text())
    assert m["status"] == "ok" and m["dataset"]["name"] == "prompt" and m["config"]["prompt"] == KYIV
    assert "dataset=prompt" in m["overrides"] and m["config"]["max_new_tokens"] == 48
    tokens = m["samples"][0]["tokens"]
    assert len(tokens) == 48

    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(trained_pair_dir / "target")
    assert tok(watch.decode(tok, tokens), add_special_tokens=False)["input_ids"] == tokens  # canonical
    assert section(proc.stdout, "prompt")[1] == KYIV
    title, marked, stats = section(proc.stdout, "speculative: ")
    assert "[-" in marked and "{+" in marked  # rejected drafts and the target's own tokens are both shown
    assert not re.search(r"\[-|-\]|\{\+|\+\}", watch.decode(tok, tokens))  # so stripping is unambiguous
    assert tok(strip(marked), add_special_tokens=False)["input_ids"] == tokens
    assert strip(marked) == m["samples"][0]["text"]
    assert f"acceptance {m['acceptance_rate']:.2f}" in stats
    assert f"mean accepted length {m['mean_accepted_length']:.2f}" in stats
    assert "tokens/s" in stats and "speedup" in stats and "output identical" in stats
    title, text, _ = section(proc.stdout, "autoregressive")
    assert "identical" in title and text == strip(marked)  # greedy: the target alone writes the same
    assert "speedup (throughput ratio" in proc.stdout  # then the usual summary


def test_prompt_text_is_taken_literally_and_needs_the_prompt_dataset(random_pair_dir):
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from omegaconf import OmegaConf

    from specexp.experiment import validate
    from specexp.experiment.run import cli_overrides, decode_dataset

    parser = OverridesParser.create()
    for text in [KYIV, "it's ${x}, a \\'trap\\", "def f(a, b):\n    return a['k']  # \\", "a=b [1] {c: d}"]:
        args = cli_overrides([f"prompt={text}"])
        assert args[-1] == "dataset=prompt"
        value = parser.parse_override(args[0]).value()
        assert OmegaConf.create({"prompt": value}).prompt == text
    assert cli_overrides(["prompt=x", "dataset=wikitext"]) == ["prompt='x'", "dataset=wikitext"]
    cfg = compose([*pair_overrides(random_pair_dir), "prompt='hello'", "dataset=wikitext"])
    with pytest.raises(validate.ConfigError, match="prompt= runs the prompt dataset"):
        validate.check(OmegaConf.masked_copy(cfg, [k for k in cfg if k != "hydra"]))
    # dataset=prompt with dataset.text, and the top-level budget
    cfg = compose([*pair_overrides(random_pair_dir), "dataset=prompt", "dataset.text='def f('", "max_new_tokens=5",
                   "warmup=0", "dataset.show=false"])
    result = decode_dataset(cfg)
    assert result["dataset"]["name"] == "prompt" and result["samples"][0]["new_tokens"] <= 5
    assert result["all_match_baseline"] is True


# ---- the console --------------------------------------------------------------------------------

SCRIPT = """\
:help
:max 12
def add(a, b):
:set strategy.gamma=0
:set strategy.gamma=2
:strategy entropy_static
:set strategy.tau=1.5 strategy.max_len=6
:set strategy.nope=1
:bogus
:max many
:set model_pair.dtype=float16
:chat on
:compare on
def add(a, b):
:entropy on
:sampling temperature=0.7 top_k=50
def add(a, b):
:reset
:quit
def never_read(
"""


def chunks(transcript: str) -> list[tuple[str, str]]:
    """(input line, what the console printed for it), in order."""
    parts = re.split(r"^> (.*)$", transcript, flags=re.M)
    return list(zip(parts[1::2], parts[2::2]))


def test_console_scripted_session(trained_pair_dir):
    from specexp.experiment.console import Console

    out = io.StringIO()
    console = Console([], out=out, color=False)
    target, drafter = console.pair.target, console.pair.drafter
    console.run(io.StringIO(SCRIPT))
    steps = chunks(out.getvalue())
    said = dict(steps)
    assert [line for line, _ in steps] == SCRIPT.splitlines()[:-1]  # all read, in order, up to :quit

    tok = console.pair.tokenizer
    prompt = torch.tensor([tok("def add(a, b):")["input_ids"]])

    def greedy(model, n=12) -> str:  # transformers' own greedy decode: the reference
        ids = model.generate(prompt, max_new_tokens=n, do_sample=False, pad_token_id=tok.eos_token_id)
        return watch.decode(tok, ids[0, prompt.shape[1]:].tolist())

    assert ":strategy NAME" in said[":help"] and ":quit" in said[":help"]
    assert "max_new_tokens: 12" in said[":max 12"]
    first = steps[2][1]  # the first prompt: speculative (gamma 4), greedy, 12 tokens
    title, marked, stats = section(first, "speculative")
    assert strip(marked) == greedy(target) and stats.startswith("12 tokens")
    # bad commands print an error and change nothing
    assert "error:" in said[":set strategy.gamma=0"] and "gamma must be >= 1" in said[":set strategy.gamma=0"]
    assert "strategy: speculative gamma=2" in said[":set strategy.gamma=2"]
    assert "strategy: entropy_static" in said[":strategy entropy_static"]
    assert "overrides: max_new_tokens=12 strategy=entropy_static" in said[":strategy entropy_static"]  # gamma=2 dropped
    assert "tau=1.5 max_len=6" in said[":set strategy.tau=1.5 strategy.max_len=6"]
    for bad, why in [(":set strategy.nope=1", "nope"), (":bogus", "unknown command"), (":max many", "usage: :max"),
                     (":set model_pair.dtype=float16", "pair is loaded once"), (":chat on", "chat template")]:
        assert said[bad].strip().startswith("error:") and why in said[bad], (bad, said[bad])
    settings = said[":compare on"]  # the settings survived the bad commands
    assert "tau=1.5 max_len=6" in settings and "max_new_tokens: 12" in settings and "chat: off" in settings
    assert "compare: on" in settings

    # :compare: the drafter alone, the target alone and the strategy, on the same prompt
    compared = steps[13][1]
    assert section(compared, "drafter alone")[1] == greedy(drafter)
    _, alone, _ = section(compared, "target alone")
    assert alone == greedy(target)
    title, marked, stats = section(compared, "entropy_static")
    assert strip(marked) == alone and "output identical" in stats and "speedup" in stats

    # :entropy and sampling: one row per drafted token
    assert "sampling: temperature=0.7 top_k=50 top_p=1.0" in said[":sampling temperature=0.7 top_k=50"]
    sampled = steps[16][1]
    _, marked, stats = section(sampled, "entropy_static")
    assert stats.startswith("12 tokens")
    table = section(sampled, "per drafted token")[1].splitlines()
    drafted = int(re.search(r"/(\d+) drafts\)", stats).group(1))
    assert table[0].split()[:3] == ["round", "pos", "token"] and len(table) == 1 + drafted
    assert {row.split()[-1] for row in table[1:]} <= {"yes", "no"}

    # :reset goes back to the start; the pair was loaded once
    assert "strategy: speculative gamma=4" in said[":reset"] and "overrides: (none)" in said[":reset"]
    assert "sampling: greedy" in said[":reset"] and console.compare is False and console.entropy is False
    assert console.pair.target is target and console.proposer.lm.model is drafter


def test_specexp_console_subcommand_reads_stdin(trained_pair_dir):
    proc = cli("console", "strategy.gamma=3", stdin=":max 6\n:oops\ndef f(x):\n:quit\n")
    out = proc.stdout
    assert "strategy: speculative gamma=3" in out and "error: ValueError: unknown command :oops" in out
    assert section(out, "speculative")[2].startswith("6 tokens")
    assert "specexp-console" in cli("--help", exe="specexp-console").stdout


def test_console_chat_template(tmp_path):
    """:chat on wraps each prompt in the tokenizer's template (shown before the generation), with
    the system turn set by :set dataset.system=...; :chat off feeds the text as is."""
    from conftest import save_pair
    from transformers import AutoTokenizer

    from specexp.experiment.console import Console

    root = save_pair(tmp_path / "pair")
    for role in ("target", "drafter"):
        tok = AutoTokenizer.from_pretrained(root / role)
        tok.chat_template = ("{% for m in messages %}<|{{ m['role'] }}|>{{ m['content'] }}\n{% endfor %}"
                             "{% if add_generation_prompt %}<|assistant|>{% endif %}")
        tok.save_pretrained(root / role)
    out = io.StringIO()
    console = Console(pair_overrides(root), out=out, color=False)
    console.run([":chat on", ":max 4", "hi", ":set dataset.system='Be brief.'", "hi", ":chat off", "hi"])
    steps = chunks(out.getvalue())
    assert "chat: on" in steps[0][1]
    assert section(steps[2][1], "prompt (chat template)")[1] == "<|user|>hi\n<|assistant|>"
    assert section(steps[4][1], "prompt (chat template)")[1] == "<|system|>Be brief.\n<|user|>hi\n<|assistant|>"
    assert not [s for s in sections(steps[6][1]) if s[0].startswith("prompt")]
    assert all(section(steps[i][1], "speculative")[2].startswith("4 tokens") for i in (2, 4, 6))


def test_console_takes_specexp_overrides(trained_pair_dir, monkeypatch):
    """The console reads its overrides as `specexp` does: SPECEXP_OVERRIDES last (docs/testing.md),
    so a console recipe written for a hub pair runs on the tiny pair too."""
    monkeypatch.setenv("SPECEXP_OVERRIDES", "strategy=autoregressive")
    proc = cli("console", stdin=":quit\n", exe="specexp")
    assert "strategy autoregressive;" in proc.stdout and "SPECEXP_OVERRIDES appends strategy=autoregressive" in proc.stderr
