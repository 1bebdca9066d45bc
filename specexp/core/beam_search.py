"""Beam search as a baseline decoding method (`strategy=beam`; the third generation strategy of
romsto/Speculative-Decoding): the target alone, `num_beams` hypotheses decoded as one batch over a
shared KV cache that is reordered after every step. Deterministic; it is not greedy decoding, so a run gets no `matches_baseline`.

The search is transformers' (`generate(num_beams=..., do_sample=False)`, 4.50+ / 5.x), so that the
same settings give the same output (tests/test_beam.py checks it), one step at a time:
  1. score every continuation of every running beam: its log-probability so far + log p(token);
  2. keep the top K = max(2, 1 + number of EOS ids) * num_beams candidates (enough that num_beams
     of them can go on after some end);
  3. a candidate among the top num_beams that ends (an EOS id, or the budget is spent) becomes a
     finished hypothesis scored sum log p / generated_length ** length_penalty; the best
     num_beams finished ones are kept;
  4. the best num_beams candidates that did not end run on (their cache rows are gathered);
  5. stop when no running beam can beat the worst kept hypothesis (`early_stopping=false`: judged
     at the current length; "never": at the longest possible length when length_penalty > 0),
     when num_beams hypotheses are finished (`early_stopping=true`), or at the budget.
The output is the best finished hypothesis. Stop strings are not part of the search (they are not
tokens); the chosen sequence is cut after its first stop, as every strategy's output is.

Recorded like any run: one "round" per sample (the output is only known when the search ends, so
each token's latency is the sample's time over its tokens), one target forward per step (batched
over the beams), no drafts.
"""
from __future__ import annotations

import time

import torch

from specexp.core.decode import Generation
from specexp.core.stopping import Stopper
from specexp.models.cached_lm import CachedLM, cache_arg, cache_of
from specexp.models.loading import sync
from specexp.models.sampling import Sampling

NEG = -1.0e9  # the score of what may not be chosen (as transformers)


class BeamSearch:
    """num_beams: hypotheses kept; length_penalty: finished scores are divided by length ** this
    (> 0 favours longer outputs, < 0 shorter); early_stopping: false (stop when the best running
    beam, at its current length, cannot beat the worst kept hypothesis), true (stop as soon as
    num_beams hypotheses are finished) or "never" (the exact bound)."""

    def __init__(self, num_beams: int = 4, length_penalty: float = 1.0, early_stopping: bool | str = False):
        if num_beams < 1:
            raise ValueError(f"strategy.search.num_beams must be >= 1, got {num_beams}")
        if early_stopping not in (True, False, "never"):
            raise ValueError(f"strategy.search.early_stopping must be true, false or never, got {early_stopping!r}")
        self.num_beams, self.length_penalty, self.early_stopping = num_beams, float(length_penalty), early_stopping

    def _forward(self, model, ids: torch.Tensor, cache, out: Generation):
        """One batched forward of ids [B, n] after `cache`; the last position's float32 logits [B, V]."""
        sync(ids.device)
        t0 = time.perf_counter()
        res = model(input_ids=ids, **cache_arg(model, cache), use_cache=True, logits_to_keep=1)
        sync(ids.device)
        dt = time.perf_counter() - t0
        out.target_forwards += 1
        out.model_forward_seconds["target"] = out.model_forward_seconds.get("target", 0.0) + dt
        if cache is None:
            out.model_prefills["target"], out.model_prefill_seconds["target"] = 1, dt
        return res.logits[:, -1].float(), cache_of(res)

    @torch.inference_mode()
    def generate(self, target: CachedLM, prompt: torch.Tensor, max_new_tokens: int, stopper: Stopper,
                 sampling: Sampling | None = None) -> Generation:
        """The best hypothesis after `prompt` [L] within `max_new_tokens`, as a Generation."""
        if sampling is not None and not sampling.greedy:
            raise ValueError(f"strategy=beam is deterministic but sampling.temperature={sampling.temperature}; "
                             "use sampling=greedy")
        model = target.model
        if getattr(model.config, "is_encoder_decoder", False):
            raise ValueError("strategy=beam supports decoder-only targets (this one is encoder-decoder)")
        B, lp, device = self.num_beams, self.length_penalty, prompt.device
        eos = torch.tensor(sorted(stopper.eos), dtype=torch.long, device=device)
        K = max(2, 1 + eos.numel()) * B
        out = Generation()
        sync(device)
        t_start = time.perf_counter()
        # The prompt once; its cache copied to the B beams. Only beam 0 is live at the start.
        logits, cache = self._forward(model, prompt[None], None, out)
        cache.reorder_cache(torch.zeros(B, dtype=torch.long, device=device))
        logits = logits.expand(B, -1)
        running = torch.zeros(B, 0, dtype=torch.long, device=device)  # generated tokens per beam
        running_scores = torch.full((B,), NEG, device=device)
        running_scores[0] = 0.0
        done_scores = torch.full((B,), NEG, device=device)  # kept finished hypotheses, best first
        done_tokens: list[list[int]] = [[] for _ in range(B)]
        done_full = torch.zeros(B, dtype=torch.bool, device=device)
        improvable = True
        for step in range(max_new_tokens):
            # 1-2. Every beam's continuations, scored by their total log-probability; the top K.
            scores = torch.log_softmax(logits, -1) + running_scores[:, None]  # [B, V]
            V = scores.shape[-1]
            top, idx = scores.flatten().topk(K)
            beam, tok = idx // V, idx % V
            seqs = torch.cat([running[beam], tok[:, None]], 1)  # [K, step + 1]
            ends = torch.isin(tok, eos) | (step + 1 == max_new_tokens)
            # 3. Finished hypotheses: the top B candidates that end, with the length penalty.
            final = top / (step + 1) ** lp
            may_add = ends & (torch.arange(K, device=device) < B)
            if not improvable or (self.early_stopping is True and bool(done_full.all())):
                may_add = torch.zeros_like(may_add)  # no hypothesis can enter any more
            final = torch.where(may_add, final, final + NEG)
            merged = torch.cat([done_scores, final]).topk(B).indices  # the kept ones first, then the candidates
            done_scores = torch.cat([done_scores, final])[merged]
            done_full = torch.cat([done_full, may_add])[merged]
            done_tokens = [done_tokens[j] if j < B else seqs[j - B].tolist() for j in merged.tolist()]
            # 4. The best B candidates that did not end run on; their cache rows follow them.
            alive = top + ends.float() * NEG
            keep = alive.topk(B).indices
            running, running_scores = seqs[keep], alive[keep]
            cache.reorder_cache(beam[keep])
            # 5. Stop when the running beams cannot improve on the kept hypotheses.
            length = max_new_tokens if (self.early_stopping == "never" and lp > 0) else step + 1
            worst = done_scores.min() if bool(done_full.all()) else torch.tensor(NEG, device=device)
            improvable = improvable and bool(running_scores[0] / length ** lp > worst)
            if not improvable or bool(ends.all()) or (self.early_stopping is True and bool(done_full.all())):
                break
            logits, cache = self._forward(model, running[:, -1:], cache, out)
        tokens = done_tokens[0]
        cut = stopper.first_stop(tokens, 0)
        out.tokens = tokens if cut is None else tokens[: cut + 1]
        sync(device)
        out.wall_time = time.perf_counter() - t_start
        out.round_times, out.drafted, out.accepted, out.emitted, out.rejected = \
            [out.wall_time], [0], [0], [len(out.tokens)], [[]]
        out.model_forwards = {"target": out.target_forwards}
        return out


def from_strategy(cfg) -> BeamSearch | None:
    """The strategy's own search (`strategy.search`, a `_target_` node), or None (the decode loop)."""
    node = cfg.get("search") if cfg is not None else None
    if node is None:
        return None
    from hydra.utils import instantiate

    search = instantiate(node, _convert_="all")
    if not hasattr(search, "generate"):
        raise TypeError(f"strategy.search must build a search with a generate() method, got {type(search).__name__}")
    return search
