"""`specexp-eagle`: train a feature drafter (EAGLE, Li et al. 2024) for a target, on the target's own
hidden states. The drafter and how it drafts: specexp/proposers/feature_drafter.py.

    specexp-eagle                                    # SmolLM2-135M (model_pair smollm2-135m__eagle)
    specexp-eagle model_pair.build.replies=100       # a smaller build
    python -m specexp.builds.train_feature_drafter model_pair.build.epochs=2

Recipe (deterministic: fixed seeds, fixed data order, a fixed number of steps):
  1. The text is the target's own: its greedy replies to `replies` chat prompts, XSum articles
     (cut to `article_chars`) and GSM8K questions from sample `skip` on (the evaluation keeps the
     first ones) and HumanEval-style stubs of the standard library's functions, mixed by
     `reply_mix`. Greedy acceptance asks the drafter to predict exactly this text: the target's
     argmax after its own tokens. Optionally `corpus_tokens` of other text (`corpus`).
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
  4. Held out (`heldout` of the windows): teacher-forced top-1 agreement with the target, and the
     greedy chain acceptance at gamma 4 (per position and the mean accepted length), measured
     where the held-out text is the target's own greedy continuation. build.json records them,
     the training curve and the time.
  5. Saved in Hugging Face format (model type specexp_eagle) with the tokenizer and
     draft_vocab.json (ids by how often they were the target's top-1, for `vocab=N`), in a
     temporary sibling folder renamed into place: an interrupted build leaves nothing that looks
     finished. A folder whose build.json records the same parameters is reused at once.
"""
from __future__ import annotations

import hashlib
import json
import logging
import math
import time
from pathlib import Path
from typing import Any

import torch

from specexp.builds.build_cache import build_once
from specexp.builds.training_utils import warmup_cosine
from specexp.builds.train_distilled_drafter import teacher_read
from specexp.models.loading import ModelSpec, describe, load_model, load_tokenizer, n_params, resolve_source
from specexp.proposers import DraftModel, LookupFirst
from specexp.proposers.feature_drafter import FeatureDrafterConfig, FeatureDrafterModel, FeatureLM
from specexp.builds.target_replies import REPLY_MIX, chat_ids, replies_with_reads

log = logging.getLogger(__name__)

RECIPE = 3  # bump when the recipe changes: older builds are then rebuilt, not reused
DATA_KEYS = ("target", "replies", "reply_mix", "article_chars", "reply_tokens", "reply_batch", "corpus",
             "corpus_tokens", "skip", "seq_len", "topk", "seed")


# ------------------------------------------------------------------------------- 1-2. the data
def pack(reads: list[dict], seq_len: int, seed: int) -> dict:
    """The replies end to end in a seeded order, cut into [N, seq_len] windows (the tail that fills
    no window is dropped), as the training data: windows, top-k ids / probs, hidden states."""
    order = torch.randperm(len(reads), generator=torch.Generator().manual_seed(seed)).tolist()
    cat = {k: torch.cat([reads[i][k] for i in order]) for k in ("ids", "top_ids", "top_probs", "hidden")}
    n = cat["ids"].shape[0] // seq_len
    return {"windows": cat["ids"][: n * seq_len].view(n, seq_len),
            **{k: cat[src][: n * seq_len].view(n, seq_len, -1)
               for k, src in (("ids", "top_ids"), ("probs", "top_probs"), ("hidden", "hidden"))}}


def teacher_data(target, tok, p: dict, cache: Path | None, progress: bool) -> dict:
    """The training windows [N, L] and the target's reads of them (top-k ids / probs, hidden
    states): the target's replies to `replies` chat prompts, read while it writes them, then
    `corpus_tokens` of `corpus` text it reads (distill.teacher_read); rows shuffled by the seed.
    From `cache` when it holds them (written atomically after the reads)."""
    from specexp.builds.train_distilled_drafter import corpus_documents, reply_prompts, windows

    if cache is not None and cache.is_file():
        return torch.load(cache)
    t0 = time.perf_counter()
    parts, used = [], {}
    if p["replies"]:
        prompts = chat_ids(tok, reply_prompts(p["skip"], p["replies"], p["reply_mix"], p["article_chars"]))
        pad = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
        reads = replies_with_reads(target, prompts, tok.eos_token_id, pad, p["reply_tokens"], p["reply_batch"],
                                   p["topk"], progress)
        parts.append(pack(reads, p["seq_len"], p["seed"]))
        used["replies"] = {"prompts": len(reads), "prompt_tokens": sum(r["prompt_tokens"] for r in reads),
                           "reply_tokens": sum(len(r["ids"]) - r["prompt_tokens"] for r in reads)}
    if p["corpus"] and p["corpus_tokens"]:
        docs, used["corpus"] = corpus_documents(tok, p["corpus"], p["skip"])
        w = windows(tok, docs, p["corpus_tokens"], p["seq_len"], p["seed"])
        ids, probs, hidden = teacher_read(target, w, p["topk"], p["batch"], progress)
        parts.append({"windows": w, "ids": ids, "probs": probs, "hidden": hidden})
    if not parts or not sum(len(q["windows"]) for q in parts):
        raise ValueError("eagle: no training text (model_pair.build.replies and corpus_tokens give none here); "
                         "the replies need ../shared/data or the code stubs, the corpus `code` always works")
    data = {k: torch.cat([q[k] for q in parts]) for k in ("windows", "ids", "probs", "hidden")}
    rows = torch.randperm(len(data["windows"]), generator=torch.Generator().manual_seed(p["seed"]))
    data = {k: v[rows] for k, v in data.items()}
    data.update(documents=used, read_seconds=time.perf_counter() - t0)
    if cache is not None:
        part = cache.with_name(cache.name + ".part")
        torch.save(data, part)
        part.rename(cache)
    return data


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
    """AdamW on fc + the layer + the norm; returns the training curve (loss every 10 steps)."""
    from tqdm.auto import tqdm

    params = [q for q in drafter.parameters()]
    for q in params:
        q.requires_grad_(True)
    opt = torch.optim.AdamW(params, lr=p["lr"], betas=(0.9, 0.95), weight_decay=0.0)
    steps = max(1, round(p["epochs"] * len(rows) / p["batch"]))
    gen = torch.Generator().manual_seed(p["seed"])
    order = torch.cat([rows[torch.randperm(len(rows), generator=gen)]
                       for _ in range(math.ceil(steps * p["batch"] / len(rows)) + 1)])
    curve, window = [], []
    drafter.train()
    bar = tqdm(range(steps), desc="eagle: drafter learns", disable=not progress)
    for step in bar:
        idx = order[step * p["batch"]: (step + 1) * p["batch"]]
        for g in opt.param_groups:  # linear warm-up, cosine decay to 10%
            g["lr"] = warmup_cosine(step, steps, p["lr"])
        loss, parts = loss_terms(drafter, embed, head_w, data["windows"][idx], data["ids"][idx], data["probs"][idx],
                                 data["hidden"][idx], subset, p["unroll"], p["feature_weight"], p["token_weight"])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        window.append(loss.item())
        if (step + 1) % 10 == 0 or step + 1 == steps:
            curve.append({"step": step + 1, "loss": sum(window) / len(window), **parts})
            window = []
            bar.set_postfix(loss=f"{curve[-1]['loss']:.3f}")
    drafter.eval()
    for q in params:
        q.requires_grad_(False)
    return curve


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
              "reply_mix": dict(reply_mix or REPLY_MIX), "article_chars": article_chars,
              "reply_tokens": reply_tokens, "reply_batch": reply_batch, "corpus": list(corpus),
              "corpus_tokens": corpus_tokens, "skip": skip, "seq_len": seq_len, "topk": topk, "subset": subset,
              "epochs": epochs, "batch": batch, "lr": lr, "unroll": unroll, "feature_weight": feature_weight,
              "token_weight": token_weight, "heldout": heldout, "seed": seed}
    out = Path(out_dir).expanduser()
    cache = _teacher_cache(out, _data_key(params))
    return build_once(out, params, lambda tmp: _build(resolved, tmp, params, cache, progress), force, threads)


def _data_key(params: dict) -> str:
    return hashlib.sha256(json.dumps({k: params[k] for k in DATA_KEYS}, sort_keys=True).encode()).hexdigest()[:12]


def _teacher_cache(out: Path, key: str) -> Path:
    """Where the target's reads are kept across builds: `.<out name>-teacher-<key>.pt` next to `out`,
    or another build's there with the same key (same target and data: a build with other training
    settings into another folder trains on those reads instead of reading again)."""
    own = out.parent / f".{out.name}-teacher-{key}.pt"
    return own if own.is_file() else next(iter(sorted(out.parent.glob(f".*-teacher-{key}.pt"))), own)


def heldout_split(data: dict, heldout: float, subset: int, vocab: int):
    """The build's split of the windows and its vocabulary: the first `heldout` share held out
    (`held`, `rows`: window indices); `counts` of each id as the target's top-1 on the training
    rows, the ids that occur by that count (`order`, most frequent first: draft_vocab.json), and
    the `subset` most frequent of them, sorted (the training loss's vocabulary)."""
    n = len(data["windows"])
    n_held = max(1, int(n * heldout))
    counts = torch.bincount(data["ids"][n_held:, :, 0].flatten().long(), minlength=vocab)
    order = [i for i in counts.argsort(descending=True, stable=True).tolist() if counts[i] > 0]
    return (torch.arange(n_held), torch.arange(n_held, n), counts, order,
            torch.tensor(sorted(order[:subset]), dtype=torch.long))


def _build(spec: ModelSpec, tmp: Path, p: dict, cache: Path | None, progress: bool) -> dict:
    t0 = time.perf_counter()
    torch.manual_seed(p["seed"])
    tok = load_tokenizer(spec)
    target = load_model(spec, torch.float32, torch.device("cpu"))
    data = teacher_data(target, tok, p, cache, progress)
    t_data = time.perf_counter() - t0
    embed, head = target.get_input_embeddings(), target.get_output_embeddings()
    head_w = head.weight.detach()
    held, rows, counts, order, subset = heldout_split(data, p["heldout"], p["subset"], head_w.shape[0])
    drafter = init_feature_drafter(target, p["seed"])
    for q in (*embed.parameters(), *head.parameters()):
        q.requires_grad_(False)
    before = heldout_agreement(drafter, embed, head, data, held, p["batch"])
    t1 = time.perf_counter()
    curve = train(drafter, embed, head_w, data, rows, subset, p, progress)
    t_train = time.perf_counter() - t1
    after = heldout_agreement(drafter, embed, head, data, held, p["batch"])
    chain = chain_acceptance(drafter, embed, head, data, held)
    drafter.save_pretrained(tmp)
    tok.save_pretrained(tmp)
    (tmp / "draft_vocab.json").write_text(json.dumps({  # for vocab=N: a subset head
        "about": "token ids by how often they were the target's top-1 on the training windows",
        "ids": order, "counts": [int(counts[i]) for i in order]}))
    info = {
        "params": p,
        "corpus_documents": data["documents"],
        "windows": {"train": len(rows), "heldout": len(held), "tokens": data["windows"].numel()},
        "parameters": {"target": n_params(target), "drafter": n_params(drafter)},
        "steps": curve[-1]["step"] if curve else 0,
        "training_curve": curve,
        "heldout_top1_agreement": {"untrained": round(before, 4), "trained": round(after, 4)},
        "heldout_chain_acceptance": chain,
        "seconds": {"data": round(t_data, 1), "target_reads": round(data.get("read_seconds", 0.0), 1),
                    "train": round(t_train, 1), "total": round(time.perf_counter() - t0, 1)},
        "threads": torch.get_num_threads(),
    }
    print(f"eagle: feature drafter ({n_params(drafter) / 1e6:.1f}M parameters), held-out top-1 agreement "
          f"{before:.3f} -> {after:.3f}, chain at gamma 4: {chain['mean_accepted_length']:.2f} tokens per target "
          f"forward, {info['seconds']['total']:.0f} s")
    return info


def main() -> None:
    """`specexp-eagle`: builds the `model_pair`'s feature drafter through its `build` node."""
    from specexp.builds.train_distilled_drafter import build_cli

    build_cli("specexp-eagle", "smollm2-135m__eagle", "build_feature_drafter", __doc__)


if __name__ == "__main__":
    main()


# ------------------------------------------------------------------------ the benchmark's modes
def bench_proposers(pair, wanted: set[str], gamma: int, vocab: int, eagle_dir: str | None = None):
    """scripts/bench.py's feature-drafter modes on a loaded SmolLM2 pair, as (key, name, proposer, policy,
    Mode fields): the feature drafter (registered as the pair's role "eagle"; `eagle_dir`, else
    the smollm2-135m__eagle pair's own, built if missing) with Fixed(gamma), its `vocab` subset
    head, the shipped entropy_static rule (full and subset head) and heuristic rule; the subset
    head behind a prompt lookup (`LookupFirst`) with each of the three, and behind a prompt lookup
    and the target's reply datastore (strategy lookup_store_entropy, built if missing); and the
    shipped model-free strategies exactly as composed (smollm2-135m__prompt_lookup,
    smollm2-135m__bigram, and the lookup with the datastore, prompt_lookup_store)."""
    from hydra.utils import instantiate

    from specexp.experiment import instantiate as build
    from specexp.experiment.config import compose
    from specexp.length import Fixed

    out = []
    if any(k.startswith("ours-eagle") for k in wanted):
        if eagle_dir is None:
            eagle_dir = instantiate(compose(["model_pair=smollm2-135m__eagle"]).model_pair.build)
        pair.specs["eagle"] = ModelSpec(name=str(eagle_dir))
        fixed = {"gamma": gamma, "fixed_gamma": True, "drafter": "eagle", "counterpart": "hf-assisted"}
        dynamic = {"drafter": "eagle", "counterpart": "hf-assisted"}
        head = f"{vocab // 1024}k head"
        lookup = f"ours lookup + eagle ({head})"  # LookupFirst: prompt lookup when the text repeats, else eagle
        store = f"ours lookup + datastore + eagle ({head})"  # ... else the target's replies, else eagle
        for key, name, v, first, policy, kw in (  # policy: Fixed(gamma), or a shipped strategy's length rule
                ("ours-eagle", "ours eagle (feature drafter)", None, None, "fixed", fixed),
                ("ours-eagle-vocab", f"ours eagle ({head})", vocab, None, "fixed", fixed),
                ("ours-eagle-entropy", "ours eagle, entropy_static", None, None, "entropy_static", dynamic),
                ("ours-eagle-vocab-entropy", f"ours eagle ({head}), entropy_static", vocab, None, "entropy_static",
                 dynamic),
                ("ours-eagle-heuristic", "ours eagle, heuristic", None, None, "heuristic", dynamic),
                ("ours-eagle-lookup", f"{lookup}, gamma {gamma}", vocab, "lookup", "fixed", dynamic),
                ("ours-eagle-lookup-entropy", f"{lookup}, entropy_static", vocab, "lookup", "entropy_static", dynamic),
                ("ours-eagle-lookup-heuristic", f"{lookup}, heuristic", vocab, "lookup", "heuristic", dynamic),
                ("ours-eagle-store-entropy", f"{store}, entropy_static", vocab, "store", "entropy_static", dynamic),
                ("ours-eagle-cost", f"ours eagle ({head}), cost_aware", vocab, None, "cost_aware", dynamic),
                ("ours-eagle-store-cost", f"{store}, cost_aware", vocab, "store", "cost_aware", dynamic)):
            if key in wanted and (v is None or vocab):
                rule = Fixed(gamma) if policy == "fixed" else instantiate(
                    compose([f"strategy={policy}"]).strategy.length, _convert_="all")  # built fresh per mode
                if first is None:
                    proposer = DraftModel("eagle", vocab=v)
                else:  # "store": the shipped strategy's datastore, as composed
                    datastore = instantiate(compose(["strategy=lookup_store_entropy"]).strategy.proposer.datastore) \
                        if first == "store" else None
                    proposer = LookupFirst("eagle", vocab=v, datastore=datastore)
                out.append((key, name, proposer.bind(pair), rule.bind(pair), kw))
    for key, name, overrides in (
            ("ours-lookup-shipped", "ours prompt_lookup (shipped pair)", ["model_pair=smollm2-135m__prompt_lookup"]),
            ("ours-bigram-shipped", "ours bigram (shipped pair)", ["model_pair=smollm2-135m__bigram"]),
            ("ours-lookup-store", "ours prompt_lookup_store (lookup + datastore)",
             ["model_pair=smollm2-135m__prompt_lookup", "strategy=prompt_lookup_store"])):
        if key in wanted:
            proposer, policy = build.strategy(compose(overrides).strategy, pair)
            out.append((key, name, proposer, policy, {}))
    return out
