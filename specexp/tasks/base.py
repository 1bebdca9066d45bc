from __future__ import annotations

import random
from dataclasses import dataclass, field, replace
from typing import Any

SELECTIONS = ("first", "random", "stratified")
TRUNCATE = ("auto", "start", "end")  # dataset.truncate: which part of a too-long prompt is kept


@dataclass
class Sample:
    id: str  # stable id within the dataset (e.g. "HumanEval/0")
    prompt: str  # the text fed to the model (template already applied)
    reference: Any = None  # what scoring compares against (tests, summary, answer...)
    meta: dict = field(default_factory=dict)
    category: str | None = None  # a group for per-category breakdowns (Spec-Bench's categories), or None
    cut_span: tuple[int, int] | None = None  # characters of `prompt` a too-long prompt may shorten (the
    #   document inside the template, whose end is cut to keep the template whole), or None (cut the prompt)


class Task:
    """A dataset as the decoder sees it. Subclasses implement `load()` (all samples, in a stable
    order) and optionally `score()`; selection (limit, seed, first/random/stratified) is shared here."""

    name = "task"
    version = "0"  # bump when prompts or scoring change; saved with the results
    keep = "end"  # the part of a too-long prompt kept when dataset.truncate=auto: "end" (what the model
    #   continues) or "start"; specexp/models/prompt_ids.py cuts the prompt (a Sample's cut_span: only that part)
    cut_part = "document"  # what a Sample's cut_span holds, as the run's summary names it

    def __init__(self, limit: int | None = None, seed: int = 0, select: str = "first",
                 max_new_tokens: int = 128, stop: list[str] | None = None,
                 max_prompt_tokens: int | str | None = "auto", truncate: str = "auto",
                 chat: bool | str = False, system: str | None = None):
        if select not in SELECTIONS:
            raise ValueError(f"dataset.select must be one of {', '.join(SELECTIONS)}, got {select!r}")
        if limit is not None and limit < 1:
            raise ValueError(f"dataset.limit must be >= 1 or null, got {limit}")
        self.limit = limit  # how many samples (null = all)
        self.seed = seed  # seed of the random selection
        self.select = select  # "first" N, "random" N, or "stratified": N split evenly across categories
        self.max_new_tokens = max_new_tokens  # generation budget per sample
        self.stop = list(stop or [])  # stop strings (generation ends once one appears)
        if not (max_prompt_tokens is None or max_prompt_tokens == "auto"
                or (isinstance(max_prompt_tokens, int) and not isinstance(max_prompt_tokens, bool) and max_prompt_tokens >= 1)):
            raise ValueError(f"dataset.max_prompt_tokens must be auto, an integer >= 1 or null, got {max_prompt_tokens!r}")
        # cut longer prompts to N tokens: "auto" = what the run's models can read with max_new_tokens after
        # it; null = never cut (a prompt that does not fit fails before decoding)
        self.max_prompt_tokens = max_prompt_tokens
        if truncate not in TRUNCATE:
            raise ValueError(f"dataset.truncate must be one of {', '.join(TRUNCATE)}, got {truncate!r}")
        self.truncate = truncate  # which part of a cut prompt is kept: start | end | auto (the task's `keep`)
        if chat not in (False, True, "auto"):
            raise ValueError(f"dataset.chat must be false, true or auto, got {chat!r}")
        self.chat = chat  # wrap prompts in the tokenizer's chat template: False | True | "auto" (if it has one)
        self.system = system  # system message when chat is on (null = none)
        self.tokenizer = None  # set by the run through set_tokenizer() (needed for chat)

    @property
    def keep_side(self) -> str:
        """The part of a too-long prompt that is kept: "start" or "end"."""
        return self.keep if self.truncate == "auto" else self.truncate

    def set_tokenizer(self, tokenizer) -> None:
        """The run hands over the target's tokenizer before `samples()` (used for chat templates)."""
        self.tokenizer = tokenizer

    def chat_prompt(self, text: str) -> str | None:
        """`text` as the user turn of the tokenizer's chat template, ending with the assistant's
        generation prompt; None when chat is off (or "auto" and the tokenizer has no template).
        A leading BOS token is dropped from the text: the run's encoding adds it again."""
        if not self.chat:
            return None
        tok = self.tokenizer
        if tok is None or not getattr(tok, "chat_template", None):
            if self.chat == "auto":
                return None
            raise ValueError("dataset.chat=true needs a tokenizer with a chat template: "
                             + ("the run must call task.set_tokenizer(tokenizer) before task.samples()"
                                if tok is None else f"{type(tok).__name__} has none (use chat=auto or false)"))
        messages = ([{"role": "system", "content": self.system}] if self.system else [])
        messages.append({"role": "user", "content": text})
        out = tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        bos = getattr(tok, "bos_token", None)
        if bos and out.startswith(bos):
            out = out[len(bos):]
        return out

    def load(self) -> list[Sample]:
        raise NotImplementedError

    def samples(self) -> list[Sample]:
        items = self.load()
        if not items:
            raise ValueError(f"dataset {self.name!r} has no samples")
        if self.select == "random":
            items = random.Random(self.seed).sample(items, min(self.limit or len(items), len(items)))
        elif self.select == "stratified":
            items = stratified(items, self.limit, self.seed)
        elif self.limit is not None:
            items = items[: self.limit]
        if self.chat:
            wrapped = []
            for s in items:
                p = self.chat_prompt(s.prompt)
                if p is None:
                    wrapped.append(s)
                    continue
                at = p.find(s.prompt)  # the cut span moves with the text inside the chat template
                span = (at + s.cut_span[0], at + s.cut_span[1]) if s.cut_span and at >= 0 else None
                wrapped.append(replace(s, prompt=p, cut_span=span, meta={**s.meta, "raw_prompt": s.prompt, "chat": True}))
            items = wrapped
        return items

    def postprocess(self, sample: Sample, completion: str) -> str:
        """The completion as scored: cut at the first stop string."""
        cut = min((i for i in (completion.find(s) for s in self.stop) if i >= 0), default=len(completion))
        return completion[:cut]

    def score(self, samples: list[Sample], completions: list[str]) -> dict:
        """Quality metrics for the run (e.g. {"pass@1": 0.12}); {} when the task has none.
        `completions` are what `postprocess` returned, in the order of `samples`. Flat keys of
        numbers, plus optionally "per_sample": a list of dicts, each with the sample's "id"."""
        return {}


def check_completions(samples: list[Sample], completions: list[str]) -> None:
    """A task's `score` needs one completion per sample, in the same order."""
    if len(samples) != len(completions):
        raise ValueError(f"{len(samples)} samples but {len(completions)} completions")


def stratified(items: list[Sample], limit: int | None, seed: int = 0) -> list[Sample]:
    """`limit` samples split evenly across categories: each category's samples in a seeded random
    order, then taken one per category in turn (categories in order of first appearance) until
    `limit`; a category that runs out drops from the turn. The result keeps the dataset's order."""
    groups: dict[str, list[int]] = {}
    for i, s in enumerate(items):
        if s.category is None:
            raise ValueError(f"dataset.select=stratified needs a category on every sample; sample {s.id!r} has "
                             "none (set dataset.category to the field that holds it, or use select=first/random)")
        groups.setdefault(s.category, []).append(i)
    rng = random.Random(seed)
    queues = [rng.sample(idx, len(idx)) for idx in groups.values()]
    n = min(limit or len(items), len(items))
    chosen: list[int] = []
    while len(chosen) < n:
        for q in queues:
            if q and len(chosen) < n:
                chosen.append(q.pop(0))
    return [items[i] for i in sorted(chosen)]
