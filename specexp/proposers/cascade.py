"""Cascade Speculative Drafting (Chen et al. 2023, arXiv 2312.11462).

Drafters ordered from large to small, with a model-free drafter (prompt lookup / bigram) at the
bottom. No neural drafter drafts token by token: each one *reviews* the draft assembled by the
drafters below it (vertical cascade) and returns the tokens it accepted plus one token of its own
(the correction at the first rejection, or a bonus when all pass). The draft the target verifies
is assembled left to right, its first positions coming from the larger drafters and the later
ones from the smaller (horizontal cascade).

The k-matrix drives both. Levels: row/column 0..n-1 with n = len(drafters) + 1; column j is
drafter j (the last column is the model-free bottom); row 0 belongs to the target, row r >= 1 to
drafter r-1 as a reviewer. Row r's entries k[r][r:] are the incremental shares of the drafters
below that reviewer: drafter r is called until the draft holds k[r][r] tokens, then drafter
r+1 until it holds k[r][r] + k[r][r+1], and so on. A neural drafter j "called" means: it reviews
the draft built by rows j+1.. (the submatrix k[j+1:, j+1:]) and returns at least one token; the
model-free bottom, called, proposes exactly the tokens still missing up to the share. Entries
below the diagonal must be 0. E.g. FLAN-T5 [[5,14,10],[0,1,10],[0,0,10]] over (base, small,
bottom): the target's draft is >= 5 tokens from base reviewing (small reviewing 10 bottom
tokens, then bottom tokens up to 11), then small's reviews of 10 bottom tokens up to 19 tokens,
then bottom tokens up to 29. One call may overshoot its share; the draft is cut at `max_len`
(the length policy's `begin()`, and the loop's budget), the only length control on top of the
matrix.

Lenience l applies at the intermediate levels (every neural drafter's review); the top level is
the decode loop's exact verification, so greedy output equals the target's greedy output and
sampled output follows the target's distribution:

* greedy: a reviewer accepts draft token d at a position when d is its argmax, or when its
  probability (softmax at temperature 1) of d exceeds s(d) / l, where s(d) is the probability
  of the model that vouched for d: 1 for a model-free token, the lower reviewer's probability
  for a token it accepted or produced. (The original code passes the last sub-call's
  probabilities, i.e. s = 1 whenever the bottom drafter is called last in a row; here each token
  keeps its own.) No distributions reach the top: `Draft.probs = None`.
* sampling: every draft token carries Q, the distribution it was actually drawn from given the
  history (one-hot for a model-free token). A reviewer with distribution r (the run's processed
  `Sampling` distribution) accepts d with probability min(1, l r(d) / Q(d)); at the first
  rejection it draws from norm(max(0, r - Q)) and stops; if all pass it draws a bonus from r.
  The token it emits at a reviewed position then has the exact distribution
      Q'(y) = min(Q(y), l r(y)) + (1 - sum_z min(Q(z), l r(z))) * norm(max(0, r - Q))(y)
  (accepted-or-replaced, marginalised over the coins), which becomes that position's Q for the
  level above; a bonus token's Q' is r. With l = 1, Q' = r: the review is exact speculative
  sampling. The cascade returns each final token's Q as `Draft.probs`, and the target's
  min(1, p/Q) + residual rule is then exactly the lossless rule: which mechanism produces each
  position and every Q depend only on earlier positions, and every coin is fresh.

Each neural drafter keeps a KV cache of the last sequence it scored and reuses its longest
common prefix with the next one. Forward counts are per drafter (one per review); the bottom
costs none. The draft the target gets ends at its first EOS (kept), as every proposer's does.

`compat="original"` follows the protocol of the original code (lfsszd/CS-Drafting at 05b22e1,
`csd.py`, `mag.py`, `model.py`: the classes `main.py` runs) where it differs from the above;
greedy only, as the original:
  1. every call of the bottom proposes at least ORIGINAL_BOTTOM_TOKENS (10) tokens: the k-matrix
     share only decides whether it is called (`_csd_iteration`'s `propose(..., _MAG_GENERATION)`);
  2. the bottom is the original max-gram (`original_bottom`): it searches `prompt ++ text[:-1]`
     (decoder-only: the prompt twice) and lets a continuation run across the seams;
  3. no cap: neither the policy's `max_len` nor the sample's budget cut the draft, so the last
     round may overshoot `max_new_tokens` (the decode loop calls `propose` even at budget 1 for
     a proposer with `overshoots`);
  4. a reviewer compares a draft token d with s(d) = what the LAST sub-call of its row reported
     (`review(..., new_probs, ...)`), shifted by one: a reviewer reports for each token it emits
     after the first its own probability at the PREVIOUS position (`prob_res` in `review`), for
     its first token what it was given, and a bottom call 1 for the whole text. With lenience 1
     s is never read, so only the lenient presets are affected.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch

from specexp.length import LengthPolicy
from specexp.models.cached_lm import CachedLM, cached_lm
from specexp.models.sampling import Sampling, sample
from specexp.proposers.base import Draft, Proposer
from specexp.proposers.bigram import Bigram, check_policy
from specexp.proposers.lookup import longest_suffix_match

COMPAT = ("specexp", "original")
ORIGINAL_BOTTOM_TOKENS = 10  # csd.py `_MAG_GENERATION`: tokens per call of the original's bottom


def continuation_of_longest_suffix(text: torch.Tensor, k: int, max_suffix: int) -> list[int] | None:
    """The (up to) k tokens that follow, in `text[:-1]`, the earliest occurrence of the longest
    suffix of `text` (at most `max_suffix` tokens) that occurs there; None when not even the last
    token does. An occurrence at the very end of `text[:-1]` gives an empty continuation."""
    m = longest_suffix_match(text, max_suffix=max_suffix)  # the earliest occurrence (prefer="first")
    if m is None:
        return None
    e = m[1]
    return text[e + 1: min(e + 1 + k, text.shape[0] - 1)].tolist()


def original_bottom(context: torch.Tensor, ids: torch.Tensor, k: int, chain: Bigram) -> list[int]:
    """The tokens the original's max-gram bottom (mag.py `draft_sample_k_bn_gram`) appends to
    `ids` (decoder-only: prompt + text; encoder-decoder: the decoder's tokens), `context` being the
    prompt (the encoder's input):
      1. the continuation of `ids`'s longest suffix in `context ++ ids[:-1]`;
      2. fewer than k so far: up to k more, likewise in `x[:-1] ++ x[:-1]` (x = ids + step 1);
      3. still fewer than k: the bigram chain from the last token, up to k in all.
    k to 2k - 1 tokens. The searched texts hold their pieces twice or back to back, so a match at
    the end of one piece continues into the next (e.g. from the prompt's end into its start)."""
    new = continuation_of_longest_suffix(torch.cat([context, ids]), k, ids.shape[0]) or []
    if len(new) < k:
        x = torch.cat([ids, ids.new_tensor(new)])
        new += continuation_of_longest_suffix(torch.cat([x[:-1], x]), k, x.shape[0]) or []
    if len(new) < k:
        new += chain.draft(new[-1] if new else int(ids[-1]), k - len(new))
    return new


@dataclass
class _Items:
    """Draft tokens under construction, with what each level needs to know about them."""

    tokens: list[int] = field(default_factory=list)
    q: list[torch.Tensor | None] = field(default_factory=list)  # sampling: the distribution it was drawn from (None: one-hot)
    s: list[float] = field(default_factory=list)  # greedy lenience: the vouching model's probability
    src: list[str] = field(default_factory=list)  # who produced or last accepted it

    def __len__(self) -> int:
        return len(self.tokens)

    def extend(self, other: "_Items") -> None:
        self.tokens += other.tokens
        self.q += other.q
        self.s += other.s
        self.src += other.src

    def cut(self, n: int) -> "_Items":
        return _Items(self.tokens[:n], self.q[:n], self.s[:n], self.src[:n])


class _Reviewer:
    """A neural drafter as a reviewer: its cached LM and the token ids its cache holds."""

    def __init__(self, role: str, lm: CachedLM):
        self.role, self.lm = role, lm
        self.ids = torch.empty(0, dtype=torch.long)

    def reset(self, prompt: torch.Tensor) -> None:
        self.lm.start(prompt)
        self.ids = torch.empty(0, dtype=torch.long, device=prompt.device)

    def logits(self, full: torch.Tensor, start: int) -> torch.Tensor:
        """Logits [len(full) - start + 1, V] predicting positions start .. len(full) of `full`,
        feeding only what the cache does not already hold (its common prefix with `full`)."""
        m = min(self.ids.shape[0], full.shape[0])
        common = int(torch.cumprod((self.ids[:m] == full[:m]).int(), 0).sum()) if m else 0
        keep = min(common, start - 1, self.lm.length)
        self.lm.crop(keep)
        out = self.lm.forward(full[keep:], keep=full.shape[0] - start + 1)
        self.ids = full
        return out

    def keep(self, length: int) -> None:
        """Keep the first `length` cached positions (drop what the review rejected)."""
        self.lm.crop(length)
        self.ids = self.ids[:length]


class Cascade(Proposer):
    """Cascade of neural drafters (`drafters`: model roles of the pair, large to small) over a
    model-free `bottom` drafter, driven by `k_matrix` with lenience `lenience` (>= 1) at the
    intermediate levels. See the module docstring."""

    def __init__(self, drafters: list[str], bottom: Proposer, k_matrix: list[list[int]], lenience: float = 1.0,
                 compat: str = "specexp"):
        drafters = list(drafters or [])
        n = len(drafters) + 1
        k = [[int(x) for x in row] for row in k_matrix]
        if len(k) != n or any(len(row) != n for row in k):
            raise ValueError(f"cascade: k_matrix must be {n}x{n} for {len(drafters)} neural drafter(s) plus the "
                             f"model-free bottom, got {[len(r) for r in k]}")
        if any(x < 0 for row in k for x in row):
            raise ValueError("cascade: k_matrix entries must be >= 0")
        if any(k[r][j] for r in range(n) for j in range(r)):
            raise ValueError("cascade: k_matrix entries below the diagonal must be 0 (row r reviews drafters r..)")
        if lenience < 1:
            raise ValueError(f"cascade: lenience must be >= 1, got {lenience}")
        if len(set(drafters)) != len(drafters):
            raise ValueError(f"cascade: each drafter role may appear once, got {drafters}")
        if bottom is None or getattr(bottom, "cached_models", None):
            raise ValueError("cascade: the bottom drafter must be a model-free proposer (prompt lookup, bigram)")
        if compat not in COMPAT:
            raise ValueError(f"cascade: compat must be specexp or original, got {compat!r}")
        chain = bottom if isinstance(bottom, Bigram) else getattr(bottom, "bigram", None)
        if compat == "original" and chain is None:
            raise ValueError("cascade: compat=original needs a bigram chain at the bottom (PromptLookup with "
                             "bigram, or Bigram): the original fills its max-gram drafts from one")
        self.roles, self.bottom, self.k, self.lenience, self.n = drafters, bottom, k, float(lenience), n
        self.compat, self._chain = compat, chain  # specexp (the module doc) | original (the original code's protocol)
        self.overshoots = compat == "original"  # the decode loop lets its drafts run past the budget
        self.levels: list[_Reviewer] = []
        self.prompt: torch.Tensor | None = None

    def bind(self, pair) -> "Cascade":
        vocab = getattr(pair, "vocab_size", None)
        self.levels = [_Reviewer(role, cached_lm(pair.get(role) if hasattr(pair, "get") else getattr(pair, role),
                                                 vocab_size=vocab)) for role in self.roles]
        self.bottom.bind(pair)
        self.bottom.records = True  # its records name each token's source (lookup / bigram)
        return self

    @property
    def forwards(self) -> int:
        return sum(lv.lm.forwards for lv in self.levels)

    @property
    def cached_models(self) -> dict[str, CachedLM]:
        return {lv.role: lv.lm for lv in self.levels}

    def reset(self, prompt: torch.Tensor) -> None:
        for lv in self.levels:
            lv.reset(prompt)
        self.bottom.reset(prompt)
        self.prompt = prompt.cpu()

    # ----------------------------------------------------------------------------------------

    def propose(self, tokens: torch.Tensor, max_len: int, policy: LengthPolicy, sampling: Sampling,
                generator: torch.Generator | None) -> Draft:
        if len(self.levels) != self.n - 1:
            raise RuntimeError("cascade: call bind(pair) before proposing")
        check_policy(policy, "the cascade")
        self._policy, self._sampling, self._gen = policy, sampling, generator
        if self.compat == "original":
            return self._propose_original(tokens)
        items = self._draft(0, tokens, max_len) if max_len > 0 else _Items()
        stop = next((i for i, t in enumerate(items.tokens) if t in self.eos), None)
        if stop is not None:  # the draft ends at its first EOS (kept), as every proposer's does
            items = items.cut(stop + 1)
        out = torch.tensor(items.tokens, dtype=tokens.dtype, device=tokens.device)
        probs = None
        if not sampling.greedy and any(q is not None for q in items.q):
            V = next(q for q in items.q if q is not None).shape[-1]
            probs = torch.stack([q if q is not None else torch.nn.functional.one_hot(
                torch.tensor(t, device=tokens.device), V).float() for t, q in zip(items.tokens, items.q)])
        recs = [{"position": j, "source": s} for j, s in enumerate(items.src)] if self.records else []
        return Draft(out, probs, recs)

    def _draft(self, row: int, seq: torch.Tensor, cap: int) -> _Items:
        """The draft continuing `seq` that reviewer `row` (0: the target) gets: drafters row..n-1
        called in turn up to their cumulative shares k[row][row..j], at most `cap` tokens."""
        out = _Items()
        share = 0
        for j in range(row, self.n):
            share += self.k[row][j]
            goal = min(share, cap)
            while len(out) < goal:
                cur = torch.cat([seq, seq.new_tensor(out.tokens)]) if len(out) else seq
                if j == self.n - 1:
                    new = self._bottom(cur, goal - len(out))
                else:
                    new = self._review(j, cur, cap - len(out))
                if not len(new):
                    break
                out.extend(new)
        return out.cut(cap)

    def _bottom(self, seq: torch.Tensor, k: int) -> _Items:
        d = self.bottom.propose(seq, k, self._policy, self._sampling, self._gen)
        if d.probs is not None:
            raise ValueError("cascade: the bottom drafter must propose deterministically (Draft.probs None)")
        toks = d.tokens.tolist()[:k]
        src = [r.get("source", "bottom") for r in d.records] if len(d.records) == len(toks) else ["bottom"] * len(toks)
        return _Items(toks, [None] * len(toks), [1.0] * len(toks), src)

    def _review(self, j: int, seq: torch.Tensor, cap: int) -> _Items:
        """Drafter j reviews the draft of the levels below it (rows j+1..) continuing `seq`:
        the tokens it accepts plus its own next token, at most `cap`."""
        sub = self._draft(j + 1, seq, max(cap - 1, 1))
        lv = self.levels[j]
        start = seq.shape[0]
        full = torch.cat([seq, seq.new_tensor(sub.tokens)]) if len(sub) else seq
        logits = lv.logits(full, start)  # [len(sub) + 1, V]
        if self._sampling.greedy:
            out = self._review_greedy(lv.role, sub, logits)
        else:
            out = self._review_sampling(lv.role, sub, logits)
        lv.keep(start + min(len(out) - 1, len(sub)))  # the accepted drafts stay cached; its own token is not fed
        return out.cut(cap)

    def _review_greedy(self, role: str, sub: _Items, logits: torch.Tensor) -> _Items:
        L = len(sub)
        best = logits.argmax(-1)
        lenient = self.lenience > 1
        probs = logits.softmax(-1) if lenient else None
        n = 0
        if L:
            d = torch.tensor(sub.tokens, device=logits.device)
            ok = best[:L] == d
            if lenient:
                p_d = probs[torch.arange(L, device=logits.device), d]
                ok |= p_d > torch.tensor(sub.s, device=logits.device) / self.lenience
            n = int(torch.cumprod(ok.int(), 0).sum())
        nxt = int(best[n])
        dev = logits.device
        s_acc = (probs[torch.arange(n, device=dev), torch.tensor(sub.tokens[:n], dtype=torch.long, device=dev)].tolist()
                 if lenient and n else [1.0] * n)
        s_new = float(probs[n, nxt]) if lenient else 1.0
        return _Items(sub.tokens[:n] + [nxt], [None] * (n + 1), s_acc + [s_new], [role] * (n + 1))

    def _review_sampling(self, role: str, sub: _Items, logits: torch.Tensor) -> _Items:
        r_all = self._sampling.probs(logits)  # [L+1, V]
        l, gen = self.lenience, self._gen
        out = _Items()
        for i, d in enumerate(sub.tokens):
            r = r_all[i]
            q = sub.q[i]
            if q is None:
                q = torch.zeros_like(r)
                q[d] = 1.0
            kept = torch.minimum(q, l * r)  # mass emitted as the draft token itself
            resid = (r - q).clamp_min(0)
            if float(resid.sum()) <= 0:  # r == q up to rounding: never rejects; the residual is r
                resid = r
            resid = resid / resid.sum()
            q_out = kept + (1 - kept.sum()).clamp_min(0) * resid
            u = float(torch.rand((), generator=gen, device=r.device))
            if u * float(q[d]) < l * float(r[d]):  # accept with probability min(1, l r(d) / q(d))
                out.extend(_Items([d], [q_out], [1.0], [role]))
                continue
            y = int(sample(resid, gen))
            out.extend(_Items([y], [q_out], [1.0], [role]))
            return out
        y = int(sample(r_all[len(sub)], gen))
        out.extend(_Items([y], [r_all[len(sub)]], [1.0], [role]))
        return out

    # ------------------------------------------------------------- compat="original" (greedy)

    def _propose_original(self, tokens: torch.Tensor) -> Draft:
        if not self._sampling.greedy:
            raise ValueError("cascade: compat=original reproduces the original code, which decodes greedily only; "
                             "use sampling=greedy, or compat=specexp for sampling")
        new, _, src = self._draft_original(0, tokens)
        recs = [{"position": j, "source": s} for j, s in enumerate(src)] if self.records else []
        return Draft(torch.tensor(new, dtype=tokens.dtype, device=tokens.device), None, recs)

    def _draft_original(self, row: int, seq: torch.Tensor) -> tuple[list[int], list, list[str]]:
        """Row `row`'s draft after `seq` as `_csd_iteration` builds it: drafter j is called while
        the draft is shorter than the cumulative share k[row][row..j], whatever a call adds (no cap).
        Returns the tokens, what the row's reviewer compares each with (the row's LAST sub-call's
        report; `_vouch` reads it) and each token's source."""
        toks: list[int] = []
        s: list = []
        src: list[str] = []
        share = 0
        for j in range(row, self.n):
            share += self.k[row][j]
            while len(toks) < share:
                cur = torch.cat([seq, seq.new_tensor(toks)]) if toks else seq
                if j == self.n - 1:  # the bottom reports a one-hot of every token (an int: the token)
                    new = original_bottom(self.prompt, cur.cpu(), ORIGINAL_BOTTOM_TOKENS, self._chain)  # on the CPU
                    s_new, who = list(new), "bottom"
                else:
                    new, s_new = self._review_original(j, cur)
                    who = self.roles[j]
                s = list(toks) + s_new  # earlier tokens: one-hot (the bottom under the last call saw them)
                toks, src = toks + new, src + [who] * len(new)
        return toks, s, src

    def _review_original(self, j: int, seq: torch.Tensor) -> tuple[list[int], list]:
        """Drafter j reviews the draft of rows j+1.. after `seq` (greedy; lenience l: also accept d
        when its probability exceeds s(d) / l). Returns the accepted tokens plus its own next token,
        and its report on them: for its first token what it was given there (a one-hot, read at
        whatever token now stands there), for each later token its own probability at the
        PREVIOUS position of that token (the original's `prob_res`, shifted by one)."""
        sub, s_sub, _ = self._draft_original(j + 1, seq)
        lv = self.levels[j]
        start = seq.shape[0]
        logits = lv.logits(torch.cat([seq, seq.new_tensor(sub)]), start)  # [len(sub) + 1, V]
        best = logits.argmax(-1).tolist()
        probs = logits.float().softmax(-1) if self.lenience > 1 else None
        n = 0
        while n < len(sub) and (best[n] == sub[n] or (
                probs is not None and float(probs[n, sub[n]]) > _vouch(s_sub[n], sub[n]) / self.lenience)):
            n += 1
        out = sub[:n] + [best[n]]
        lv.keep(start + n)
        shifted = [float(probs[i - 1, out[i]]) if probs is not None else 1.0 for i in range(1, n + 1)]
        return out, [s_sub[0] if sub else 1.0] + shifted  # (an empty sub-draft: the original would fail)


def _vouch(entry, token: int) -> float:
    """A report entry read at `token`: an int is a one-hot of that token id, a float a probability
    already taken at the token it vouches for."""
    return float(entry == token) if isinstance(entry, int) else entry
