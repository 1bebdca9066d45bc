"""`specexp-distill`: train a small drafter for any target, against the target's own distributions.

    specexp-distill                                   # the SmolLM2-135M drafter (model_pair smollm2-135m__distilled)
    specexp-distill model_pair=my_pair                # any pair whose `build` is distill_drafter
    specexp-distill model_pair.build.layers=2 model_pair.build.tokens=50000

(the command line: specexp/experiment/build_commands.py)

Recipe (deterministic: fixed seeds, fixed data order, a fixed number of steps):
  1. Text the target reads and writes: its own greedy replies to chat prompts (XSum articles to
     summarise, GSM8K questions; sequence-level distillation: what a drafter must predict when
     the target answers), Wikipedia (WikiText-2), news articles with their summaries (XSum),
     grade-school maths with worked answers (GSM8K), both in the target's chat template when it
     has one, and Python code (the standard library). The evaluation prompts are left out: XSum
     and GSM8K give only samples from `skip` on (the datasets select the first N), WikiText only
     its second half. Tokenized with the target's tokenizer, cut into windows of `seq_len`.
  2. The target reads every window once; its top-`topk` next-token probabilities (renormalised)
     and its last hidden state at every position are kept: the distillation targets.
  3. The drafter starts as the target's first `layers` decoder layers with the target's
     embeddings, final norm and LM head (the layer-truncated self-drafter), all copied. The
     embeddings / head stay frozen (the drafter keeps the target's vocabulary geometry); the
     layers and the final norm learn to minimise the cross-entropy between the target's top-k
     distribution and the drafter's distribution, i.e. KL(target || drafter) up to a constant,
     plus the relative squared error between the two models' last hidden states.
  4. Held-out windows measure top-1 agreement with the target (the greedy acceptance rate of a
     one-token draft) before and after training; build.json records both.
  5. Saved in Hugging Face format with the target's tokenizer, plus `draft_vocab.json` (token ids
     by how often they were the target's top-1, for DraftModel(vocab=N)), in a temporary sibling folder
     renamed into place at the end: an interrupted build leaves nothing that looks finished. A
     folder whose build.json records the same parameters is reused at once.
"""
from __future__ import annotations

import json
import logging
import math
import random
import time
from pathlib import Path
from typing import Any

import torch

from specexp.builds.build_cache import build_once
from specexp.builds.instruction_mix import SUMMARIZE, reply_prompts, rows, shared_file
from specexp.builds.training_utils import warmup_cosine
from specexp.models.loading import ModelSpec, describe, load_model, load_tokenizer, n_params, resolve_source

log = logging.getLogger(__name__)

RECIPE = 3  # bump when the recipe changes: older builds are then rebuilt, not reused


# ---------------------------------------------------------------------------------- 1. the text
def _chat(tok, user: str, assistant: str) -> str:
    if not getattr(tok, "chat_template", None):
        return f"{user}\n\n{assistant}"
    text = tok.apply_chat_template([{"role": "user", "content": user}, {"role": "assistant", "content": assistant}],
                                   tokenize=False)
    bos = getattr(tok, "bos_token", None)
    return text[len(bos):] if bos and text.startswith(bos) else text


def corpus_documents(tok, sources: list[str], skip: int) -> tuple[dict[str, list[str]], dict]:
    """Documents per source (see the module docstring) and what was used."""
    docs: dict[str, list[str]] = {}
    info: dict[str, Any] = {}
    for src in sources:
        if src == "wikitext":
            p = shared_file("wikitext-2-raw/wiki.test.raw")
            if p:
                lines = [ln for ln in p.read_text(encoding="utf-8").splitlines() if ln.strip()]
                docs[src] = lines[len(lines) // 2:]  # the first half is the evaluation's
        elif src == "xsum":
            docs[src] = [_chat(tok, SUMMARIZE + r["document"], r["summary"]) for r in rows("xsum/test.jsonl", skip)]
        elif src == "gsm8k":
            docs[src] = [_chat(tok, r["question"], r["answer"]) for r in rows("gsm8k/test.jsonl", skip)]
        elif src == "code":
            from specexp.builds.corpus import load_corpus

            docs[src], _ = load_corpus(None, max_bytes=2_000_000)
        else:
            p = Path(src).expanduser()
            if not p.is_file():
                raise ValueError(f"distill corpus source {src!r}: not wikitext/xsum/gsm8k/code, nor a file")
            docs[src] = [p.read_text(encoding="utf-8")]
        info[src] = len(docs.get(src, []))
    docs = {k: v for k, v in docs.items() if v}
    if not docs:
        raise ValueError(f"distill: none of the corpus sources {sources} has text here "
                         "(wikitext/xsum/gsm8k need ../shared/data; 'code' always works)")
    return docs, info


@torch.inference_mode()
def target_replies(target, tok, prompts: list[str], max_new_tokens: int, batch: int, progress: bool) -> list[str]:
    """The target's own greedy replies, in the chat template (prompt + reply): the text a drafter
    most needs to predict (sequence-level distillation). Batched, left-padded."""
    from tqdm.auto import tqdm

    if not prompts or not getattr(tok, "chat_template", None):
        return []
    side, tok.padding_side = tok.padding_side, "left"
    pad = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
    texts = [tok.apply_chat_template([{"role": "user", "content": q}], tokenize=False, add_generation_prompt=True)
             for q in prompts]
    out = []
    try:
        for i in tqdm(range(0, len(texts), batch), desc="distill: target replies", disable=not progress, leave=False):
            enc = tok(texts[i: i + batch], return_tensors="pt", padding=True, add_special_tokens=False)
            gen = target.generate(**enc, max_new_tokens=max_new_tokens, do_sample=False, pad_token_id=pad,
                                  top_k=None, top_p=None, temperature=None)
            for t, g in zip(texts[i: i + batch], gen[:, enc["input_ids"].shape[1]:].tolist()):
                if tok.eos_token_id in g:  # the reply ends at its EOS (kept); padding follows
                    g = g[: g.index(tok.eos_token_id) + 1]
                out.append(t + tok.decode([x for x in g if x != pad or x == tok.eos_token_id]))
    finally:
        tok.padding_side = side
    return out


def windows(tok, docs: dict[str, list[str]], tokens: int, seq_len: int, seed: int,
            shares: dict[str, int] | None = None) -> torch.Tensor:
    """[N, seq_len] token windows, `shares[source]` tokens from each source (default: an equal share
    of `tokens`), in a fixed order. The text ends with EOS (the chat turns with their own)."""
    eos = tok.eos_token or ""
    out = []
    for name in sorted(docs):
        share = shares[name] if shares and name in shares else tokens // len(docs)
        items = list(docs[name])
        random.Random(seed).shuffle(items)
        ids: list[int] = []
        for d in items:
            ids += tok(d if name == "replies" else d + eos, add_special_tokens=False)["input_ids"]
            if len(ids) >= share:
                break
        n = min(len(ids), share) // seq_len
        out.append(torch.tensor(ids[: n * seq_len]).view(n, seq_len))
    w = torch.cat(out)
    return w[torch.randperm(len(w), generator=torch.Generator().manual_seed(seed))]


def training_windows(target, tok, p: dict, progress: bool) -> tuple[torch.Tensor, dict]:
    """The build's text as [N, seq_len] windows, and the documents used per source: the corpus
    (`p["corpus"]`, XSum/GSM8K from sample `p["skip"]` on) and, with `p["replies"]`, the target's own
    greedy chat replies, which take `reply_share` of `tokens` (the rest split evenly)."""
    docs, used = corpus_documents(tok, p["corpus"], p["skip"])
    if p["replies"]:
        prompts = reply_prompts(p["skip"], p["replies"])
        docs["replies"] = target_replies(target, tok, prompts, p["reply_tokens"], p["reply_batch"], progress)
        used["replies"] = len(docs["replies"])
        docs = {k: v for k, v in docs.items() if v}
    shares = None
    if "replies" in docs:
        n_rep = int(p["tokens"] * p["reply_share"])
        shares = {k: (n_rep if k == "replies" else (p["tokens"] - n_rep) // max(1, len(docs) - 1)) for k in docs}
    return windows(tok, docs, p["tokens"], p["seq_len"], p["seed"], shares), used


# ------------------------------------------------------------------------------ 2. the teacher
@torch.inference_mode()
def teacher_read(target, w: torch.Tensor, topk: int, batch: int, progress: bool):
    """At every position: the target's top-k next-token ids, their renormalised probabilities, and
    its last hidden state (after the final norm: what the LM head reads)."""
    from tqdm.auto import tqdm

    ids = torch.empty(*w.shape, topk, dtype=torch.int32)
    probs = torch.empty(*w.shape, topk, dtype=torch.float16)
    hidden = torch.empty(*w.shape, target.config.hidden_size, dtype=torch.float16)
    for i in tqdm(range(0, len(w), batch), desc="distill: target reads", disable=not progress, leave=False):
        h = target.get_decoder()(input_ids=w[i: i + batch]).last_hidden_state
        p, j = target.get_output_embeddings()(h).float().softmax(-1).topk(topk, dim=-1)
        ids[i: i + batch], probs[i: i + batch] = j.int(), (p / p.sum(-1, keepdim=True)).half()
        hidden[i: i + batch] = h.half()
    return ids, probs, hidden


# ------------------------------------------------------------------------------- 3. the drafter
def init_drafter(target, layers: int):
    """A separate model: the target's first `layers` layers, embeddings, final norm and head (copied)."""
    import copy

    from specexp.models.loading import truncate_layers

    short = truncate_layers(target, layers)
    config = copy.deepcopy(short.config)
    for key in ("quantization_config", "_name_or_path"):  # a GGUF origin is not the drafter's
        config.__dict__.pop(key, None)
    drafter = type(target)(config)
    drafter.load_state_dict(short.state_dict())
    return drafter.eval()


def _loss(drafter, x, t_ids, t_probs, t_hidden, hidden_weight: float) -> torch.Tensor:
    """Per position, mean: the cross-entropy of the drafter's next-token distribution against the
    target's top-k distribution (= KL(target || drafter) + const), plus `hidden_weight` x the
    squared error between the two last hidden states relative to the target's mean square (a
    dense signal on the representation the shared LM head reads, as in EAGLE's feature loss)."""
    h = drafter.get_decoder()(input_ids=x).last_hidden_state
    logq = drafter.get_output_embeddings()(h).float().log_softmax(-1)
    ce = -(t_probs.float() * logq.gather(-1, t_ids.long())).sum(-1).mean()
    t = t_hidden.float()
    return ce + hidden_weight * ((h - t) ** 2).mean() / (t ** 2).mean()


@torch.inference_mode()
def agreement(drafter, w: torch.Tensor, t_ids: torch.Tensor, batch: int) -> float:
    """Share of positions where the drafter's argmax is the target's argmax."""
    hits = 0
    for i in range(0, len(w), batch):
        hits += (drafter(input_ids=w[i: i + batch]).logits.argmax(-1) == t_ids[i: i + batch, :, 0]).sum().item()
    return hits / w.numel()


def train(drafter, w, t_ids, t_probs, t_hidden, steps: int, batch: int, lr: float, hidden_weight: float, seed: int,
          progress: bool) -> list[float]:
    from tqdm.auto import tqdm

    frozen = {id(p) for m in (drafter.get_input_embeddings(), drafter.get_output_embeddings()) for p in m.parameters()}
    params = [p for p in drafter.parameters() if id(p) not in frozen]
    for p in drafter.parameters():
        p.requires_grad_(id(p) not in frozen)
    opt = torch.optim.AdamW(params, lr=lr, betas=(0.9, 0.95), weight_decay=0.0)
    gen = torch.Generator().manual_seed(seed)
    order = torch.cat([torch.randperm(len(w), generator=gen) for _ in range(math.ceil(steps * batch / len(w)) + 1)])
    losses = []
    drafter.train()
    bar = tqdm(range(steps), desc="distill: drafter learns", disable=not progress, leave=False)
    for step in bar:
        idx = order[step * batch: (step + 1) * batch]
        for g in opt.param_groups:  # linear warm-up, cosine decay to 10%
            g["lr"] = warmup_cosine(step, steps, lr)
        loss = _loss(drafter, w[idx], t_ids[idx], t_probs[idx], t_hidden[idx], hidden_weight)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        losses.append(loss.item())
        bar.set_postfix(loss=f"{losses[-1]:.3f}")
    drafter.eval()
    for p in drafter.parameters():
        p.requires_grad_(False)
    return losses


# --------------------------------------------------------------------------------- the command
def distill_drafter(target: Any, out_dir: str, layers: int = 4,
                    corpus: tuple[str, ...] = ("wikitext", "xsum", "gsm8k", "code"), skip: int = 500,
                    tokens: int = 120_000, seq_len: int = 256, topk: int = 32, epochs: float = 6.0,
                    batch: int = 8, lr: float = 1e-3, hidden_weight: float = 1.0, replies: int = 0,
                    reply_tokens: int = 128, reply_batch: int = 16, reply_share: float = 0.5, heldout: float = 0.05, seed: int = 0,
                    threads: int = 0, progress: bool = True, force: bool = False) -> str:
    """Build (or reuse) a distilled drafter for `target` (a ModelSpec or its config node) in
    `out_dir`; returns `out_dir`. Parameters: see the module docstring and conf/model_pair/
    smollm2-135m__distilled.yaml."""
    spec = target if isinstance(target, ModelSpec) else ModelSpec(**dict(target))
    resolved = resolve_source(spec)
    params = {"recipe": RECIPE, "target": describe(resolved), "layers": layers, "corpus": list(corpus),
              "skip": skip, "tokens": tokens, "seq_len": seq_len, "topk": topk, "epochs": epochs,
              "batch": batch, "lr": lr, "hidden_weight": hidden_weight,
              "replies": replies, "reply_tokens": reply_tokens, "reply_batch": reply_batch,
              "reply_share": reply_share, "heldout": heldout, "seed": seed}
    return build_once(out_dir, params, lambda tmp: _build(resolved, tmp, params, progress), force, threads)


def _build(spec: ModelSpec, tmp: Path, p: dict, progress: bool) -> dict:
    t0 = time.perf_counter()
    torch.manual_seed(p["seed"])
    tok = load_tokenizer(spec)
    target = load_model(spec, torch.float32, torch.device("cpu"))
    w, used = training_windows(target, tok, p, progress)
    n_held = max(1, int(len(w) * p["heldout"]))
    t_ids, t_probs, t_hidden = teacher_read(target, w, p["topk"], p["batch"], progress)
    t_read = time.perf_counter() - t0
    drafter = init_drafter(target, p["layers"])
    train_w, held_w = w[n_held:], w[:n_held]
    before = agreement(drafter, held_w, t_ids[:n_held], p["batch"])
    steps = max(1, round(p["epochs"] * len(train_w) / p["batch"]))
    losses = train(drafter, train_w, t_ids[n_held:], t_probs[n_held:], t_hidden[n_held:], steps, p["batch"], p["lr"],
                   p["hidden_weight"], p["seed"], progress)
    after = agreement(drafter, held_w, t_ids[:n_held], p["batch"])
    drafter.save_pretrained(tmp)
    tok.save_pretrained(tmp)
    counts = torch.bincount(t_ids[..., 0].flatten().long())
    order = [i for i in counts.argsort(descending=True, stable=True).tolist() if counts[i] > 0]
    (tmp / "draft_vocab.json").write_text(json.dumps({  # for DraftModel(vocab=N): a subset head
        "about": "token ids by how often they were the target's top-1 on the distillation corpus",
        "ids": order, "counts": [int(counts[i]) for i in order]}))
    info = {
        "params": p,
        "corpus_documents": used,
        "windows": {"train": len(train_w), "heldout": n_held, "tokens": w.numel()},
        "parameters": {"target": n_params(target), "drafter": n_params(drafter)},
        "steps": steps,
        "loss": {"first": sum(losses[:10]) / min(10, len(losses)), "last": sum(losses[-10:]) / min(10, len(losses))},
        "heldout_top1_agreement": {"untrained": before, "distilled": after},
        "seconds": {"target_reads": round(t_read, 1), "total": round(time.perf_counter() - t0, 1)},
    }
    log.info("distilled drafter: top-1 agreement with the target %.3f -> %.3f (held out), %.0f s",
             before, after, info["seconds"]["total"])
    print(f"distill: {p['layers']}-layer drafter, held-out top-1 agreement {before:.3f} (untrained) -> "
          f"{after:.3f} (distilled), {info['seconds']['total']:.0f} s")
    return info
