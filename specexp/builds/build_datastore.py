"""A datastore of the target's own writing, for retrieval drafting (REST, He et al. 2024,
arXiv 2311.08252, drafts the continuations a datastore holds for the current suffix).

A small chat model writes in habits ("To solve this problem, we need to", "The article discusses",
a docstring's "Args:" block) that its prompt does not contain, so a prompt lookup cannot draft
them, while its own earlier replies to other prompts do. The datastore is those replies:

1. `build_datastore`: the target's greedy replies (specexp/builds/target_replies.py) to `replies` chat prompts
   it is not evaluated on (XSum articles and GSM8K questions from sample `skip` on, standard
   library code stubs: instruction_mix.reply_prompts with its three-kind REPLY_MIX), reply tokens only,
   cached once per parameter set (builds.build_once: a temporary folder renamed into place) under
   `$SPECEXP_CACHE/datastore/<key>/` with a build.json (parameters, counts, seconds).
2-3. What drafts from them (`NGramTable`, `load_replies`): specexp/proposers/retrieval.py. The
   command that builds a strategy's datastore ahead (`specexp-datastore`): specexp/experiment/build_commands.py.
"""
from __future__ import annotations

import hashlib
import json
import time
from pathlib import Path

import torch

from specexp.builds.build_cache import build_once
from specexp.builds.instruction_mix import REPLY_MIX
from specexp.builds.target_replies import chat_ids, replies_with_reads
from specexp.models.fetch import cache_root
from specexp.models.loading import ModelSpec, describe, load_model, load_tokenizer, resolve_source
from specexp.proposers.retrieval import REPLIES, NGramTable, load_replies  # noqa: F401 (read here, re-exported)

FORMAT = "specexp-datastore-v1"


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
    from specexp.builds.instruction_mix import reply_prompts

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
