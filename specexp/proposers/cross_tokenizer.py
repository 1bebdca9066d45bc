"""A drafter with another tokenizer than the target's, drafting through text (transformers'
"universal assisted generation": any small causal LM drafts for any target).

Each round:
1. Context. The target's accepted tokens are decoded to text (its special tokens dropped; a
   last character whose first bytes only are out yet waits for the rest) and re-encoded with the
   drafter's tokenizer. The drafter's KV cache is cropped to the longest prefix of what it holds
   that this re-encoding still starts with (the text's tail may tokenize differently now that
   more text follows it, and the rejected drafts go); it feeds the rest. This is the crop after
   verification, done when the next round starts, from the accepted text.
2. Draft. The drafter drafts greedily, token by token, under the length policy: the policy sees
   the drafter's own steps (its logits over its vocabulary) and `max_len` counts drafter tokens.
3. Bridge. The drafted text (the drafter's decode of its context's tail plus the drafts, minus the
   tail's own text) is appended to the text of the target's last `lookbehind` tokens and the whole
   is encoded with the target's tokenizer; the draft is what follows the target's own tail tokens
   in that encoding (their longest suffix found there: a word cut by the round boundary
   re-tokenizes across it). When no suffix is found (the context's last token merged with the
   drafted text), the drafted text is encoded on its own. The draft is cut to `max_len` target
   tokens, after a target EOS, and before any id the target's logits do not cover. A drafter EOS
   ends the draft with the target's EOS.

Greedy decoding is exact by construction: drafts are guesses, and the loop's verification keeps
only the prefix equal to the target's argmax, then adds the target's own token. A bridge that
guesses badly (a merge across the boundary, a tokenizer that does not round-trip text) costs
acceptance, never correctness. The last target token of a draft is kept even though more text
could have merged into it: when it is wrong the target's correction takes its place (the round
emits as many tokens as without it), when it is right it is one more accepted token.

Costs: the drafter's forwards count as a drafter's. The text is decoded and re-encoded
incrementally (`_Decoded`, `_Encoded`: only the last few dozen tokens each round, behind a prefix
frozen once a split there is verified to change nothing), so a round's tokenizer work does not grow
with the context (re-encoding 3,000 tokens of context takes over 10 ms on a slow CPU). Not supported: analysis records (records=true) and batch_size > 1 (specexp.experiment.validate
refuses both before any weights load).

Sampling is refused: speculative sampling needs the drafter's probability q(x) of each drafted
target token x, and a drafter over another vocabulary has none (a target token can be spelt by
many drafter token sequences, and the bridge's re-encoding is deterministic). Use sampling=greedy,
or a drafter with the target's tokenizer.
"""
from __future__ import annotations

import torch

from specexp.length import Decision, DraftStep, LengthPolicy
from specexp.models.cached_lm import CachedLM, cached_lm
from specexp.models.sampling import Sampling
from specexp.proposers.base import Draft, OneModelProposer

SAMPLING_REFUSED = (
    "the {role} has another tokenizer than the target, so it drafts through text, and sampling needs the "
    "drafter's probability of each drafted target token, which a drafter over another vocabulary does not "
    "have: use sampling=greedy (the output is then exactly the target's greedy output), or a {role} with the "
    "target's tokenizer")


class CrossTokenizerDrafter(OneModelProposer):
    """A causal LM with another tokenizer than the target's, drafting through text (module
    docstring). `DraftModel.bind` hands over to it when the pair's `model` does not share the
    target's tokenizer; greedy decoding only.

    model: the pair's role that drafts; lookbehind: the target tokens before the draft that are
    re-encoded with it, so that a word cut by the round boundary re-tokenizes across it."""

    def __init__(self, model: str = "drafter", lookbehind: int = 10):
        if lookbehind < 1:
            raise ValueError(f"lookbehind must be >= 1, got {lookbehind}")
        self.model = model
        self.lookbehind = lookbehind
        self.lm: CachedLM | None = None
        self._fed: list[int] = []  # the drafter ids in its cache (len == lm.length)
        self._text: _Decoded | None = None  # the text of the target's sequence, decoded incrementally
        self._ids: _Encoded | None = None  # that text in the drafter's ids, encoded incrementally

    def bind(self, pair) -> "CrossTokenizerDrafter":
        model = pair.get(self.model, other_tokenizer=True)
        if hasattr(model, "as_proposer"):
            raise ValueError(f"the {self.model} is a feature drafter (it drafts from the target's hidden states), "
                             "so it must have the target's tokenizer; this one has another")
        for role, m in ((self.model, model), ("target", pair.target)):
            if getattr(getattr(m, "config", None), "is_encoder_decoder", False):
                raise ValueError(f"a drafter with another tokenizer than the target's drafts through text for "
                                 f"decoder-only models only, and the {role} is an encoder-decoder model: use a "
                                 f"{self.model} with the target's tokenizer")
        self.target_tok, self.drafter_tok = pair.tokenizer, pair.tokenizer_of(self.model)
        self.width = pair.vocab_size  # ids the target scores: a draft never holds another
        self.lm = cached_lm(model)  # logits over the drafter's own vocabulary
        self._text, self._ids = _Decoded(self.target_tok), _Encoded(self.drafter_tok)
        self.drafter_eos = _eos_ids(self.drafter_tok, model)
        self.target_special = set(self.target_tok.all_special_ids)
        start = self.drafter_tok("")["input_ids"]  # what the drafter's tokenizer puts before a text (its BOS)
        bos = self.drafter_tok.bos_token_id
        self.drafter_prefix = [bos] if bos is not None and start[:1] == [bos] else []
        fallback = bos if bos is not None else self.drafter_tok.eos_token_id  # context of an empty text
        self.empty_context = [fallback] if fallback is not None else []
        return self

    def reset(self, prompt: torch.Tensor) -> None:
        self.lm.reset()
        self._fed = []
        self._text.reset()
        self._ids.reset()

    def propose(self, tokens, max_len, policy: LengthPolicy, sampling: Sampling, generator) -> Draft:
        if not sampling.greedy:
            raise ValueError(SAMPLING_REFUSED.format(role=self.model))
        if self.records:
            raise ValueError("records=true pairs each drafted token's drafter entropy with the target's, but a "
                             f"{self.model} with another tokenizer drafts other tokens than the target verifies: "
                             "set records=false")
        empty = Draft(tokens.new_empty(0), None)
        text, pending = self.context_text(tokens)
        context = self.drafter_context(text)
        limit = self.lm.max_positions
        if max_len <= 0 or not context or (limit is not None and len(context) + max_len > limit):
            return empty  # nothing to condition on, or past the drafter's positions: the target decodes alone
        # 1. Keep the cached prefix the context still starts with (at least one token left to feed).
        keep = min(_common_prefix(self._fed, context), len(context) - 1)
        self.lm.crop(keep)
        self._fed = self._fed[:keep]
        feed = context[keep:]
        # 2. Draft greedily in the drafter's vocabulary, the policy deciding per drafter token.
        out: list[int] = []
        for j in range(max_len):
            logits = self.lm.forward(torch.tensor(feed, device=tokens.device), keep=1)[-1]
            self._fed += feed
            q = sampling.probs(logits)
            tok = sampling.pick(q, generator)
            step = DraftStep(j, logits, q, tok, None, None, True)  # no prefix: it would be in another vocabulary
            decision = policy.decide(step) if policy.needs_steps else Decision.CONTINUE
            if decision is Decision.STOP_BEFORE:
                break
            out.append(int(tok))
            if decision is Decision.STOP_AFTER or out[-1] in self.drafter_eos:
                break
            feed = [out[-1]]
        # 3. The drafted text in the target's tokens.
        ids = self.to_target(tokens.tolist(), pending, context, out, max_len)
        return Draft(torch.tensor(ids, dtype=tokens.dtype, device=tokens.device), None) if ids else empty

    def context_text(self, tokens: torch.Tensor) -> tuple[str, int]:
        """The text of the target's sequence (its special tokens dropped) up to its last whole
        character, and how many of its last tokens are left out: a byte-level target can end on
        the first bytes of a character, which are no text yet (decoded as U+FFFD)."""
        ids = tokens.tolist()
        for pending in range(min(4, len(ids)) + 1):  # a UTF-8 character has at most 4 bytes
            text = self._text(ids[: len(ids) - pending])
            if not text.endswith("\ufffd"):
                return text, pending
        return self._text(ids), 0  # U+FFFD the target wrote itself

    def drafter_context(self, text: str) -> list[int]:
        """`text` as the drafter reads it: encoded with its tokenizer, its BOS added as its tokenizer does."""
        ids = self._ids(text)
        return self.drafter_prefix + ids if ids else self.empty_context

    def to_target(self, tokens: list[int], pending: int, context: list[int], drafts: list[int],
                  max_len: int) -> list[int]:
        """The drafter's drafts after `context` (the drafter's reading of the text of
        tokens[:-pending]) as target ids after `tokens` (at most max_len; module docstring, step 3)."""
        ended = bool(drafts) and drafts[-1] in self.drafter_eos
        words = drafts[:-1] if ended else drafts
        look = context[-self.lookbehind:]
        before, after = (self.drafter_tok.decode(x, skip_special_tokens=True, clean_up_tokenization_spaces=False)
                         for x in (look, look + words))
        text = after[_common_prefix(before, after):].rstrip("\ufffd")  # an unfinished UTF-8 character is not text yet
        ids: list[int] | None = []
        if text:
            whole = len(tokens) - pending  # the tokens of whole characters; the pending ones end the tail
            tail = [t for t in tokens[max(0, whole - self.lookbehind):] if t not in self.target_special]
            joined = self.target_tok(self._text.decode(tail[: len(tail) - pending]) + text,
                                     add_special_tokens=False)["input_ids"]
            ids = _after_suffix(joined, tail)
            if ids is None and not pending:  # the context's last token merged with the draft: the text alone
                ids = self.target_tok(text, add_special_tokens=False)["input_ids"]  # is the best guess
        ids = ids or []
        if ended and self.eos:  # the drafter ended the text: so does the draft, with the target's EOS
            eos = self.target_tok.eos_token_id
            ids = ids + [eos if eos in self.eos else min(self.eos)]
        out = []
        for t in ids[:max_len]:
            if not 0 <= t < self.width:
                break
            out.append(t)
            if t in self.eos:  # nothing after an EOS could be emitted
                break
        return out


def _common_prefix(a, b) -> int:
    """The length of the longest common prefix of two sequences (lists or strings): a binary search
    on slice equality (compared in C; a Python loop over a long context costs more)."""
    lo, hi = 0, min(len(a), len(b))
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if a[:mid] == b[:mid]:
            lo = mid
        else:
            hi = mid - 1
    return lo


class _Decoded:
    """decode(ids) of a sequence that grows from one call to the next, decoding only what follows a
    frozen prefix: the prefix's text is kept, and it grows by a head of the rest once decoding the
    head and its rest apart is verified to give the rest's text (a split no decoder rule crosses:
    a character's bytes, a leading space dropped at the start). Calls with a sequence that does not
    extend the frozen prefix start over."""

    FREEZE = 64  # unfrozen tokens before a freeze is tried
    KEEP = 16  # tokens left unfrozen at the end (they may still change meaning with what follows)

    def __init__(self, tokenizer):
        self.tokenizer = tokenizer
        self.reset()

    def reset(self) -> None:
        self.ids: list[int] = []  # the frozen prefix
        self.text = ""  # its text

    def decode(self, ids: list[int]) -> str:
        return self.tokenizer.decode(ids, skip_special_tokens=True, clean_up_tokenization_spaces=False)

    def __call__(self, ids: list[int]) -> str:
        n = len(self.ids)
        if ids[:n] != self.ids:
            self.reset()
            n = 0
        rest = self.decode(ids[n:])
        out = self.text + rest
        if len(ids) - n > self.FREEZE:
            m = len(ids) - self.KEEP
            head = self.decode(ids[n:m])
            if rest.startswith(head) and self.decode(ids[m:]) == rest[len(head):]:
                self.ids, self.text = ids[:m], self.text + head
        return out


class _Encoded:
    """The drafter's ids of a text that grows from one call to the next (tokenizer(text) without
    special tokens), encoding only what follows a frozen prefix: the prefix's ids are kept, and
    they grow by a head of the rest's ids once encoding the head's text and the rest apart is
    verified to give the same ids (a split no merge crosses). A text that does not extend the
    frozen prefix's text starts over."""

    FREEZE, KEEP = 64, 16  # as _Decoded

    def __init__(self, tokenizer):
        self.tokenizer = tokenizer
        self.reset()

    def reset(self) -> None:
        self.ids: list[int] = []  # the frozen prefix's ids
        self.text = ""  # its text

    def encode(self, text: str) -> list[int]:
        return self.tokenizer(text, add_special_tokens=False)["input_ids"]

    def __call__(self, text: str) -> list[int]:
        if not text.startswith(self.text):
            self.reset()
        rest_text = text[len(self.text):]
        rest = self.encode(rest_text)
        out = self.ids + rest
        if len(rest) > self.FREEZE:
            m = len(rest) - self.KEEP
            head = self.tokenizer.decode(rest[:m], skip_special_tokens=False, clean_up_tokenization_spaces=False)
            if rest_text.startswith(head) and self.encode(rest_text[len(head):]) == rest[m:]:
                self.ids, self.text = out[: len(self.ids) + m], self.text + head
        return out


def _after_suffix(ids: list[int], tail: list[int]) -> list[int] | None:
    """What follows the longest suffix of `tail` in `ids` (its first occurrence), or None when not
    even `tail`'s last token occurs in `ids`; all of `ids` when `tail` is empty."""
    for m in range(len(tail), 0, -1):
        suffix = tail[-m:]
        for s in range(len(ids) - m + 1):
            if ids[s:s + m] == suffix:
                return ids[s + m:]
    return None if tail else ids


def _eos_ids(tokenizer, model) -> set[int]:
    """The ids that end the drafter's text: its tokenizer's EOS and its generation config's."""
    ids = {tokenizer.eos_token_id}
    gen = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    ids.update(gen if isinstance(gen, list) else [gen])
    return {i for i in ids if i is not None}
