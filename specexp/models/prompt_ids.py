"""From text to the token ids the decode loop starts from, and the ids that end a generation.

A prompt longer than `dataset.max_prompt_tokens` is cut to fit (`fit_prompts`). The default,
`auto`, is the most prompt tokens every model of the run can read with `max_new_tokens` after
them (each model's config position limit); an integer is used as given; null never cuts (and a
prompt that does not fit then fails before decoding: specexp.models.cached_lm.check_context). Which part is kept
is the task's choice (`Task.keep`, overridden by `dataset.truncate`): the end (what the model
continues) or the start; a task that marks its document inside the template (`Sample.cut_span`,
XSum's article) keeps its template whole and cuts the document's end."""
from __future__ import annotations

from dataclasses import dataclass

import torch


def _is_auto(max_prompt_tokens) -> bool:
    return isinstance(max_prompt_tokens, str) and max_prompt_tokens == "auto"


def encode_prompt(tokenizer, text: str, max_prompt_tokens: int | str | None, device) -> torch.Tensor:
    """`text`'s ids, only the last `max_prompt_tokens` of them when that is an integer ("auto" needs
    the models: `fit_prompts` resolves it; here it cuts nothing and the decode's own context check
    refuses a prompt that does not fit)."""
    ids = tokenizer(text)["input_ids"]
    if max_prompt_tokens and not _is_auto(max_prompt_tokens):
        ids = ids[-max_prompt_tokens:]  # keep the end of the prompt: it is what the model continues
    return torch.tensor(_not_empty(tokenizer, ids), device=device)


def _not_empty(tokenizer, ids: list[int]) -> list[int]:
    if ids:
        return ids
    if tokenizer.bos_token_id is None:
        raise ValueError("a prompt encodes to no tokens and the tokenizer has no BOS token")
    return [tokenizer.bos_token_id]


# ---- fitting prompts to the models' context --------------------------------------------------

def room(lm, max_new_tokens: int) -> int | None:
    """The most prompt tokens `lm` can read with `max_new_tokens` generated after them (the largest n
    with lm.positions_needed(n, max_new_tokens) <= its position limit; 0 when not even one fits);
    None when the model states no limit. positions_needed grows with n: a binary search."""
    limit = lm.max_positions
    if limit is None:
        return None
    lo, hi = 0, limit  # positions_needed(n, .) >= n, so n <= limit
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if lm.positions_needed(mid, max_new_tokens) <= limit:
            lo = mid
        else:
            hi = mid - 1
    return lo


@dataclass
class Budget:
    """The prompt length a run allows and where it comes from."""

    max_tokens: int | None  # the most prompt tokens kept; None = no cut
    setting: int | str | None  # dataset.max_prompt_tokens as configured: "auto", an integer or None
    role: str | None = None  # auto: the model whose context is the tightest ("target", "drafter", ...)
    context: int | None = None  # auto: that model's position limit


def budget(max_prompt_tokens: int | str | None, lms: dict, max_new_tokens: int) -> Budget:
    """dataset.max_prompt_tokens resolved against the run's models (role -> CachedLM): "auto" is the
    tightest model's room (None when no model states a limit, or when not even one prompt token
    fits: then nothing is cut and check_context explains why the run cannot start)."""
    if not _is_auto(max_prompt_tokens):
        return Budget(max_prompt_tokens, max_prompt_tokens)
    rooms = [(n, role, lm.max_positions) for role, lm in lms.items() if (n := room(lm, max_new_tokens)) is not None]
    if not rooms:
        return Budget(None, "auto")
    n, role, context = min(rooms, key=lambda r: r[0])
    return Budget(n if n >= 1 else None, "auto", role, context)


@dataclass
class Fitted:
    """One prompt as the decode reads it."""

    ids: list[int]
    original: int  # its length in tokens before any cut
    kept: str | None = None  # None: not cut; "start" / "end": the side kept
    part: str | None = None  # what was shortened: "prompt" (its tokens) or the task's document ("article")


def _ids(tokenizer, text: str, **kw) -> list[int]:
    """`text`'s ids, without the tokenizer's warning about a sequence longer than the model reads
    (a too-long prompt is cut here, or refused by check_context, before any model sees it)."""
    return tokenizer(text, verbose=False, **kw)["input_ids"]


def fit_prompt(tokenizer, text: str, max_tokens: int | None, keep: str,
               span: tuple[int, int] | None = None, part: str = "document") -> Fitted:
    """`text` encoded, cut to at most `max_tokens` tokens when longer, keeping its `keep` side
    ("start" | "end"). keep="start" with a `span` (characters of `text` that may be shortened, e.g.
    the article inside a summarization template) cuts the span's end so the template around it stays
    whole; when even an empty span leaves too many tokens, the prompt's own first tokens are kept."""
    ids = _ids(tokenizer, text)
    n = len(ids)
    if max_tokens is None or n <= max_tokens:
        return Fitted(_not_empty(tokenizer, ids), n)
    if keep == "end":
        return Fitted(ids[-max_tokens:], n, "end", "prompt")
    if keep != "start":
        raise ValueError(f"dataset.truncate must be start, end or auto, got {keep!r}")
    if span is not None:
        cut = _cut_span(tokenizer, text, span, max_tokens, n)
        if cut is not None:
            return Fitted(cut, n, "start", part)
    return Fitted(ids[:max_tokens], n, "start", "prompt")


def _cut_span(tokenizer, text: str, span: tuple[int, int], max_tokens: int, n: int) -> list[int] | None:
    """The ids of `text` with the end of text[a:b] dropped so the whole is at most `max_tokens`
    tokens; None when it does not fit even with the span empty. The span is cut at its own token
    boundaries; since tokens can merge across the cut, the whole is re-encoded and the cut moved
    until it fits (each step drops at least one more span token)."""
    a, b = span
    head, doc, tail = text[:a], text[a:b], text[b:]
    n_doc, prefix = _prefixes(tokenizer, doc)
    k = max(0, n_doc - (n - max_tokens))  # first guess: drop as many span tokens as the prompt is over
    while k >= 0:
        ids = _ids(tokenizer, head + prefix(k) + tail)
        if len(ids) <= max_tokens:
            return ids
        k -= len(ids) - max_tokens
    return None


def _prefixes(tokenizer, doc: str):
    """(number of tokens of `doc`, k -> the text of its first k tokens) (no special tokens)."""
    if getattr(tokenizer, "is_fast", False):  # character offsets: the prefix is a slice of doc itself
        offsets = tokenizer(doc, add_special_tokens=False, return_offsets_mapping=True, verbose=False)["offset_mapping"]
        return len(offsets), lambda k: doc[: offsets[k - 1][1]] if k else ""
    ids = _ids(tokenizer, doc, add_special_tokens=False)  # a slow tokenizer: decode the first k tokens
    return len(ids), lambda k: tokenizer.decode(ids[:k]) if k else ""


def fit_prompts(tokenizer, samples, task, lms: dict, device) -> tuple[list[torch.Tensor], list[Fitted], dict]:
    """Every sample's prompt cut to the run's budget (task.max_prompt_tokens resolved against `lms`,
    the run's models by role, for task.max_new_tokens); the side kept is `task.keep_side`.
    Returns the id tensors, the per-sample `Fitted`, and the run's record of the fit (metrics.json
    dataset.prompt_fit; the summary line reads it)."""
    b = budget(task.max_prompt_tokens, lms, task.max_new_tokens)
    keep = task.keep_side
    fitted = [fit_prompt(tokenizer, s.prompt, b.max_tokens, keep, getattr(s, "cut_span", None), task.cut_part)
              for s in samples]
    info = {
        "max_prompt_tokens": b.setting,  # as configured
        "max_prompt_tokens_used": b.max_tokens,  # as resolved (None: no cut)
        "keep": keep,
        "context_role": b.role,
        "context_positions": b.context,
        "max_new_tokens": task.max_new_tokens,
        "n_cut": sum(f.kept is not None for f in fitted),
        "parts_cut": sorted({f.part for f in fitted if f.part}),
    }
    return [torch.tensor(f.ids, device=device) for f in fitted], fitted, info


def fit_line(info: dict, n_samples: int) -> str | None:
    """One line for the run's summary when prompts were cut, e.g. "3 of 8 prompts cut to 624 tokens
    to fit the target's 640-token context with max_new_tokens 16 (article start kept, template whole)";
    None when none was."""
    k = info.get("n_cut") or 0
    if not k:
        return None
    why = (f" to fit the {info['context_role']}'s {info['context_positions']}-token context with max_new_tokens "
           f"{info['max_new_tokens']}" if info.get("context_role") else "")
    parts = info.get("parts_cut", [])
    docs = [p for p in parts if p != "prompt"]
    what = (f"{'/'.join(docs)} {info['keep']} kept, template whole" if docs else f"prompt {info['keep']} kept")
    if docs and "prompt" in parts:
        what += "; where the template alone was too long, the prompt's first tokens"
    if not info.get("context_role"):
        what = f"dataset.max_prompt_tokens; {what}"
    return (f"{k} of {n_samples} prompt{'s' if n_samples != 1 else ''} cut to {info['max_prompt_tokens_used']} "
            f"tokens{why} ({what})")


def eos_ids(pair) -> list[int]:
    ids = {pair.tokenizer.eos_token_id}
    gen_eos = getattr(getattr(pair.target, "generation_config", None), "eos_token_id", None)
    ids.update(gen_eos if isinstance(gen_eos, list) else [gen_eos])
    return sorted(i for i in ids if i is not None)
