"""Train Medusa heads (Cai et al. 2024) for a target, on the target's own replies and hidden
states. The heads and how they draft: specexp/proposers/medusa.py. A run builds them on first use
through model_pair=smollm2-135m__medusa (`build`), or call `build_medusa_heads` directly.

Recipe (deterministic: fixed seeds, fixed data order, a fixed number of steps):
  1. The text and the target's reads are the feature drafter's (specexp/builds/train_feature_drafter.py
     teacher_data): its greedy replies to chat prompts (XSum, GSM8K from sample `skip` on, stdlib
     code stubs, mixed by `reply_mix`) with, at every position p, its last hidden state h_p and
     its top-k next-token distribution; optionally `corpus_tokens` of other text. Cached next to
     the output folder under the same key as the feature drafter's, so a build of either reuses
     the other's reads.
  2. The heads: `num_heads` heads of `num_layers` residual blocks x + SiLU(W x + b) (W, b = 0 at the
     start: the identity), each followed by the target's own LM head, frozen and shared. Head i
     reads h_p and predicts x_{p+2+i}, the token after the target's next one (i = 0) and so on:
     its label is the target's top-k distribution at position p+1+i (renormalised), the soft
     target of self-distillation (Medusa-1 trains on the text's next tokens; on the target's own
     greedy reply they are the argmax of this distribution). Loss per head, summed over heads:
         CE(target top-k at p+1+i, softmax of head_i(h_p) over U)
     U = the `subset` most frequent target top-1 ids united with the batch's top-k ids (a
     cross-entropy over a few thousand ids, not the whole vocabulary). Only the blocks train
     (num_heads * (H^2 + H) parameters): a few minutes on a CPU for SmolLM2-135M.
     Training reads the replies from their drafting positions on (step 3), the corpus throughout.
  3. Held out: `heldout` of the replies, whole, split off before training (and of the corpus
     windows). Measured on the held-out replies' drafting positions (p >= prompt length - 1: the
     first draft round follows the target's read of the prompt), untrained and trained:
     per-head top-1 agreement with the target's greedy token (head 0's is the first draft's
     acceptance), and greedy chain acceptance from every such position (the mean accepted length
     per round, +1 for the target's own token). build.json records them, the curve and the time.
  4. Saved in Hugging Face format (model type specexp_medusa, without a vocabulary projection of
     its own) with the tokenizer, in a temporary sibling folder renamed into place
     (build_cache.build_once): a folder whose build.json records the same parameters is reused.
"""
from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

import torch

from specexp.builds.build_cache import build_once
from specexp.builds.instruction_mix import REPLY_MIX
from specexp.builds.training_utils import train_adamw
from specexp.models.loading import ModelSpec, describe, load_model, load_tokenizer, n_params, resolve_source
from specexp.proposers.medusa import MedusaHeads, MedusaHeadsConfig

log = logging.getLogger(__name__)

RECIPE = 1  # bump when the recipe changes: older builds are then rebuilt, not reused


# ------------------------------------------------------------------------------- 1. the data
def sequences(teacher: dict, heldout: float, seed: int) -> tuple[list[dict], list[dict]]:
    """(held out, training) sequences of the target's reads: each {"hidden" [n, H], "top_ids"
    [n, k], "top_probs" [n, k], "start": the first drafting position, where training and the
    measures begin}. Replies are split whole (train_feature_drafter.split_replies), their drafting
    starts at prompt length - 1 (the prompt's other positions are never drafted from, and are most
    of the text: training on them would double the time); corpus windows (drafting anywhere) are
    split by the same share."""
    from specexp.builds.train_feature_drafter import split_replies

    def seq(r: dict, start: int) -> dict:
        return {"hidden": r["hidden"], "top_ids": r["top_ids"], "top_probs": r["top_probs"], "start": start}

    held_r, train_r = split_replies(teacher["replies"], heldout, seed)
    held = [seq(r, max(0, r["prompt_tokens"] - 1)) for r in held_r]
    train = [seq(r, max(0, r["prompt_tokens"] - 1)) for r in train_r]
    c = teacher.get("corpus")
    if c is not None:
        n = len(c["windows"])
        n_held = min(max(1, int(n * heldout)), n - 1) if heldout > 0 and n > 1 else 0
        for w in range(n):
            r = {"hidden": c["hidden"][w], "top_ids": c["ids"][w], "top_probs": c["probs"][w]}
            (held if w < n_held else train).append(seq(r, 0))
    return held, train


def examples(seqs: list[dict], num_heads: int) -> dict:
    """Training rows, one per position p >= start with a label for head 0 (p + 1 < n): "hidden"
    [N, H] and, per head i, the target's top-k at p+1+i: "ids" / "probs" [N, heads, k] with
    "valid" [N, heads] (False past the sequence's end)."""
    hidden, ids, probs, valid = [], [], [], []
    for s in seqs:
        n, k = s["top_ids"].shape
        pos = torch.arange(s["start"], n - 1)  # positions start .. n-2
        if not len(pos):
            continue
        hidden.append(s["hidden"][pos])
        at = pos[:, None] + 1 + torch.arange(num_heads)[None]  # [m, heads]: p + 1 + i
        ok = at < n
        at = at.clamp_max(n - 1)
        ids.append(s["top_ids"][at].long())
        probs.append(s["top_probs"][at].float() * ok[..., None])
        valid.append(ok)
    if not hidden:
        raise ValueError("medusa: no training text (model_pair.build.replies and corpus_tokens give none here)")
    return {"hidden": torch.cat(hidden), "ids": torch.cat(ids), "probs": torch.cat(probs), "valid": torch.cat(valid)}


# ------------------------------------------------------------------------------- 2. the heads
def init_heads(target, num_heads: int, num_layers: int) -> MedusaHeads:
    """Untrained heads for `target` (identity blocks) on its shared LM head, in float32 on the CPU."""
    w = target.get_output_embeddings().weight
    cfg = MedusaHeadsConfig(hidden_size=w.shape[1], vocab_size=w.shape[0], medusa_num_heads=num_heads,
                            medusa_num_layers=num_layers, own_lm_heads=False,
                            base_model_name_or_path=str(getattr(target.config, "_name_or_path", "") or ""))
    return MedusaHeads(cfg).float().eval()


def loss_terms(heads: MedusaHeads, head_w: torch.Tensor, head_b: torch.Tensor | None, batch: dict,
               subset: torch.Tensor) -> tuple[torch.Tensor, list[float]]:
    """The summed soft cross-entropy of every head over U (module docstring, step 2), and each head's."""
    h = batch["hidden"].float()
    u = torch.unique(torch.cat([subset, batch["ids"].flatten()]))  # sorted: U = subset + the batch's top-k
    w_u, b_u = head_w[u], (None if head_b is None else head_b[u])
    cols = torch.searchsorted(u, batch["ids"])  # [B, heads, k]: the top-k ids' columns in U
    total, per_head = 0.0, []
    for i in range(heads.num_heads):
        ok = batch["valid"][:, i]
        if not bool(ok.any()):
            per_head.append(float("nan"))
            continue
        logq = torch.nn.functional.linear(heads.block_output(i, h[ok]), w_u, b_u).float().log_softmax(-1)
        ce = -(batch["probs"][ok, i] * logq.gather(-1, cols[ok, i])).sum(-1).mean()
        total = total + ce
        per_head.append(ce.item())
    return total, per_head


def train(heads: MedusaHeads, head_w: torch.Tensor, head_b: torch.Tensor | None, data: dict, subset: torch.Tensor,
          p: dict, progress: bool) -> list[dict]:
    """AdamW on the heads' blocks (training_utils.train_adamw); returns the training curve."""
    def batch_loss(idx):
        loss, per_head = loss_terms(heads, head_w, head_b, {k: v[idx] for k, v in data.items()}, subset)
        return loss, {"head_ce": per_head}

    return train_adamw(heads, torch.arange(len(data["hidden"])), batch_loss, p, "medusa: heads learn", progress)


# ----------------------------------------------------------------------------- 3. held-out measures
@torch.inference_mode()
def heldout_measures(heads: MedusaHeads, lm_head, seqs: list[dict]) -> dict:
    """On the drafting positions of `seqs` (p >= start, module docstring step 3): each head's top-1
    agreement with the target's greedy token x_{p+2+i} (its top-1 at p+1+i), and greedy chain
    acceptance with all heads (positions where every head has a label): acceptance_summary."""
    from specexp.builds.train_feature_drafter import acceptance_summary

    k = heads.num_heads
    hits, n = torch.zeros(k), torch.zeros(k)
    accepted = torch.zeros(k + 1)  # accepted[j]: rounds that accepted >= j drafts
    for s in seqs:
        m = s["top_ids"].shape[0]
        pos = torch.arange(s["start"], m - 1)
        if not len(pos):
            continue
        h = s["hidden"][pos].float()
        truth = s["top_ids"][:, 0].long()
        ok_all = torch.ones(len(pos), dtype=torch.bool)
        run = torch.ones(len(pos), dtype=torch.bool)  # every head so far right (the chain still accepted)
        depth = torch.zeros(len(pos))
        full = pos + k < m  # every head has a label here
        for i in range(k):
            at = pos + 1 + i
            valid = at < m
            guess = heads.head_logits(i, h, lm_head).argmax(-1)
            right = valid & (guess == truth[at.clamp_max(m - 1)])
            hits[i] += right[valid].sum()
            n[i] += valid.sum()
            run &= right
            depth += run.float()
            ok_all &= valid
        d = depth[full & ok_all].long()
        for j in range(k + 1):
            accepted[j] += (d >= j).sum()
    return {"top1_agreement_per_head": [round(float(a), 4) for a in (hits / n.clamp_min(1))],
            "positions_per_head": [int(x) for x in n], "chain": acceptance_summary(accepted)}


# --------------------------------------------------------------------------------- the command
def build_medusa_heads(target: Any, out_dir: str, num_heads: int = 4, num_layers: int = 1, replies: int = 300,
                       reply_mix: dict | None = None, article_chars: int = 1000, reply_tokens: int = 128,
                       reply_batch: int = 32, corpus: tuple[str, ...] = (), corpus_tokens: int = 0, skip: int = 500,
                       seq_len: int = 256, topk: int = 8, subset: int = 2048, epochs: float = 2.0, batch: int = 256,
                       lr: float = 1e-3, heldout: float = 0.05, seed: int = 0, threads: int = 0,
                       progress: bool = True, force: bool = False) -> str:
    """Build (or reuse) Medusa heads for `target` (a ModelSpec or its config node) in `out_dir`;
    returns `out_dir`. Parameters: the module docstring and conf/model_pair/smollm2-135m__medusa.yaml
    (`batch`: positions per step; `seq_len`: the corpus windows' length)."""
    from specexp.builds.train_feature_drafter import _data_key, _teacher_cache

    spec = target if isinstance(target, ModelSpec) else ModelSpec(**dict(target))
    resolved = resolve_source(spec)
    params = {"recipe": RECIPE, "target": describe(resolved), "num_heads": num_heads, "num_layers": num_layers,
              "replies": replies, "reply_mix": dict(reply_mix or REPLY_MIX), "article_chars": article_chars,
              "reply_tokens": reply_tokens, "reply_batch": reply_batch, "corpus": list(corpus),
              "corpus_tokens": corpus_tokens, "skip": skip, "seq_len": seq_len, "topk": topk, "subset": subset,
              "epochs": epochs, "batch": batch, "lr": lr, "heldout": heldout, "seed": seed}
    out = Path(out_dir).expanduser()
    cache = _teacher_cache(out, _data_key(params))  # the feature drafter's key: the same reads are shared
    return build_once(out, params, lambda tmp: _build(resolved, tmp, params, cache, progress), force, threads)


def _build(spec: ModelSpec, tmp: Path, p: dict, cache: Path | None, progress: bool) -> dict:
    from specexp.builds.train_feature_drafter import teacher_data

    t0 = time.perf_counter()
    torch.manual_seed(p["seed"])
    tok = load_tokenizer(spec)
    target = load_model(spec, torch.float32, torch.device("cpu"))
    teacher = teacher_data(target, tok, {**p, "batch": 8}, cache, progress)  # batch: the corpus reads' windows
    held, train_seqs = sequences(teacher, p["heldout"], p["seed"])
    data = examples(train_seqs, p["num_heads"])
    t_data = time.perf_counter() - t0
    lm_head = target.get_output_embeddings()
    for q in lm_head.parameters():
        q.requires_grad_(False)
    head_w, head_b = lm_head.weight.detach(), (None if getattr(lm_head, "bias", None) is None else lm_head.bias.detach())
    counts = torch.bincount(data["ids"][:, 0, 0], minlength=head_w.shape[0])
    subset = counts.argsort(descending=True, stable=True)[: p["subset"]]
    subset = torch.sort(subset[counts[subset] > 0]).values
    heads = init_heads(target, p["num_heads"], p["num_layers"])
    before = heldout_measures(heads, lm_head, held)
    t1 = time.perf_counter()
    curve = train(heads, head_w, head_b, data, subset, p, progress)
    t_train = time.perf_counter() - t1
    after = heldout_measures(heads, lm_head, held)
    heads.save_pretrained(tmp)
    tok.save_pretrained(tmp)
    info = {
        "params": p,
        "corpus_documents": teacher["documents"],
        "positions": {"train": len(data["hidden"]), "heldout_sequences": len(held)},
        "parameters": {"target": n_params(target), "heads": n_params(heads)},
        "steps": curve[-1]["step"] if curve else 0,
        "training_curve": curve,
        "heldout_top1_agreement_per_head": {"untrained": before["top1_agreement_per_head"],
                                            "trained": after["top1_agreement_per_head"],
                                            "positions": after["positions_per_head"]},
        "heldout_chain_acceptance": {"untrained": before["chain"], "trained": after["chain"]},
        "seconds": {"data": round(t_data, 1), "target_reads": round(teacher.get("read_seconds", 0.0), 1),
                    "train": round(t_train, 1), "total": round(time.perf_counter() - t0, 1)},
        "threads": torch.get_num_threads(),
    }
    a, b = before["top1_agreement_per_head"], after["top1_agreement_per_head"]
    print(f"medusa: {p['num_heads']} heads ({n_params(heads) / 1e6:.2f}M parameters), held-out head-1 top-1 agreement "
          f"{a[0]:.3f} -> {b[0]:.3f}; chain of {p['num_heads']}: {after['chain']['mean_accepted_length']:.2f} tokens "
          f"per target forward; {info['seconds']['total']:.0f} s")
    return info
