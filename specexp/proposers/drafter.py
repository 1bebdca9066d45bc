from __future__ import annotations

import torch

from specexp.length import Decision, DraftStep, LengthPolicy
from specexp.models import CachedLM, SubsetHeadLM, cached_lm
from specexp.proposers.base import Draft, Proposer
from specexp.sampling import Sampling


class DraftModel(Proposer):
    """A small causal LM drafting token by token with its own KV cache."""

    def __init__(self, model: str = "drafter", vocab: int | None = None):
        self.model = model  # which model of the pair drafts (the pair's `drafter`)
        self.vocab = vocab  # draft among the N tokens of the drafter's draft_vocab.json only (null = all)
        self.lm: CachedLM | None = None

    def bind(self, pair) -> "DraftModel":
        model = pair.get(self.model)
        if self.vocab:
            self.lm = SubsetHeadLM(model, draft_vocab(model, self.vocab), vocab_size=pair.vocab_size)
        else:
            self.lm = cached_lm(model, vocab_size=pair.vocab_size)
        return self

    @property
    def forwards(self) -> int:
        return self.lm.forwards

    @property
    def cached_models(self) -> dict[str, CachedLM]:
        """The models this proposer runs, by role (per-model forward counts and times)."""
        return {self.model: self.lm}

    def reset(self, prompt: torch.Tensor) -> None:
        self.lm.start(prompt)

    def propose(self, tokens, max_len, policy: LengthPolicy, sampling: Sampling, generator) -> Draft:
        self._start = tokens.shape[0]
        feed = tokens[self.lm.length:]  # what the cache has not seen: the prompt, or the last 1-2 tokens
        out, probs, recs = [], [], []
        for j in range(max_len):
            logits = self.lm.forward(feed, keep=1)[-1]
            q = sampling.probs(logits)
            tok = sampling.pick(q, generator)
            decision = (policy.decide(DraftStep(j, logits, q, tok, tokens, out, sampling.greedy)) if policy.needs_steps
                        else Decision.CONTINUE)
            if decision is Decision.STOP_BEFORE:
                break
            out.append(tok)
            probs.append(q)
            if self.records:
                recs.append(_record(j, logits, policy))
            if decision is Decision.STOP_AFTER:
                break
            feed = tok.view(1)
        if not out:
            return Draft(tokens.new_empty(0), None)
        # The cache now holds tokens + drafts[:-1]; the last draft was never fed.
        return Draft(torch.stack(out), None if sampling.greedy else torch.stack(probs), recs)

    def observe(self, n_accepted: int) -> None:
        # keep the context and the accepted drafts; a fully accepted draft leaves the cache one
        # behind (the last draft is fed next round together with the target's token)
        self.lm.crop(min(self.lm.length, self._start + n_accepted))


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


def _record(position: int, logits: torch.Tensor, policy: LengthPolicy) -> dict:
    """The drafter's side of an analysis record: the policy's own entropy measure when it has one
    (else Shannon, nats, temperature 1) and the top probability."""
    p = logits.float().softmax(-1)
    if hasattr(policy, "entropy"):
        h = float(policy.entropy(logits))
    else:
        h = float(-(p * p.clamp_min(1e-30).log()).sum())
    return {"position": position, "drafter_entropy": h, "drafter_top_prob": float(p.max())}
