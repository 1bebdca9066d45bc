"""Prompt lookup / max-gram drafting (Saxena 2023, "prompt lookup decoding"; the "max-gram" bottom
drafter of Cascade Speculative Drafting, Chen et al. 2023).

Find the longest suffix of the current text that occurred earlier, and propose the tokens that
followed its earliest occurrence: in the prompt first, then in the generated text. When that
continuation is shorter than the draft (or nothing matched), the rest of the draft follows the
bigram chain from the last proposed token. No model, no forwards; proposals are deterministic
(`Draft.probs = None`: verification treats them as one-hot drafts).

`datastore` (a `Datastore`, specexp/proposers/retrieval.py): when the text's suffix does not
repeat, the continuation the target's own replies to other prompts hold for it (REST); the bigram
fill is not used after a datastore draft (it sizes itself by confidence).

Cost-aware use (the shipped smollm2-135m__prompt_lookup pair): every drafted token widens the
target's verification forward, so a junk draft is a loss. `min_ngram` >= 2 drafts only on a real
match; `draft_per_ngram` sizes the draft from the match (a suffix of n tokens drafts
ceil(draft_per_ngram * n), at most the policy's length); the bigram fill drafts only when its
corpus fits the text (`Bigram(min_fit=...)`).

Encoder-decoder targets: the text searched is the encoder prompt followed by the decoder tokens;
the suffix is taken from the decoder tokens, and a continuation found in the prompt stops at the
prompt's end.
"""
from __future__ import annotations

import math

import torch

from specexp.length import LengthPolicy
from specexp.models.sampling import Sampling
from specexp.proposers.base import Draft, Proposer
from specexp.proposers.bigram import Bigram, check_policy
from specexp.proposers.retrieval import Datastore


def longest_suffix_match(text: torch.Tensor, max_ngram: int | None = None, min_ngram: int = 1,
                         max_suffix: int | None = None, prefer: str = "first",
                         valid_end: torch.Tensor | None = None) -> tuple[int, int] | None:
    """The longest n (min_ngram <= n <= max_ngram, n <= max_suffix) such that the last n tokens of
    `text` [L] also occur ending at an earlier position e < L-1 (so at least one token follows);
    returns (n, e) for the earliest such e (`prefer="last"`: the latest), or None.
    `valid_end` [L] (bool) restricts the end positions allowed."""
    L = text.shape[0]
    limit = L - 1  # an occurrence ending at e needs e - n + 1 >= 0 and e < L - 1
    for cap in (max_ngram, max_suffix):
        if cap is not None:
            limit = min(limit, cap)
    if L < 2 or limit < max(min_ngram, 1):
        return None
    ends = torch.nonzero(text[: L - 1] == text[L - 1]).flatten()
    if valid_end is not None:
        ends = ends[valid_end[ends]]
    if ends.numel() == 0:
        return None
    n = 1
    while n < limit:
        ok = ends >= n  # room for one more token before the occurrence
        cand = ends[ok]
        cand = cand[text[cand - n] == text[L - 1 - n]]
        if cand.numel() == 0:
            break
        ends, n = cand, n + 1
    if n < min_ngram:
        return None
    e = int(ends.min()) if prefer == "first" else int(ends.max())
    return n, e


class PromptLookup(Proposer):
    """Longest-suffix lookup in the prompt and the generated text, then the bigram chain.

    max_ngram: longest suffix tried (null: unbounded, the max-gram rule); min_ngram: shortest
    suffix accepted as a match; prefer: "first" (earliest occurrence: the prompt, then the
    generated text) or "last" (most recent); bigram: the chain that fills the rest of the draft
    (a `Bigram`, or null: draft only what the lookup found, possibly nothing); draft_per_ngram:
    draft ceil(draft_per_ngram * n) tokens after a match of n (ceil(draft_per_ngram) of fill
    without one), at most `max_len` (null: always `max_len`); datastore: a `Datastore` drafting when
    nothing repeats (null: none)."""

    forwards = 0

    def __init__(self, max_ngram: int | None = None, min_ngram: int = 1, prefer: str = "first",
                 bigram: Bigram | None = None, encoder_decoder: bool | None = None,
                 draft_per_ngram: float | None = None, datastore: Datastore | None = None):
        if prefer not in ("first", "last"):
            raise ValueError(f"prompt lookup: prefer must be 'first' or 'last', got {prefer!r}")
        if min_ngram < 1 or (max_ngram is not None and max_ngram < min_ngram):
            raise ValueError(f"prompt lookup: need 1 <= min_ngram <= max_ngram, got {min_ngram}, {max_ngram}")
        if draft_per_ngram is not None and draft_per_ngram <= 0:
            raise ValueError(f"prompt lookup: draft_per_ngram must be > 0 or null, got {draft_per_ngram}")
        self.max_ngram, self.min_ngram, self.prefer = max_ngram, min_ngram, prefer
        self.draft_per_ngram = draft_per_ngram
        self.bigram = bigram
        self.datastore = datastore
        self.encoder_decoder = encoder_decoder  # None: inferred (the decoder text does not start with the prompt)
        self.prompt: torch.Tensor | None = None

    def bind(self, pair) -> "PromptLookup":
        target = getattr(pair, "target", None)
        self.encoder_decoder = bool(getattr(getattr(target, "config", None), "is_encoder_decoder", False))
        if self.bigram is not None:
            self.bigram.bind(pair)
        if self.datastore is not None:
            self.datastore.bind(pair)
        return self

    def reset(self, prompt: torch.Tensor) -> None:
        self.prompt = prompt.cpu()  # searched on the CPU: many tiny ops, no kernel launches
        if self.bigram is not None:
            self.bigram.reset(prompt)  # does the fill's corpus fit this text?

    def _history(self, tokens: torch.Tensor) -> tuple[torch.Tensor, int | None]:
        """The text to search and where the prompt segment ends (None: one segment)."""
        p = self.prompt
        separate = self.encoder_decoder
        if separate is None:
            separate = p is not None and not (tokens.shape[0] >= p.shape[0] and bool((tokens[: p.shape[0]] == p.to(tokens)).all()))
        if not separate or p is None:
            return tokens, None
        return torch.cat([p.to(tokens), tokens]), p.shape[0]

    def lookup(self, tokens: torch.Tensor, k: int) -> tuple[list[int], int]:
        """Up to k tokens that followed the earliest occurrence of the longest matching suffix,
        and the suffix length n (0: no match)."""
        text, prompt_end = self._history(tokens.cpu())
        valid = None
        max_suffix = None
        if prompt_end is not None:
            max_suffix = tokens.shape[0]  # the suffix comes from the decoder tokens
            valid = torch.ones(text.shape[0], dtype=torch.bool, device=text.device)
            valid[prompt_end - 1] = False  # nothing of the prompt follows its last token
        m = longest_suffix_match(text, self.max_ngram, self.min_ngram, max_suffix, self.prefer, valid)
        if m is None:
            return [], 0
        n, e = m
        stop = prompt_end if (prompt_end is not None and e < prompt_end) else text.shape[0]
        return text[e + 1: min(e + 1 + k, stop)].tolist(), n

    def draft_length(self, n: int, max_len: int) -> int:
        """How many tokens a match of n drafts: ceil(draft_per_ngram * n) (n = 0: no match, as 1),
        at most max_len; null draft_per_ngram: max_len. Longer matches run on longer."""
        if self.draft_per_ngram is None:
            return max_len
        return min(max_len, math.ceil(self.draft_per_ngram * max(n, 1)))

    def retrieve(self, tokens: torch.Tensor, max_len: int) -> tuple[list[int], str | None, int]:
        """The draft the text's own repeat gives (sized from the match), else the datastore's, with
        its source ("lookup", "datastore"; None: neither) and the matched suffix length n."""
        found, n = self.lookup(tokens, max_len)  # (on the CPU)
        if found:
            return found[: self.draft_length(n, max_len)], "lookup", n
        if self.datastore is not None:
            found = self.datastore.draft(tokens.cpu(), max_len, self.eos)
            if found:
                return found, "datastore", 0
        return [], None, 0

    def propose(self, tokens: torch.Tensor, max_len: int, policy: LengthPolicy | None, sampling: Sampling | None,
                generator: torch.Generator | None) -> Draft:
        check_policy(policy, "prompt lookup")
        if max_len <= 0:
            return Draft(tokens.new_empty(0), None)
        found, source, n = self.retrieve(tokens, max_len)
        size = len(found) if source == "datastore" else self.draft_length(n, max_len)  # sized from the match
        fill = []
        if len(found) < size and self.bigram is not None and self.bigram.fits:
            fill = self.bigram.draft(found[-1] if found else int(tokens[-1]), size - len(found))
        out = found + fill
        recs = []
        if self.records:
            recs = ([{"position": j, "source": source, "ngram": n} for j in range(len(found))]
                    + [{"position": len(found) + j, "source": "bigram"} for j in range(len(fill))])
        return Draft(torch.tensor(out, dtype=tokens.dtype, device=tokens.device), None, recs)
