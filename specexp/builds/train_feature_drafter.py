"""`specexp-eagle`: train a feature drafter (EAGLE, Li et al. 2024) for a target, on the target's own
hidden states. The drafter and how it drafts: specexp/proposers/feature_drafter.py.

    specexp-eagle                                    # SmolLM2-135M (model_pair smollm2-135m__eagle)
    specexp-eagle model_pair.build.replies=100       # a smaller build
    specexp-eagle model_pair.build.epochs=2          # (the command line: specexp/experiment/build_commands.py)

Recipe (deterministic: fixed seeds, fixed data order, a fixed number of steps):
  1. The text is the target's own: its greedy replies to `replies` chat prompts of the kinds in
     `reply_mix` (specexp/builds/instruction_mix.py; by default all ten: summaries, headlines,
     extraction, translation, rewriting, continuation, questions about a passage, multiple
     choice, arithmetic, code), from the offline data the evaluation leaves (XSum and GSM8K from
     sample `skip` on, WikiText's second half, MMLU's validation split). Greedy acceptance asks
     the drafter to predict exactly this text: the target's argmax after its own tokens.
     Optionally `corpus_tokens` of other text (`corpus`).
  2. The target's reads are kept while it writes (replies.replies_with_reads: a hook on its final norm):
     at every position p of prompt + reply its last hidden state f_p (what its LM head reads) and
     its top-k next-token distribution; the corpus text is read once (distill.teacher_read). Both
     are cached next to the output folder (`.<name>-teacher-<key>.pt`): a crash, a rerun with
     other training settings, or a build of the same data into a sibling folder does not generate again.
  3. The drafter: fc([f_{p-1} ; e(x_p)]) -> one decoder layer (initialised from the target's last)
     -> final norm (the target's) -> f^_p, e = the target's embeddings, frozen; f_{-1} = 0.
     Loss per position, mean:  feature_weight * smoothL1(f^_p, f_p)
                             + token_weight * CE(target top-k at p, softmax of head(f^_p) over U)
     with head = the target's frozen LM head and U = the `subset` most frequent target top-1 ids
     united with the batch's top-k ids (a cross-entropy over ~10k ids, not 49k). `unroll` = 2
     runs the drafter a second time on its own predicted features ([f^_{p-1} ; e(x_p)]), as it
     drafts from the second token on, and adds that step's loss.
  4. Held out: `heldout` of the replies, whole, split off before the rest is cut into windows (no
     window holds a held-out reply: build.json's heldout_leak_check), and `heldout` of the corpus
     windows. Each held-out reply is read alone, from its first token, as decoding reads it, and
     measured where drafting is: at its reply positions (heldout_reply_top1_agreement, teacher-
     forced: the first draft's acceptance; by source too; heldout_reply_chain_acceptance: greedy
     chains at gamma 4 from every reply position, acceptance per position and the mean accepted
     length). Its prompt positions, which drafting never faces, are counted apart
     (heldout_prompt_top1_agreement); held-out corpus windows too (heldout_corpus_*). build.json
     records them, the training curve and the time.
  5. Saved in Hugging Face format (model type specexp_eagle) with the tokenizer and
     draft_vocab.json (ids by how often they were the target's top-1, for `vocab=N`), in a
     temporary sibling folder renamed into place: an interrupted build leaves nothing that looks
     finished. A folder whose build.json records the same parameters is reused at once.
"""
from __future__ import annotations

import hashlib
import json
import logging
import time
from pathlib import Path
from typing import Any

import torch

from specexp.builds.build_cache import build_once
from specexp.builds.instruction_mix import BROAD_MIX, reply_turns
from specexp.builds.target_replies import chat_ids, replies_with_reads
from specexp.builds.train_distilled_drafter import teacher_read
from specexp.builds.training_utils import train_adamw
from specexp.models.loading import ModelSpec, describe, load_model, load_tokenizer, n_params, resolve_source
from specexp.proposers.feature_drafter import FeatureDrafterConfig, FeatureDrafterModel, FeatureLM

log = logging.getLogger(__name__)

RECIPE = 4  # bump when the recipe changes: older builds are then rebuilt, not reused
# 4: held out by reply (whole replies, before windowing), measured on reply positions (build.json's heldout_reply_*)
DATA_KEYS = ("target", "replies", "reply_mix", "article_chars", "reply_tokens", "reply_batch", "corpus",
             "corpus_tokens", "skip", "seq_len", "topk", "seed")
DATA_FORMAT = 2  # what the teacher cache holds (2: the replies one by one, not yet windowed); part of its key


# ------------------------------------------------------------------------------- 1-2. the data
def pack(reads: list[dict], seq_len: int, seed: int) -> dict:
    """The replies end to end in a seeded order, cut into [N, seq_len] windows (the tail that fills
    no window is dropped), as the training data: windows, top-k ids / probs, hidden states, and
    `reply_of`: at each position, the index of the reply it comes from (its "index", else its place
    in `reads`)."""
    order = torch.randperm(len(reads), generator=torch.Generator().manual_seed(seed)).tolist()
    cat = {k: torch.cat([reads[i][k] for i in order]) for k in ("ids", "top_ids", "top_probs", "hidden")}
    of = torch.cat([torch.full((len(reads[i]["ids"]),), reads[i].get("index", i), dtype=torch.long) for i in order])
    n = cat["ids"].shape[0] // seq_len
    return {"windows": cat["ids"][: n * seq_len].view(n, seq_len), "reply_of": of[: n * seq_len].view(n, seq_len),
            **{k: cat[src][: n * seq_len].view(n, seq_len, -1)
               for k, src in (("ids", "top_ids"), ("probs", "top_probs"), ("hidden", "hidden"))}}


def teacher_data(target, tok, p: dict, cache: Path | None, progress: bool) -> dict:
    """What the target wrote and read, not yet split or windowed: "replies", its replies to
    `replies` chat prompts read while it writes them (each with its "index" in prompt order and
    its prompt's "source"), and "corpus", `corpus_tokens` of `corpus` text it reads
    (distill.teacher_read) as windows (None without). From `cache` when it holds them (written
    atomically after the reads)."""
    from specexp.builds.train_distilled_drafter import corpus_documents, windows

    if cache is not None and cache.is_file():
        return torch.load(cache)
    t0 = time.perf_counter()
    data, used = {"replies": [], "corpus": None}, {}
    if p["replies"]:
        turns = reply_turns(p["skip"], p["replies"], p["reply_mix"], p["article_chars"])  # (kind, user turn)
        kinds, texts = [k for k, _ in turns], [q for _, q in turns]
        pad = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
        reads = replies_with_reads(target, chat_ids(tok, texts), tok.eos_token_id, pad, p["reply_tokens"],
                                   p["reply_batch"], p["topk"], progress)
        data["replies"] = [{**r, "index": i, "source": k} for i, (r, k) in enumerate(zip(reads, kinds))]
        used["replies"] = {"prompts": len(reads), "prompt_tokens": sum(r["prompt_tokens"] for r in reads),
                           "reply_tokens": sum(len(r["ids"]) - r["prompt_tokens"] for r in reads)}
    if p["corpus"] and p["corpus_tokens"]:
        docs, used["corpus"] = corpus_documents(tok, p["corpus"], p["skip"])
        w = windows(tok, docs, p["corpus_tokens"], p["seq_len"], p["seed"])
        ids, probs, hidden = teacher_read(target, w, p["topk"], p["batch"], progress)
        data["corpus"] = {"windows": w, "ids": ids, "probs": probs, "hidden": hidden}
    data.update(documents=used, read_seconds=time.perf_counter() - t0)
    if cache is not None:
        part = cache.with_name(cache.name + ".part")
        torch.save(data, part)
        part.rename(cache)
    return data


def split_replies(reads: list[dict], heldout: float, seed: int) -> tuple[list[dict], list[dict]]:
    """(held out, training): whole replies, in a seeded order, the first `heldout` share held out
    (at least one when there are two or more). Held out before windowing, so that no window mixes
    a held-out reply with a training one."""
    order = torch.randperm(len(reads), generator=torch.Generator().manual_seed(seed)).tolist()
    n_held = min(max(1, int(len(reads) * heldout)), len(reads) - 1) if heldout > 0 and len(reads) > 1 else 0
    return [reads[i] for i in order[:n_held]], [reads[i] for i in order[n_held:]]


def training_windows(teacher: dict, p: dict) -> tuple[dict, list[dict], list[dict]]:
    """(windows, held-out replies, training replies): the training replies end to end, cut into
    `seq_len` windows (pack), with the corpus windows (`reply_of` -1), rows shuffled by the seed;
    the held-out replies are kept whole, as drafting meets them."""
    held, train = split_replies(teacher["replies"], p["heldout"], p["seed"])
    parts = [pack(train, p["seq_len"], p["seed"])] if train else []
    if teacher["corpus"] is not None:
        c = teacher["corpus"]
        parts.append({**c, "reply_of": torch.full(c["windows"].shape, -1, dtype=torch.long)})
    if not parts or not sum(len(q["windows"]) for q in parts):
        raise ValueError("eagle: no training text (model_pair.build.replies and corpus_tokens give none here); "
                         "the replies need ../shared/data or the code stubs, the corpus `code` always works")
    data = {k: torch.cat([q[k] for q in parts]) for k in ("windows", "ids", "probs", "hidden", "reply_of")}
    rows = torch.randperm(len(data["windows"]), generator=torch.Generator().manual_seed(p["seed"]))
    return {k: v[rows] for k, v in data.items()}, held, train


def leak_check(held: list[dict], train: list[dict], reply_of: torch.Tensor) -> dict:
    """The held-out replies against the training data: how many have a position in a training window
    (by reply index: 0, or the split is broken and this raises), and how many have the same reply
    text (the tokens after the prompt) as a training reply (a repeated prompt or a stock answer)."""
    in_windows = set(reply_of[reply_of >= 0].unique().tolist())
    trained = {tuple(r["ids"][r["prompt_tokens"]:].tolist()) for r in train}
    out = {"heldout_replies": len(held), "training_replies": len(train),
           "heldout_replies_in_training_windows": sum(r["index"] in in_windows for r in held),
           "heldout_reply_texts_also_in_training": sum(tuple(r["ids"][r["prompt_tokens"]:].tolist()) in trained
                                                       for r in held)}
    if out["heldout_replies_in_training_windows"]:
        raise RuntimeError(f"eagle: held-out replies leaked into the training windows: {out}")
    return out


# ------------------------------------------------------------------------------- 3. the drafter
def init_feature_drafter(target, seed: int = 0) -> FeatureDrafterModel:
    """A feature drafter for `target` (a Llama-style causal LM): its layer and final norm start as
    copies of the target's last layer and final norm; `fc` is random (seeded)."""
    cfg = target.config
    keys = ("hidden_size", "intermediate_size", "num_attention_heads", "num_key_value_heads", "head_dim",
            "hidden_act", "rms_norm_eps", "rope_theta", "rope_scaling", "rope_parameters",
            "max_position_embeddings", "attention_bias", "mlp_bias")
    config = FeatureDrafterConfig(**{k: getattr(cfg, k) for k in keys if getattr(cfg, k, None) is not None},
                                  vocab_size=target.get_output_embeddings().weight.shape[0], num_hidden_layers=1,
                                  tie_word_embeddings=False)
    torch.manual_seed(seed)
    drafter = FeatureDrafterModel(config)
    decoder = target.get_decoder()
    drafter.layers.layers[0].load_state_dict(decoder.layers[-1].state_dict())
    drafter.layers.norm.load_state_dict(decoder.norm.state_dict())
    return drafter.eval()


def shifted(hidden: torch.Tensor) -> torch.Tensor:
    """EAGLE's input shift: the feature that goes with token p is f_{p-1} (zero at p = 0)."""
    return torch.cat([torch.zeros_like(hidden[:, :1]), hidden[:, :-1]], dim=1)


def loss_terms(drafter, embed, head_w, x, t_ids, t_probs, t_hidden, subset: torch.Tensor, unroll: int,
               feature_weight: float, token_weight: float) -> tuple[torch.Tensor, dict]:
    """The training loss of one batch (module docstring, step 3) and its parts."""
    f = t_hidden.float()
    e = embed(x)
    u = torch.unique(torch.cat([subset, t_ids.flatten().long()]))  # sorted: U = subset + batch top-k
    w_u = head_w[u]
    cols = torch.searchsorted(u, t_ids.long())  # the top-k ids' columns in U
    feats, total, parts = shifted(f), 0.0, {}
    for step in range(unroll):
        pred, _ = drafter(feats, e)
        reg = torch.nn.functional.smooth_l1_loss(pred, f)
        logq = (pred @ w_u.T).float().log_softmax(-1)
        ce = -(t_probs.float() * logq.gather(-1, cols)).sum(-1).mean()
        total = total + feature_weight * reg + token_weight * ce
        parts[f"step{step + 1}"] = {"feature_smooth_l1": reg.item(), "token_ce": ce.item()}
        feats = shifted(pred)  # the next step reads the drafter's own features, as drafting does
    return total / unroll, parts


def train(drafter, embed, head_w, data: dict, rows: torch.Tensor, subset: torch.Tensor, p: dict,
          progress: bool) -> list[dict]:
    """AdamW on fc + the layer + the norm (training_utils.train_adamw); returns the training curve."""
    def batch_loss(idx):
        return loss_terms(drafter, embed, head_w, data["windows"][idx], data["ids"][idx], data["probs"][idx],
                          data["hidden"][idx], subset, p["unroll"], p["feature_weight"], p["token_weight"])

    return train_adamw(drafter, rows, batch_loss, p, "eagle: drafter learns", progress)


# ----------------------------------------------------------------------------- 4. held-out measures
@torch.inference_mode()
def heldout_agreement(drafter, embed, head, data: dict, rows: torch.Tensor, batch: int) -> float:
    """Teacher-forced: share of positions where argmax head(f^_p) is the target's argmax at p."""
    hits = total = 0
    for i in range(0, len(rows), batch):
        r = rows[i: i + batch]
        pred, _ = drafter(shifted(data["hidden"][r].float()), embed(data["windows"][r]))
        hits += (head(pred).argmax(-1) == data["ids"][r, :, 0]).sum().item()
        total += pred.shape[0] * pred.shape[1]
    return hits / max(1, total)


@torch.inference_mode()
def chain_acceptance(drafter, embed, head, data: dict, rows: torch.Tensor, gamma: int = 4, stride: int = 4,
                     first: list[int] | None = None) -> dict:
    """Greedy chain drafting as FeatureDrafter does it (real features up to the start, then its
    own), from every `stride`-th start t (from 8, or `first[i]` for the i-th row) of the held-out
    windows whose next `gamma` tokens are the target's own greedy continuation (so the target's
    verdict on every draft is known): acceptance per draft position, and the mean accepted length
    per round (accepted + 1)."""
    lm = FeatureLM(drafter, embed, head)
    w, top1, hidden = data["windows"], data["ids"][..., 0].long(), data["hidden"]
    accepted = torch.zeros(gamma + 1)  # accepted[j]: rounds that accepted >= j drafts
    for i, r in enumerate(rows.tolist()):
        x, greedy = w[r], (w[r][1:] == top1[r][:-1])  # greedy[p]: x_{p+1} is the target's argmax after x_p
        lm.start(x)
        known = 0  # features handed over: f_0 .. f_{known-1}
        for t in range(8 if first is None else first[i], x.shape[0] - gamma, stride):
            if not bool(greedy[t: t + gamma].all()):
                continue
            lm.add_features(hidden[r][known:t].float())  # as the decode loop does: real features up to f_{t-1}
            known = t
            tok = lm.forward(x[lm.length: t + 1], keep=1)[-1].argmax()
            n = 0
            while n < gamma and int(tok) == int(x[t + 1 + n]):
                n += 1
                tok = lm.forward(tok.view(1), keep=1)[-1].argmax()
            accepted[: n + 1] += 1
            lm.crop(lm.real_length)
    return acceptance_summary(accepted)


def acceptance_summary(accepted: torch.Tensor) -> dict:
    """From accepted[j] = rounds that accepted >= j drafts (j = 0..gamma; accepted[0] = rounds):
    the acceptance of each draft position given the ones before, and the mean accepted length per
    round (accepted + 1: tokens per target forward)."""
    rounds = int(accepted[0])
    per_pos = (accepted[1:] / accepted[:-1].clamp_min(1)).tolist()  # P(accept j | j-1 accepted)
    return {"gamma": len(accepted) - 1, "rounds": rounds, "acceptance_per_position": [round(a, 4) for a in per_pos],
            "mean_accepted_length": round(float(accepted[1:].sum() / max(1, rounds)) + 1.0, 4),
            "rounds_accepting_at_least": [int(a) for a in accepted]}


@torch.inference_mode()
def reply_agreement(drafter, embed, head, held: list[dict]) -> dict:
    """Teacher-forced top-1 agreement with the target on held-out replies, each read alone from its
    first token (f_{-1} = 0, as decoding starts), split by what drafting faces. With P prompt
    tokens, position p reads [f_{p-1} ; e(x_p)] and predicts x_{p+1}:
      "reply":  p >= P, x_p a reply token. Every draft round starts at such a position (the
                decode loop's first round is the target's prefill, which writes x_P itself);
                agreement here is the first draft's acceptance rate.
      "prompt": p < P, positions drafting never faces (the prompt is given, not drafted).
    Each with the number of positions, and "reply" also by the prompt's kind (instruction_mix.KINDS)."""
    hits, n = {}, {}
    for r in held:
        x, P = r["ids"], r["prompt_tokens"]
        pred, _ = drafter(shifted(r["hidden"][None].float()), embed(x[None]))
        ok = (head(pred[0]).argmax(-1) == r["top_ids"][:, 0]).long()
        for key, part in (("prompt", ok[:P]), ("reply", ok[P:]), (f"reply/{r.get('source', 'text')}", ok[P:])):
            hits[key] = hits.get(key, 0) + int(part.sum())
            n[key] = n.get(key, 0) + len(part)
    out = {k: {"agreement": round(hits[k] / max(1, n[k]), 4), "positions": n[k]}
           for k in ("reply", "prompt") if k in n}
    if "reply" in out:
        out["reply"]["by_source"] = {k.split("/", 1)[1]: {"agreement": round(hits[k] / max(1, n[k]), 4),
                                                          "positions": n[k]}
                                     for k in sorted(n) if k.startswith("reply/")}
    return out


def reply_chain_acceptance(drafter, embed, head, held: list[dict], gamma: int = 4) -> dict:
    """Greedy chain drafting (chain_acceptance) from every reply position p >= P of every held-out
    reply (where draft rounds start: reply_agreement), each reply read alone; acceptance_summary of
    all the rounds."""
    accepted = torch.zeros(gamma + 1)
    for r in held:
        one = {"windows": r["ids"][None], "ids": r["top_ids"][None], "hidden": r["hidden"][None]}
        chain = chain_acceptance(drafter, embed, head, one, torch.tensor([0]), gamma, 1, [r["prompt_tokens"]])
        accepted += torch.tensor(chain["rounds_accepting_at_least"], dtype=accepted.dtype)
    return acceptance_summary(accepted)


# --------------------------------------------------------------------------------- the command
def build_feature_drafter(target: Any, out_dir: str, replies: int = 600, reply_mix: dict | None = None,
                          article_chars: int = 1000, reply_tokens: int = 128, reply_batch: int = 32,
                          corpus: tuple[str, ...] = (), corpus_tokens: int = 0, skip: int = 500, seq_len: int = 256,
                          topk: int = 8, subset: int = 2048, epochs: float = 8.0, batch: int = 8, lr: float = 3e-3,
                          unroll: int = 2, feature_weight: float = 0.1, token_weight: float = 1.0,
                          heldout: float = 0.05, seed: int = 0, threads: int = 0, progress: bool = True,
                          force: bool = False) -> str:
    """Build (or reuse) a feature drafter for `target` (a ModelSpec or its config node) in
    `out_dir`; returns `out_dir`. Parameters: the module docstring and
    conf/model_pair/smollm2-135m__eagle.yaml."""
    spec = target if isinstance(target, ModelSpec) else ModelSpec(**dict(target))
    resolved = resolve_source(spec)
    params = {"recipe": RECIPE, "target": describe(resolved), "replies": replies,
              "reply_mix": dict(reply_mix or BROAD_MIX), "article_chars": article_chars,
              "reply_tokens": reply_tokens, "reply_batch": reply_batch, "corpus": list(corpus),
              "corpus_tokens": corpus_tokens, "skip": skip, "seq_len": seq_len, "topk": topk, "subset": subset,
              "epochs": epochs, "batch": batch, "lr": lr, "unroll": unroll, "feature_weight": feature_weight,
              "token_weight": token_weight, "heldout": heldout, "seed": seed}
    out = Path(out_dir).expanduser()
    cache = _teacher_cache(out, _data_key(params))
    return build_once(out, params, lambda tmp: _build(resolved, tmp, params, cache, progress), force, threads)


def _data_key(params: dict) -> str:
    key = {"format": DATA_FORMAT, **{k: params[k] for k in DATA_KEYS}}
    return hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:12]


def _teacher_cache(out: Path, key: str) -> Path:
    """Where the target's reads are kept across builds: `.<out name>-teacher-<key>.pt` next to `out`,
    or another build's there with the same key (same target and data: a build with other training
    settings into another folder trains on those reads instead of reading again)."""
    own = out.parent / f".{out.name}-teacher-{key}.pt"
    return own if own.is_file() else next(iter(sorted(out.parent.glob(f".*-teacher-{key}.pt"))), own)


def heldout_split(data: dict, heldout: float, subset: int, vocab: int):
    """The build's split of the windows and its vocabulary: the first `heldout` share of the corpus
    windows (those whose `reply_of` is -1 throughout; all windows when it is absent) held out
    (`held`, `rows`: window indices; the held-out replies are split off before windowing:
    split_replies); `counts` of each id as the target's top-1 on the training rows, the ids that
    occur by that count (`order`, most frequent first: draft_vocab.json), and the `subset` most
    frequent of them, sorted (the training loss's vocabulary)."""
    n = len(data["windows"])
    corpus = (data["reply_of"] < 0).all(1).nonzero()[:, 0] if "reply_of" in data else torch.arange(n)
    held = corpus[: max(1, int(len(corpus) * heldout))] if len(corpus) else corpus
    train = torch.ones(n, dtype=torch.bool)
    train[held] = False
    rows = train.nonzero()[:, 0]
    counts = torch.bincount(data["ids"][rows, :, 0].flatten().long(), minlength=vocab)
    order = [i for i in counts.argsort(descending=True, stable=True).tolist() if counts[i] > 0]
    return held, rows, counts, order, torch.tensor(sorted(order[:subset]), dtype=torch.long)


def _build(spec: ModelSpec, tmp: Path, p: dict, cache: Path | None, progress: bool) -> dict:
    t0 = time.perf_counter()
    torch.manual_seed(p["seed"])
    tok = load_tokenizer(spec)
    target = load_model(spec, torch.float32, torch.device("cpu"))
    teacher = teacher_data(target, tok, p, cache, progress)
    data, held_replies, train_replies = training_windows(teacher, p)
    leaks = leak_check(held_replies, train_replies, data["reply_of"])
    t_data = time.perf_counter() - t0
    embed, head = target.get_input_embeddings(), target.get_output_embeddings()
    head_w = head.weight.detach()
    held, rows, counts, order, subset = heldout_split(data, p["heldout"], p["subset"], head_w.shape[0])
    drafter = init_feature_drafter(target, p["seed"])
    for q in (*embed.parameters(), *head.parameters()):
        q.requires_grad_(False)
    before = heldout_measures(drafter, embed, head, data, held, held_replies, p["batch"], chains=False)
    t1 = time.perf_counter()
    curve = train(drafter, embed, head_w, data, rows, subset, p, progress)
    t_train = time.perf_counter() - t1
    after = heldout_measures(drafter, embed, head, data, held, held_replies, p["batch"], chains=True)
    drafter.save_pretrained(tmp)
    tok.save_pretrained(tmp)
    (tmp / "draft_vocab.json").write_text(json.dumps({  # for vocab=N: a subset head
        "about": "token ids by how often they were the target's top-1 on the training windows",
        "ids": order, "counts": [int(counts[i]) for i in order]}))
    info = {
        "params": p,
        "corpus_documents": teacher["documents"],
        "windows": {"train": len(rows), "heldout": len(held), "tokens": data["windows"].numel()},
        "heldout_leak_check": leaks,
        "parameters": {"target": n_params(target), "drafter": n_params(drafter)},
        "steps": curve[-1]["step"] if curve else 0,
        "training_curve": curve,
        **untrained_and_trained(before, after),
        "seconds": {"data": round(t_data, 1), "target_reads": round(teacher.get("read_seconds", 0.0), 1),
                    "train": round(t_train, 1), "total": round(time.perf_counter() - t0, 1)},
        "threads": torch.get_num_threads(),
    }
    said = [f"{what} top-1 agreement {info[key]['untrained']:.3f} -> {info[key]['trained']:.3f}"
            for what, key in (("held-out reply", "heldout_reply_top1_agreement"),
                              ("prompt", "heldout_prompt_top1_agreement"),
                              ("held-out corpus", "heldout_corpus_top1_agreement")) if key in info]
    chain = info.get("heldout_reply_chain_acceptance") or info["heldout_corpus_chain_acceptance"]
    where = "reply positions" if "heldout_reply_chain_acceptance" in info else "corpus windows"
    print(f"eagle: feature drafter ({n_params(drafter) / 1e6:.1f}M parameters), {', '.join(said)}; chain at gamma 4 "
          f"on {where}: {chain['mean_accepted_length']:.2f} tokens per target forward, "
          f"{info['seconds']['total']:.0f} s")
    return info


def heldout_measures(drafter, embed, head, data: dict, held: torch.Tensor, held_replies: list[dict], batch: int,
                     chains: bool) -> dict:
    """The held-out measures build.json records, by key (untrained_and_trained names them): on the
    held-out replies, agreement at reply and prompt positions (reply_agreement) and, with `chains`,
    the chain from every reply position; on the held-out corpus windows (when there are any),
    agreement at every position and, with `chains`, the chain (from every 4th position)."""
    out = {}
    if held_replies:
        out.update({f"{k}_top1_agreement": v for k, v in reply_agreement(drafter, embed, head, held_replies).items()})
        if chains:
            out["reply_chain_acceptance"] = reply_chain_acceptance(drafter, embed, head, held_replies)
    if len(held):
        agree = heldout_agreement(drafter, embed, head, data, held, batch)
        out["corpus_top1_agreement"] = {"agreement": round(agree, 4), "positions": data["windows"][held].numel()}
        if chains:
            out["corpus_chain_acceptance"] = chain_acceptance(drafter, embed, head, data, held)
    return out


def untrained_and_trained(before: dict, after: dict) -> dict:
    """build.json's heldout_* keys: each agreement as {"untrained", "trained", "positions"} (the reply
    one also "by_source", each the same), each chain as measured after training."""
    def pair(b: dict, a: dict) -> dict:
        out = {"untrained": b["agreement"], "trained": a["agreement"], "positions": a["positions"]}
        if "by_source" in a:
            out["by_source"] = {k: pair(b["by_source"][k], v) for k, v in a["by_source"].items()}
        return out

    return {f"heldout_{k}": (pair(before[k], v) if k.endswith("_agreement") else v) for k, v in after.items()}
