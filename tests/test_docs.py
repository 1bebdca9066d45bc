"""Every shell command in the README and in docs/ runs: each ```bash block is one test.

Blocks are found with Sybil's Markdown lexer and run with bash (`set -e`, so every line of a block
must succeed), in order, in one working folder per page that holds links to the repository's files
(a page's later block can use what an earlier one wrote, as a reader following it would). Each
block runs with SPECEXP_OVERRIDES (docs/testing.md) so that a documented study runs in seconds:
`specexp` appends these overrides to its command line. HTML comments right above a block steer it:

    <!-- doctest: slow -->                       run by `make test-all` only
    <!-- doctest: skip REASON -->                never run (the reason is shown)
    <!-- doctest: needs PATH ... -->             skip unless every PATH exists (relative to the repository)
    <!-- doctest: env NAME=VALUE ... -->         extra environment (shell words), e.g. other overrides

TARGET and DRAFTER, which docs/own-pair.md asks the reader to set, are the tiny pair's folders
unless the environment sets them.
"""
from __future__ import annotations

import os
import re
import shlex
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from sybil import Document
from sybil.parsers.markdown.lexers import FencedCodeBlockLexer

from conftest import ROOT

PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]
# The README and the how-to guides run here, the reference and results pages in
# tests/test_docs_reference.py: two files, so that `make test`'s workers share them.
GUIDES = [ROOT / "README.md", *(ROOT / "docs" / f"{name}.md" for name in (
    "own-pair", "paper-tables", "add-a-strategy", "watch", "your-prompts", "smollm2", "setup"))]
# What every documented command runs with: eight new tokens, one timed repeat (a page's `env`
# directive adds `dataset.limit=N` where a command would decode many samples; `dataset=prompt` has no limit).
OVERRIDES = "max_new_tokens=8 timing.repeats=1"
DIRECTIVE = re.compile(r"^<!--\s*doctest:\s*(\w+)\s*(.*?)\s*-->$")
TIMEOUT_S = 900


def blocks(page: Path) -> list[tuple[int, str, dict]]:
    """(line, source, directives) of every ```bash block of `page`; directives are the
    `<!-- doctest: ... -->` lines directly above the block."""
    text = page.read_text()
    doc = Document(text, str(page))
    out = []
    for region in FencedCodeBlockLexer(language="bash")(doc):
        line = text.count("\n", 0, region.start) + 1
        directives: dict[str, str] = {}
        above = text[:region.start].rstrip("\n").split("\n")
        while above and DIRECTIVE.match(above[-1].strip()):
            name, arg = DIRECTIVE.match(above.pop().strip()).groups()
            directives[name] = arg
        out.append((line, str(region.lexemes["source"]), directives))
    return out


def params(pages: list[Path]):
    for page in pages:
        rel = page.relative_to(ROOT)
        for line, source, d in blocks(page):
            marks = [pytest.mark.slow] if "slow" in d else []
            if "skip" in d:
                marks.append(pytest.mark.skip(reason=f"{rel}:{line}: {d['skip'] or 'not run'}"))
            missing = [p for p in shlex.split(d.get("needs", "")) if not (ROOT / os.path.expanduser(p)).exists()]
            if missing:
                marks.append(pytest.mark.skip(reason=f"{rel}:{line} needs {' '.join(missing)}"))
            yield pytest.param(rel, line, source, d.get("env", ""), marks=marks, id=f"{rel}:{line}")


_WORKDIRS: dict[Path, Path] = {}


def _checkout_entries() -> list[Path]:
    """The repository's own top-level files and folders (as git tracks them) and its .venv: not
    what a command or a person left there (a `my_conf/` linked in would be written through), and not
    outputs/, where the commands write their runs."""
    try:
        tracked = subprocess.run(["git", "ls-files"], cwd=ROOT, capture_output=True, text=True, check=True).stdout
        names = ({line.split("/", 1)[0] for line in tracked.splitlines()} | {".venv"}) - {"outputs"}
    except (OSError, subprocess.CalledProcessError):  # not a git checkout: everything but outputs
        names = {p.name for p in ROOT.iterdir()} - {"outputs", "sweeps", ".git", ".pytest_cache"}
    return [ROOT / n for n in sorted(names) if (ROOT / n).exists()]


def workdir(page: Path, tmp_path_factory) -> Path:
    """One folder per page, with links to the repository's files: commands run as from a checkout,
    and what they write (outputs/, sweeps/, my_conf/) stays out of the repository."""
    if page not in _WORKDIRS:
        d = tmp_path_factory.mktemp(re.sub(r"\W", "_", str(page)))
        for entry in _checkout_entries():
            (d / entry.name).symlink_to(entry)
        _WORKDIRS[page] = d
    return _WORKDIRS[page]


def run_block(page, line, source, env, tmp_path_factory):
    bin_dir = Path(sys.executable).parent
    environ = {**os.environ, "PATH": f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}",
               "VENV": str(bin_dir.parent), "SPECEXP_OVERRIDES": OVERRIDES,
               "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
    tiny = Path(os.environ.get("SPECEXP_CACHE", Path.home() / ".cache" / "specexp")) / "tiny-v1"
    for name, role in (("TARGET", "target"), ("DRAFTER", "drafter")):  # docs/own-pair.md: "set TARGET and DRAFTER"
        environ.setdefault(name, str(tiny / role))
    environ.update(dict(w.split("=", 1) for w in shlex.split(env)))
    # its own process group: a block past the timeout is ended with every process it started
    proc = subprocess.Popen(["bash", "-e", "-o", "pipefail", "-c", source], cwd=workdir(page, tmp_path_factory),
                            env=environ, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True)
    try:
        out, _ = proc.communicate(timeout=TIMEOUT_S)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, _ = proc.communicate()
        pytest.fail(f"{page}:{line} ran past {TIMEOUT_S} s (mark it slow?):\n{source}\n{out[-4000:]}")
    done = subprocess.CompletedProcess(proc.args, proc.returncode, out, "")
    assert done.returncode == 0, (f"{page}:{line} failed (exit {done.returncode}):\n{source}\n"
                                  f"--- output (last 4000 characters) ---\n{(done.stdout + done.stderr)[-4000:]}")


@pytest.mark.parametrize("page,line,source,env", list(params(GUIDES)))
def test_documented_command_runs(page, line, source, env, tmp_path_factory):
    run_block(page, line, source, env, tmp_path_factory)


def test_every_page_is_run_by_one_of_the_two_files():
    from test_docs_reference import REFERENCE

    assert sorted(GUIDES + REFERENCE) == sorted(PAGES) and not set(GUIDES) & set(REFERENCE)


def test_directives_are_read():
    """The lexer finds blocks and the comments above them (a page written with a typo in a
    directive would otherwise run a slow command in the fast suite)."""
    page = Path(__file__).with_name("data") / "doc_directives.md"
    found = blocks(page)
    assert [(d, s.strip()) for _, s, d in found] == [
        ({}, "echo plain"),
        ({"slow": ""}, "echo slow"),
        ({"skip": "needs a GPU", "env": "A=1 B='x y'"}, "echo skipped"),
    ]


def test_specexp_overrides_go_after_the_commands_own_and_win(monkeypatch):
    """SPECEXP_OVERRIDES is appended after the command's own overrides (Hydra: the last value of a
    key wins) and before a flag's value such as `--cfg job`, which takes no override after it."""
    from specexp.experiment.run import cli_overrides

    monkeypatch.setenv("SPECEXP_OVERRIDES", "model_pair=tiny 'dataset.limit=2'")
    assert cli_overrides(["experiment=x", "dataset.limit=100", "--cfg", "job"]) == [
        "experiment=x", "dataset.limit=100", "model_pair=tiny", "dataset.limit=2", "--cfg", "job"]
    assert cli_overrides(["-m"]) == ["model_pair=tiny", "dataset.limit=2", "-m"]
    monkeypatch.delenv("SPECEXP_OVERRIDES")
    assert cli_overrides(["dataset.limit=3"]) == ["dataset.limit=3"]


def test_specexp_overrides_win_over_an_experiments_model_pair(monkeypatch):
    """A recipe written for hub models composes on the tiny pair under the overrides."""
    from conftest import compose
    from specexp.experiment.run import cli_overrides

    monkeypatch.setenv("SPECEXP_OVERRIDES", "model_pair=tiny dataset.limit=2")
    cfg = compose(cli_overrides(["experiment=entropy_thesis_opt", "dataset.limit=100"]))
    assert cfg.model_pair.name == "tiny" and cfg.dataset.limit == 2


@pytest.mark.parametrize("experiment", sorted(p.stem for p in (ROOT / "conf" / "experiment").glob("*.yaml")))
def test_every_experiment_runs_on_the_tiny_pair_under_the_overrides(experiment, monkeypatch):
    """docs/paper-tables.md: `SPECEXP_OVERRIDES="model_pair=tiny ..."` puts any recipe on the tiny
    pair. That holds only while an experiment picks its models through its model_pair config and
    names none itself (a name set in the experiment would win over the tiny pair's)."""
    from conftest import compose
    from specexp.experiment.run import cli_overrides

    monkeypatch.setenv("SPECEXP_OVERRIDES", "model_pair=tiny")
    cfg = compose(cli_overrides([f"experiment={experiment}"]))
    assert cfg.model_pair.name == "tiny"
    assert cfg.model_pair.target.name.endswith("tiny-v1/target") and cfg.model_pair.drafter.name.endswith("tiny-v1/drafter")
