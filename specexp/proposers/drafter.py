from __future__ import annotations

import torch

from specexp.length import Decision, DraftStep, LengthPolicy
from specexp.models import token_entropy as entropy
from specexp.models.cached_lm import CachedLM, SubsetHeadLM, cached_lm
from specexp.models.sampling import Sampling
from specexp.proposers.base import Draft, OneModelProposer, Proposer
from specexp.proposers.cross_tokenizer import CrossTokenizerDrafter


class DraftModel(OneModelProposer):
    """A small causal LM drafting token by token with its own KV cache. The draft ends after an
    EOS token (`eos`, kept as the last draft), as transformers' assistant, the SVIP code and the
    Entropy Drafting thesis' code stop there. A drafter with another tokenizer than the target's
    drafts through text instead (`bind` hands over to proposers/cross_tokenizer.py; greedy only)."""

    def __init__(self, model: str = "drafter", vocab: int | None = None):
        self.model = model  # which model of the pair drafts (the pair's `drafter`)
        self.vocab = vocab  # draft among the N tokens of the drafter's draft_vocab.json only (null = all)
        self.lm: CachedLM | None = None
        self.embed_limit: int | None = None  # ids >= this can't be embedded by the drafter (see _check_vocab)

    def bind(self, pair) -> Proposer:
        shares = getattr(pair, "shares_tokenizer", None)  # (a test's stand-in pair may not say: assumed shared)
        if shares is not None and not shares(self.model):  # another tokenizer: draft through text, greedy only
            if self.vocab:
                raise ValueError(f"strategy.proposer.vocab={self.vocab}: a draft vocabulary subset is a set of the "
                                 f"target's token ids, but the {self.model} has another tokenizer: set "
                                 f"strategy.proposer.vocab=null, or use a {self.model} with the target's tokenizer")
            return CrossTokenizerDrafter(self.model).bind(pair)
        model = pair.get(self.model)
        if hasattr(model, "as_proposer"):  # a feature drafter (proposers/eagle.py) drafts from the target's features
            return model.as_proposer(self.model, self.vocab).bind(pair)
        self.embed_limit = _check_vocab(model, pair, self.model)
        if self.vocab:
            self.lm = SubsetHeadLM(model, draft_vocab(model, self.vocab), vocab_size=pair.vocab_size)
        else:
            self.lm = cached_lm(model, vocab_size=pair.vocab_size)
        return self

    def reset(self, prompt: torch.Tensor) -> None:
        self.lm.start(prompt)

    def propose(self, tokens, max_len, policy: LengthPolicy, sampling: Sampling, generator) -> Draft:
        self._start = tokens.shape[0]
        feed = tokens[self.lm.length:]  # what the cache has not seen: the prompt, or the last 1-2 tokens
        if self.embed_limit is not None and int(feed.max()) >= self.embed_limit:
            max_len = 0  # an id the drafter cannot embed (see _check_vocab): no draft, the target decodes alone
        fed = [feed]  # what the next forward reads: the unseen context, then each draft

        def next_logits(j: int) -> torch.Tensor:
            return self.lm.forward(fed[-1], keep=1)[-1]

        def drafted(tok: torch.Tensor) -> None:
            fed.append(tok.view(1))

        # The cache then holds tokens + drafts[:-1]; the last draft was never fed.
        return draft_chain(next_logits, max_len, tokens, policy, sampling, generator, self.eos, self.records,
                           after_token=drafted)

    def observe(self, n_accepted: int) -> None:
        # keep the context and the accepted drafts; a fully accepted draft leaves the cache one
        # behind (the last draft is fed next round together with the target's token)
        self.lm.crop(min(self.lm.length, self._start + n_accepted))


def draft_chain(next_logits, max_len: int, tokens: torch.Tensor, policy: LengthPolicy, sampling: Sampling,
                generator, eos=frozenset(), records: bool = False, after_token=None) -> Draft:
    """The drafting loop every token-by-token drafter shares (a drafter model, Medusa's heads):
    for j = 0, 1, ...: 1. the j-th draft's logits (`next_logits(j)`); 2. its distribution q and a
    token drawn from it (argmax when greedy); 3. the length policy decides to stop before it, keep
    it, or keep it and stop; 4. stop after an EOS (kept as the last draft). `after_token(tok)` runs
    after each kept token that may be followed by another (a drafter feeds it to its cache)."""
    out, probs, recs = [], [], []
    for j in range(max_len):
        logits = next_logits(j)
        q = sampling.probs(logits)
        tok = sampling.pick(q, generator)
        step = DraftStep(j, logits, q, tok, tokens, out, sampling.greedy)
        decision = policy.decide(step) if policy.needs_steps else Decision.CONTINUE
        if decision is Decision.STOP_BEFORE:
            break
        out.append(tok)
        probs.append(q)
        if records:
            recs.append(_record(step, policy))
        if decision is Decision.STOP_AFTER or (eos and int(tok) in eos):
            break
        if after_token is not None:
            after_token(tok)
    if not out:
        return Draft(tokens.new_empty(0), None)
    return Draft(torch.stack(out).to(tokens.device), None if sampling.greedy else torch.stack(probs), recs)


def draft_vocab(model, n: int) -> torch.Tensor:
    """The first `n` ids of `draft_vocab.json` in the drafter's folder: token ids, most frequent
    first (specexp-distill writes it: how often each id was the target's top-1 on its corpus)."""
    import json
    from pathlib import Path

    path = Path(getattr(model.config, "_name_or_path", "") or ".") / "draft_vocab.json"
    if not path.is_file():
        raise ValueError(f"strategy.proposer.vocab={n} needs {path} (written by specexp-distill); "
                         "use vocab=null for the full vocabulary")
    ids = json.loads(path.read_text())["ids"][:n]
    return torch.tensor(sorted(ids), dtype=torch.long)


def _check_vocab(model, pair, role: str) -> int | None:
    """The drafter must embed every id the context can hold: refuse one whose embedding table is
    smaller than the tokenizer (else the target's tokens crash it mid-run). A table that holds the
    tokenizer but not the target's padded head width is handled: a context with an id past it
    (a padding id the target sampled) gets no drafts. Returns that limit, or None."""
    embeddings = getattr(model, "get_input_embeddings", lambda: None)()
    if embeddings is None:  # a model without an embedding table (e.g. a test's lookup-table LM)
        return None
    rows = embeddings.weight.shape[0]
    tokenizer = getattr(pair, "tokenizer", None)
    needed = len(tokenizer) if tokenizer is not None else pair.vocab_size
    if rows < needed:
        raise ValueError(f"the {role} model embeds {rows} token ids but the target's "
                         f"{'tokenizer has' if tokenizer is not None else 'vocabulary has'} {needed}: the target's "
                         f"tokens would be out of the {role}'s range. Use a {role} with the target's vocabulary")
    return rows if rows < pair.vocab_size else None


def _record(step: DraftStep, policy: LengthPolicy) -> dict:
    """The drafter's side of an analysis record: the entropy the length rule measured at this step
    (the rule's own type, of the distribution it reads; Shannon by entropy.step_probs' convention
    for rules without one), what it is of, the Shannon entropy at T=1 and the top probability at T=1."""
    p1 = entropy.softmax(step.logits)
    if hasattr(policy, "step_entropy"):
        h, of = policy.step_entropy(step), policy.entropy_label(step)
    else:
        h, of = float(entropy.shannon(entropy.step_probs(step))), entropy.label(step)
    return {"position": step.position, "drafter_entropy": h, "drafter_entropy_of": of,
            "drafter_entropy_t1": float(entropy.shannon(p1)), "drafter_top_prob": float(p1.max())}
