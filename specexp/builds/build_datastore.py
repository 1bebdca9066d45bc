"""A datastore of the target's own writing, for retrieval drafting (REST, He et al. 2024,
arXiv 2311.08252, drafts the continuations a datastore holds for the current suffix).

A small chat model writes in habits ("To solve this problem, we need to", "The article discusses",
a docstring's "Args:" block) that its prompt does not contain, so a prompt lookup cannot draft
them, while its own earlier replies to other prompts do. The datastore is those replies:

1. `build_datastore`: the target's greedy replies (specexp/builds/target_replies.py) to `replies` chat prompts
   it is not evaluated on (XSum articles and GSM8K questions from sample `skip` on, standard
   library code stubs: distill.reply_prompts, the feature drafter's own mix), reply tokens only,
   cached once per parameter set (builds.build_once: a temporary folder renamed into place) under
   `$SPECEXP_CACHE/datastore/<key>/` with a build.json (parameters, counts, seconds).
2. `NGramTable`: for every context of 1..`max_n` tokens in the replies, the most frequent next
   token, its share of the context's continuations, and the context's count.
3. `NGramTable.draft`: from the longest context of at least `min_n` tokens seen `min_count`+
   times, append its most frequent next token while that token's share is >= `min_share` (a
   confident continuation), at most k tokens, stopping after an EOS. Deterministic, no forwards.
"""
from __future__ import annotations

import hashlib
import json
import time
from collections import Counter, defaultdict
from pathlib import Path

import torch

from specexp.builds.build_cache import build_once
from specexp.models.fetch import cache_root
from specexp.models.loading import ModelSpec, describe, load_model, load_tokenizer, resolve_source
from specexp.builds.target_replies import REPLY_MIX, chat_ids, replies_with_reads

FORMAT = "specexp-datastore-v1"
REPLIES = "replies.json"


# -------------------------------------------------------------------------------- 1. the replies
def build_datastore(target: ModelSpec | dict, replies: int = 600, reply_mix: dict | None = None,
                    article_chars: int = 1000, reply_tokens: int = 128, reply_batch: int = 32, skip: int = 500,
                    out_dir: str | None = None, progress: bool = True) -> str:
    """Build (or reuse) the datastore of `target`'s greedy replies; returns its folder."""
    spec = target if isinstance(target, ModelSpec) else ModelSpec(**dict(target))
    resolved = resolve_source(spec)
    params = {"format": FORMAT, "target": describe(resolved), "replies": replies,
              "reply_mix": dict(reply_mix or REPLY_MIX), "article_chars": article_chars,
              "reply_tokens": reply_tokens, "reply_batch": reply_batch, "skip": skip}
    key = hashlib.sha256(json.dumps(params, sort_keys=True).encode()).hexdigest()[:16]
    out = Path(out_dir).expanduser() if out_dir else cache_root() / "datastore" / key
    return build_once(out, params, lambda tmp: _build(resolved, tmp, params, progress), done=_done)


def _done(out: Path, params: dict) -> bool:
    try:
        info = json.loads((out / "build.json").read_text())
    except (OSError, ValueError):
        return False
    return info.get("params") == params and (out / REPLIES).is_file()


def _build(spec: ModelSpec, tmp: Path, p: dict, progress: bool) -> dict:
    from specexp.builds.train_distilled_drafter import reply_prompts

    t0 = time.perf_counter()
    tok = load_tokenizer(spec)
    target = load_model(spec, torch.float32, torch.device("cpu"))
    prompts = chat_ids(tok, reply_prompts(p["skip"], p["replies"], p["reply_mix"], p["article_chars"]), plain=True)
    if not prompts:
        raise ValueError("datastore: no reply prompts (the mix's sources have no data here; `code` always works)")
    pad = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
    reads = replies_with_reads(target, prompts, tok.eos_token_id, pad, p["reply_tokens"], p["reply_batch"], 0,
                               progress, desc="datastore: the target answers")
    docs = [r["ids"][r["prompt_tokens"]:].tolist() for r in reads]
    (tmp / REPLIES).write_text(json.dumps({"about": "the target's greedy replies (token ids, EOS kept)",
                                           "replies": docs}))
    return {"params": p, "replies": len(docs), "reply_tokens": sum(map(len, docs)),
            "seconds": round(time.perf_counter() - t0, 1)}


def load_replies(folder: str | Path) -> list[list[int]]:
    return json.loads((Path(folder) / REPLIES).read_text())["replies"]


# ------------------------------------------------------------------------------ 2-3. the n-grams
class NGramTable:
    """What followed each context of 1..max_n tokens in `docs` (module docstring, steps 2-3)."""

    def __init__(self, docs: list[list[int]], max_n: int = 4):
        if max_n < 1:
            raise ValueError(f"datastore: max_n must be >= 1, got {max_n}")
        self.max_n = max_n
        counts: list[dict[tuple, Counter]] = [defaultdict(Counter) for _ in range(max_n + 1)]
        for doc in docs:
            for i in range(1, len(doc)):
                for n in range(1, min(max_n, i) + 1):
                    counts[n][tuple(doc[i - n: i])][doc[i]] += 1
        # context -> (most frequent next token, its share, the context's count); ties: the smaller id
        self.next: list[dict[tuple, tuple[int, float, int]]] = [{}]
        for n in range(1, max_n + 1):
            table = {}
            for ctx, c in counts[n].items():
                total = sum(c.values())
                tok, top = min(c.items(), key=lambda kv: (-kv[1], kv[0]))
                table[ctx] = (tok, top / total, total)
            self.next.append(table)
        self.tokens = sum(map(len, docs))

    def __deepcopy__(self, memo):  # read-only once counted: per-row copies (specexp/core/batch_decode.py) share it
        return self

    def draft(self, text: list[int], k: int, min_n: int = 2, min_count: int = 2, min_share: float = 0.5,
              eos: frozenset | set = frozenset()) -> list[int]:
        """Up to k tokens continuing `text` (step 3); [] when no context of min_n+ tokens is known."""
        out: list[int] = []
        while len(out) < k:
            ctx = (text[-self.max_n:] + out)[-self.max_n:]
            hit = None
            for n in range(min(self.max_n, len(ctx)), min_n - 1, -1):  # the longest known context
                hit = self.next[n].get(tuple(ctx[-n:]))
                if hit is not None and hit[2] >= min_count:
                    break
                hit = None
            if hit is None or hit[1] < min_share:
                break
            out.append(hit[0])
            if hit[0] in eos:
                break
        return out


# --------------------------------------------------------------------------------- the command
def main() -> None:
    """`specexp-datastore [overrides]`: build the reply datastore of a pair's target ahead of a
    run, with the strategy's settings (the first run of a datastore strategy builds it too).
    Defaults: model_pair=smollm2-135m__prompt_lookup strategy=prompt_lookup_store; e.g.
    `specexp-datastore model_pair=smollm2-135m__eagle strategy=lookup_store_entropy
    strategy.proposer.datastore.replies=1200`."""
    import sys

    from hydra.utils import instantiate
    from omegaconf import OmegaConf

    from specexp.experiment.config import compose

    overrides = sys.argv[1:]
    if any(a in ("-h", "--help") for a in overrides):
        print(main.__doc__)
        return
    defaults = {"model_pair": "smollm2-135m__prompt_lookup", "strategy": "prompt_lookup_store"}
    overrides = [f"{k}={v}" for k, v in defaults.items() if not any(o.startswith(f"{k}=") for o in overrides)] + overrides
    cfg = compose(overrides)
    node = (cfg.strategy.get("proposer") or {}).get("datastore")
    if node is None:
        sys.exit(f"specexp-datastore: strategy {cfg.strategy.get('name')!r} has no proposer.datastore; "
                 "use strategy=prompt_lookup_store, lookup_store_entropy or lookup_store_cost")
    store = instantiate(node)
    folder = store.dir or build_datastore(OmegaConf.to_container(cfg.model_pair.target, resolve=True), **store.build)
    print(f"specexp-datastore: the target's replies are at {folder}")


if __name__ == "__main__":
    main()
