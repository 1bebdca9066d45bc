"""`specexp-eagle`: train a feature drafter (EAGLE, Li et al. 2024) for a target, on the target's own
hidden states. The drafter and how it drafts: specexp/proposers/eagle.py.

    specexp-eagle                                    # SmolLM2-135M (model_pair smollm2-135m__eagle)
    specexp-eagle model_pair.build.tokens=20000      # a smaller build
    python -m specexp.eagle model_pair.build.epochs=2

Recipe (deterministic: fixed seeds, fixed data order, a fixed number of steps):
  1. The text is the distilled drafter's (specexp/distill.py, whose readers this reuses): the
     target's own greedy chat replies to XSum / GSM8K prompts, plus XSum, GSM8K and Python
     stdlib text, XSum / GSM8K from sample `skip` on (the evaluation keeps the first ones).
  2. The target reads every window once (distill.teacher_read): at every position p its last
     hidden state f_p (what its LM head reads) and its top-k next-token distribution. Both are
     cached next to the output folder (`.<name>-teacher-<key>.pt`): a crash or a rerun with other
     training settings does not read again.
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

from specexp.builds import build_once
from specexp.training import warmup_cosine
from specexp.distill import teacher_read, training_windows
from specexp.models import ModelSpec, describe, load_model, load_tokenizer, n_params, resolve_source
from specexp.proposers import DraftModel
from specexp.proposers.eagle import FeatureDrafterConfig, FeatureDrafterModel, FeatureLM

log = logging.getLogger(__name__)

RECIPE = 2  # bump when the recipe changes: older builds are then rebuilt, not reused
DATA_KEYS = ("target", "corpus", "skip", "tokens", "seq_len", "topk", "replies", "reply_tokens", "reply_share", "seed")


# ------------------------------------------------------------------------------- 1-2. the data
def teacher_data(target, tok, p: dict, cache: Path | None, progress: bool) -> dict:
    """Windows [N, L] and the target's reads of them (top-k ids / probs, hidden states), from
    `cache` when it holds them (written atomically after a read)."""
    if cache is not None and cache.is_file():
        return torch.load(cache)
    w, used = training_windows(target, tok, p, progress, sort_replies=True)
    t0 = time.perf_counter()
    ids, probs, hidden = teacher_read(target, w, p["topk"], p["batch"], progress)
    data = {"windows": w, "ids": ids, "probs": probs, "hidden": hidden, "documents": used,
            "read_seconds": time.perf_counter() - t0}
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
def chain_acceptance(drafter, embed, head, data: dict, rows: torch.Tensor, gamma: int = 4, stride: int = 4) -> dict:
    """Greedy chain drafting as FeatureDrafter does it (real features up to the start, then its
    own), from every `stride`-th start t of the held-out windows whose next `gamma` tokens are the
    target's own greedy continuation (so the target's verdict on every draft is known):
    acceptance per draft position, and the mean accepted length per round (accepted + 1)."""
    lm = FeatureLM(drafter, embed, head)
    w, top1, hidden = data["windows"], data["ids"][..., 0].long(), data["hidden"]
    accepted = torch.zeros(gamma + 1)  # accepted[j]: rounds that accepted >= j drafts
    rounds = 0
    for r in rows.tolist():
        x, greedy = w[r], (w[r][1:] == top1[r][:-1])  # greedy[p]: x_{p+1} is the target's argmax after x_p
        lm.start(x)
        known = 0  # features handed over: f_0 .. f_{known-1}
        for t in range(8, x.shape[0] - gamma, stride):
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
            rounds += 1
            lm.crop(lm.real_length)
    per_pos = (accepted[1:] / accepted[:-1].clamp_min(1)).tolist()  # P(accept j | j-1 accepted)
    return {"gamma": gamma, "rounds": rounds, "acceptance_per_position": [round(a, 4) for a in per_pos],
            "mean_accepted_length": round(float(accepted[1:].sum() / max(1, rounds)) + 1.0, 4)}


# --------------------------------------------------------------------------------- the command
def build_feature_drafter(target: Any, out_dir: str, corpus: tuple[str, ...] = ("xsum", "gsm8k", "code"),
                          skip: int = 500, tokens: int = 30_000, seq_len: int = 256, topk: int = 8,
                          replies: int = 48, reply_tokens: int = 128, reply_batch: int = 16,
                          reply_share: float = 0.6, subset: int = 2048, epochs: float = 5.0, batch: int = 8,
                          lr: float = 1e-3, unroll: int = 2, feature_weight: float = 1.0, token_weight: float = 0.5,
                          heldout: float = 0.05, seed: int = 0, threads: int = 0, progress: bool = True,
                          force: bool = False) -> str:
    """Build (or reuse) a feature drafter for `target` (a ModelSpec or its config node) in
    `out_dir`; returns `out_dir`. Parameters: the module docstring and
    conf/model_pair/smollm2-135m__eagle.yaml."""
    spec = target if isinstance(target, ModelSpec) else ModelSpec(**dict(target))
    resolved = resolve_source(spec)
    params = {"recipe": RECIPE, "target": describe(resolved), "corpus": list(corpus), "skip": skip,
              "tokens": tokens, "seq_len": seq_len, "topk": topk, "replies": replies, "reply_tokens": reply_tokens,
              "reply_batch": reply_batch, "reply_share": reply_share, "subset": subset, "epochs": epochs,
              "batch": batch, "lr": lr, "unroll": unroll, "feature_weight": feature_weight,
              "token_weight": token_weight, "heldout": heldout, "seed": seed}
    out = Path(out_dir).expanduser()
    cache = out.parent / f".{out.name}-teacher-{_data_key(params)}.pt"  # the target's reads, kept across builds
    return build_once(out, params, lambda tmp: _build(resolved, tmp, params, cache, progress), force, threads)


def _data_key(params: dict) -> str:
    return hashlib.sha256(json.dumps({k: params[k] for k in DATA_KEYS}, sort_keys=True).encode()).hexdigest()[:12]


def _build(spec: ModelSpec, tmp: Path, p: dict, cache: Path | None, progress: bool) -> dict:
    t0 = time.perf_counter()
    torch.manual_seed(p["seed"])
    tok = load_tokenizer(spec)
    target = load_model(spec, torch.float32, torch.device("cpu"))
    data = teacher_data(target, tok, p, cache, progress)
    t_data = time.perf_counter() - t0
    embed, head = target.get_input_embeddings(), target.get_output_embeddings()
    head_w = head.weight.detach()
    n = len(data["windows"])
    n_held = max(1, int(n * p["heldout"]))
    held, rows = torch.arange(n_held), torch.arange(n_held, n)
    counts = torch.bincount(data["ids"][n_held:, :, 0].flatten().long(), minlength=head_w.shape[0])
    order = [i for i in counts.argsort(descending=True, stable=True).tolist() if counts[i] > 0]
    subset = torch.tensor(sorted(order[: p["subset"]]), dtype=torch.long)
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
        "windows": {"train": len(rows), "heldout": n_held, "tokens": data["windows"].numel()},
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
    from specexp.distill import build_cli

    build_cli("specexp-eagle", "smollm2-135m__eagle", "build_feature_drafter", __doc__)


if __name__ == "__main__":
    main()


# ------------------------------------------------------------------------ the benchmark's modes
def _compose(overrides: list[str]):
    from hydra import compose, initialize_config_dir

    from specexp.config import CONF_DIR, register

    register()
    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        return compose("config", overrides=overrides)


def bench_proposers(pair, wanted: set[str], gamma: int, vocab: int, eagle_dir: str | None = None):
    """scripts/bench.py's issue-15 modes on a loaded SmolLM2 pair, as (key, name, proposer, policy,
    Mode fields): the feature drafter (registered as the pair's role "eagle"; `eagle_dir`, else
    the smollm2-135m__eagle pair's own, built if missing) with Fixed(gamma), its `vocab` subset
    head, the shipped entropy_static and heuristic length rules; and the shipped model-free pairs'
    strategies exactly as composed (smollm2-135m__prompt_lookup, smollm2-135m__bigram)."""
    from hydra.utils import instantiate

    from specexp import build
    from specexp.length import Fixed

    out = []
    if any(k.startswith("ours-eagle") for k in wanted):
        if eagle_dir is None:
            eagle_dir = instantiate(_compose(["model_pair=smollm2-135m__eagle"]).model_pair.build)
        pair.specs["eagle"] = ModelSpec(name=str(eagle_dir))
        fixed = {"gamma": gamma, "fixed_gamma": True, "drafter": "eagle", "counterpart": "hf-assisted"}
        rules = {"entropy_static": None, "heuristic": None}
        for rule in rules:
            rules[rule] = instantiate(_compose([f"strategy={rule}"]).strategy.length, _convert_="all")
        for key, name, v, policy, kw in (
                ("ours-eagle", "ours eagle (feature drafter)", None, Fixed(gamma), fixed),
                ("ours-eagle-vocab", f"ours eagle ({vocab // 1024}k head)", vocab, Fixed(gamma), fixed),
                ("ours-eagle-entropy", "ours eagle, entropy_static", None, rules["entropy_static"],
                 {"drafter": "eagle", "counterpart": "hf-assisted"}),
                ("ours-eagle-heuristic", "ours eagle, heuristic", None, rules["heuristic"],
                 {"drafter": "eagle", "counterpart": "hf-assisted"})):
            if key in wanted and (v is None or vocab):
                out.append((key, name, DraftModel("eagle", vocab=v).bind(pair), policy.bind(pair), kw))
    for key, name in (("ours-lookup-shipped", "smollm2-135m__prompt_lookup"), ("ours-bigram-shipped", "smollm2-135m__bigram")):
        if key in wanted:
            proposer, policy = build.strategy(_compose([f"model_pair={name}"]).strategy, pair)
            out.append((key, f"ours {name.split('__')[1]} (shipped pair)", proposer, policy, {}))
    return out
