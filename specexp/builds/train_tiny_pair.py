"""The embedded "tiny" model pair: a target and a ~10x smaller drafter, trained from scratch on
CPU in a few minutes, so that every experiment can run offline with no downloaded weights.

`build_tiny_pair()` trains a byte-level BPE tokenizer and two `LlamaForCausalLM`s on a text corpus
(by default the Python standard library's own sources, which every install has and which suit
HumanEval) and saves them in Hugging Face format:

    <out_dir>/target/    config.json, generation_config.json, model.safetensors, tokenizer files
    <out_dir>/drafter/   the same (tokenizer files identical to the target's)
    <out_dir>/build.json build parameters, corpus description, parameter counts, losses, timings

The build is deterministic (fixed seeds, sorted file lists) and idempotent: a pair whose
build.json records the same parameters is reused at once. It is built in a temporary sibling
directory and renamed into place at the end, so an interrupted build leaves nothing reusable.

The models know positions < `seq_len` (640) only: prompt + new tokens must fit in 640. The datasets'
default `max_prompt_tokens: auto` cuts a longer prompt to fit (specexp/models/prompt_ids.py); HumanEval
prompts are 46-519 tokens with this tokenizer, XSum articles up to about 1,750.

`random_tiny_pair()` gives small random-init (untrained) models sharing a vocabulary, for tests.
"""
from __future__ import annotations

import json
import logging
import os
import time
from pathlib import Path

import torch

from specexp.builds import training_utils as training
from specexp.builds.build_cache import build_once
from specexp.builds.corpus import EOS, MAX_BYTES, MAX_FILE_BYTES, load_corpus
from specexp.models.fetch import file_sha256

log = logging.getLogger(__name__)

NAME = "tiny-v1"  # the cache directory's name
RECIPE = 2  # recorded in build.json: bump when the code's recipe changes, so old builds are not reused

# Every knob of the recipe. `build_tiny_pair(**hyperparams)` overrides any of them; all of them
# (with the seed and the corpus) are recorded in build.json and decide whether a build is reused.
DEFAULTS: dict = {
    # corpus
    "corpus_max_bytes": MAX_BYTES,  # cap on the corpus text (files picked by a hash of their path)
    "max_file_bytes": MAX_FILE_BYTES,  # skip larger files (data tables rather than code)
    "eval_fraction": 0.02,  # tail of the token stream held out for the final evaluation
    # tokenizer
    "vocab_size": 4096,  # byte-level BPE; HumanEval prompts are 46-519 tokens (median 151)
    # shared training shape
    "seq_len": 640,  # training window = max_position_embeddings: run with max_prompt_tokens <= 512
    # and max_new_tokens <= 128 (HumanEval: 1 prompt of 164 is over 512 tokens)
    "batch_size": 1,  # small batches, many steps: the budget is steps-bound
    # target: ~5.5M parameters, trained first
    "target_hidden": 256,
    "target_layers": 4,
    "target_heads": 4,
    "target_ffn": 768,
    "target_lr": 2e-3,
    "zero_init_residual": True,  # target blocks start as the identity (faster early training)
    # drafter: ~0.6M parameters (9x smaller), tied embeddings, then distilled from the target
    "drafter_hidden": 96,
    "drafter_layers": 2,
    "drafter_heads": 2,
    "drafter_ffn": 256,
    "drafter_lr": 5e-3,
    "drafter_init": "svd",  # "svd": embeddings from the target's head (see _init_drafter_from_target); "random"
    "distill_weight": 1.0,  # drafter loss = (1-w) CE(data) + w KL(target || drafter)
    # schedule (steps of `batch_size` windows of `seq_len` tokens)
    "steps": 1000,  # target steps
    "distill_steps": 500,  # drafter steps
    "warmup": 50,
    "min_lr_ratio": 0.1,  # cosine decay to this fraction of the peak learning rate
    "weight_decay": 0.01,
    "grad_clip": 1.0,
    "eval_windows": 8,  # held-out windows for the final losses / agreement
    # "auto": bfloat16 autocast where the CPU has native bf16 (AVX512-BF16 / AMX, ~1.7x faster
    # training), else float32; or "bf16" / "fp32". Weights are always saved in float32.
    "precision": "auto",
}

def default_tiny_dir() -> str:
    """`$SPECEXP_CACHE/tiny-v1`, or `~/.cache/specexp/tiny-v1` when SPECEXP_CACHE is unset."""
    from specexp.models.fetch import cache_root

    return str(cache_root() / NAME)


# --------------------------------------------------------------------------------------------
# tokenizer and models


def train_tokenizer(docs: list[str], vocab_size: int, model_max_length: int | None = None):
    """A byte-level BPE (`tokenizers`) wrapped as a `PreTrainedTokenizerFast`; EOS = BOS = PAD =
    `<|endoftext|>` (id 0). No special tokens are added when encoding.

    Every newline is a token of its own: GPT-2's pre-tokenizer would glue a newline to the next
    line's indentation (one token for newline + 7 spaces), so a prompt ending in a bare newline
    (every HumanEval prompt ends with a docstring's closing quotes and a newline) would end on a
    boundary never seen in training, and the model would answer with blank lines and comments
    instead of the indented body."""
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex("\n"), behavior="isolated"),
        pre_tokenizers.ByteLevel(add_prefix_space=False),
    ])
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=[EOS], min_frequency=2,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(docs, trainer)
    extra = {"model_max_length": model_max_length} if model_max_length else {}
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token=EOS, eos_token=EOS, pad_token=EOS, **extra)


def _llama(vocab: int, hidden: int, layers: int, heads: int, ffn: int, max_pos: int, eos_id: int,
           tie: bool = False):
    from transformers import GenerationConfig, LlamaConfig, LlamaForCausalLM

    cfg = LlamaConfig(
        vocab_size=vocab, hidden_size=hidden, intermediate_size=ffn, num_hidden_layers=layers,
        num_attention_heads=heads, num_key_value_heads=heads, max_position_embeddings=max_pos,
        tie_word_embeddings=tie, bos_token_id=eos_id, eos_token_id=eos_id, pad_token_id=None,
    )
    model = LlamaForCausalLM(cfg)
    model.generation_config = GenerationConfig(bos_token_id=eos_id, eos_token_id=eos_id, pad_token_id=eos_id)
    return model


def _n_params(model) -> int:
    return sum(p.numel() for p in model.parameters())


def random_tiny_pair(arch: str = "llama", vocab: int = 256, seed: int = 0, drafter_vocab: int | None = None,
                     max_positions: int = 512):
    """(target, drafter): small random-init causal LMs of `arch` ("llama" or "gpt2") in eval mode,
    sharing a vocabulary of `vocab` ids (the drafter's head may differ: `drafter_vocab`). For unit
    tests: no training, built in milliseconds, same weights for the same seed."""
    from transformers import GPT2Config, GPT2LMHeadModel, LlamaConfig, LlamaForCausalLM

    dv = drafter_vocab or vocab
    torch.manual_seed(seed)
    if arch == "llama":
        def make(v, d, n_layers):
            return LlamaForCausalLM(LlamaConfig(
                vocab_size=v, hidden_size=d, intermediate_size=2 * d, num_hidden_layers=n_layers,
                num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=max_positions,
                bos_token_id=0, eos_token_id=0, pad_token_id=None))
    elif arch == "gpt2":
        def make(v, d, n_layers):
            return GPT2LMHeadModel(GPT2Config(
                vocab_size=v, n_embd=d, n_layer=n_layers, n_head=2, n_positions=max_positions,
                bos_token_id=0, eos_token_id=0))
    else:
        raise ValueError(f"random_tiny_pair: arch must be 'llama' or 'gpt2', got {arch!r}")
    target, drafter = make(vocab, 64, 2), make(dv, 32, 1)
    return target.eval(), drafter.eval()


# --------------------------------------------------------------------------------------------
# training


@torch.no_grad()
def _evaluate(target, drafter, stream: torch.Tensor, p: dict) -> dict:
    """Held-out losses and the drafter's top-1 agreement with the target (a proxy for greedy
    acceptance), on fixed non-overlapping windows of the held-out tail."""
    seq, b = p["seq_len"], 4
    n = min(p["eval_windows"], (stream.numel() - 1) // (seq + 1))
    if n < 1:
        return {}
    x = stream[: n * (seq + 1)].view(n, seq + 1)
    tl = dl = agree = 0.0
    for i in range(0, n, b):
        xb = x[i: i + b]
        t = target(input_ids=xb[:, :-1]).logits
        d = drafter(input_ids=xb[:, :-1]).logits
        w = xb.shape[0] / n
        tl += w * training.ce(t, xb[:, 1:]).item()
        dl += w * training.ce(d, xb[:, 1:]).item()
        agree += w * (t.argmax(-1) == d.argmax(-1)).float().mean().item()
    return {"eval_tokens": n * seq, "target_loss": round(tl, 4), "drafter_loss": round(dl, 4),
            "top1_agreement": round(agree, 4)}


def _zero_init_residual(model) -> None:
    """Zero the projections that write into the residual stream (attention output, MLP down):
    every block starts as the identity, which trains measurably faster in a short budget."""
    with torch.no_grad():
        for name, param in model.named_parameters():
            if name.endswith(("o_proj.weight", "down_proj.weight")):
                param.zero_()


@torch.no_grad()
def _init_drafter_from_target(drafter, target) -> None:
    """Start the drafter's (tied) token embeddings at the target's output head projected on its
    top singular directions: W_head = U S V^T  ->  E = U_k S_k. A drafter whose final hidden state
    is V_k^T of the target's then reproduces the target's rank-k logits, so distillation starts
    from the target's token geometry instead of noise (about twice the agreement for the same
    steps)."""
    w = target.get_output_embeddings().weight.float()
    emb = drafter.get_input_embeddings().weight
    k = emb.shape[1]
    u, sv, _ = torch.linalg.svd(w, full_matrices=False)
    emb.copy_((u[:, :k] * sv[:k]).to(emb.dtype))


def _train(target, drafter, stream: torch.Tensor, p: dict, seed: int, progress: bool) -> dict:
    """Phase 1: the target learns the corpus. Phase 2: the drafter is distilled from the finished,
    frozen target (loss (1-w) CE(data) + w KL(target || drafter), w = distill_weight)."""
    gen = torch.Generator().manual_seed(seed)
    seq, b, bf16 = p["seq_len"], p["batch_size"], training.use_bf16(p["precision"])
    losses: dict = {}
    opt = training.optimizer(target, p["target_lr"], p["weight_decay"])
    target.train()
    ema = None
    with training.bar(p["steps"], "tiny: target", progress) as bar:
        for i, x in enumerate(training.batches(stream, p["steps"], b, seq, gen)):
            with training.autocast(bf16):
                logits = target(input_ids=x[:, :-1]).logits
            loss = training.ce(logits, x[:, 1:])
            training.step(opt, target, loss, training.lr_at(i, p["steps"], p["target_lr"], p["warmup"], p["min_lr_ratio"]),
                  p["grad_clip"])
            ema = loss.item() if ema is None else 0.98 * ema + 0.02 * loss.item()
            bar.set_postfix(loss=f"{ema:.3f}", refresh=False)
            bar.update()
    losses["target_train_loss"] = round(ema, 4) if ema is not None else None
    target.eval()
    del opt

    if p["drafter_init"] == "svd" and drafter.config.tie_word_embeddings:
        _init_drafter_from_target(drafter, target)
    opt = training.optimizer(drafter, p["drafter_lr"], p["weight_decay"])
    drafter.train()
    w = p["distill_weight"]
    ema_kl = ema_ce = None
    with training.bar(p["distill_steps"], "tiny: drafter (distil)", progress) as bar:
        for j, x in enumerate(training.batches(stream, p["distill_steps"], b, seq, gen)):
            inp = x[:, :-1]
            with torch.no_grad(), training.autocast(bf16):
                t_logits = target(input_ids=inp).logits
            with training.autocast(bf16):
                d_logits = drafter(input_ids=inp).logits
            kl, ce = training.kl(d_logits, t_logits), training.ce(d_logits, x[:, 1:])
            training.step(opt, drafter, w * kl + (1 - w) * ce,
                  training.lr_at(j, p["distill_steps"], p["drafter_lr"], p["warmup"], p["min_lr_ratio"]), p["grad_clip"])
            ema_kl = kl.item() if ema_kl is None else 0.98 * ema_kl + 0.02 * kl.item()
            ema_ce = ce.item() if ema_ce is None else 0.98 * ema_ce + 0.02 * ce.item()
            bar.set_postfix(kl=f"{ema_kl:.3f}", loss=f"{ema_ce:.3f}", refresh=False)
            bar.update()
    losses["drafter_train_kl"] = round(ema_kl, 4) if ema_kl is not None else None
    losses["drafter_train_loss"] = round(ema_ce, 4) if ema_ce is not None else None
    drafter.eval()
    return losses


# --------------------------------------------------------------------------------------------
# build


def _params(seed: int, corpus: str | None, hyperparams: dict) -> dict:
    unknown = sorted(set(hyperparams) - set(DEFAULTS))
    if unknown:
        raise TypeError(f"build_tiny_pair: unknown hyperparameters {unknown}; known: {sorted(DEFAULTS)}")
    p = {**DEFAULTS, **hyperparams}
    for k in ("steps", "distill_steps", "warmup", "eval_windows"):
        if p[k] < 0:
            raise ValueError(f"build_tiny_pair: {k} must be >= 0, got {p[k]}")
    training.use_bf16(p["precision"])  # validates it
    if p["drafter_init"] not in ("svd", "random"):
        raise ValueError(f"build_tiny_pair: drafter_init must be svd or random, got {p['drafter_init']!r}")
    if p["batch_size"] < 1 or p["seq_len"] < 8:
        raise ValueError("build_tiny_pair: batch_size must be >= 1 and seq_len >= 8")
    return {"name": NAME, "recipe": RECIPE, "seed": int(seed),
            "corpus": None if corpus is None else str(Path(corpus).expanduser().resolve()), **p}


def _existing(out: Path, params: dict) -> bool:
    try:
        info = json.loads((out / "build.json").read_text())
    except (OSError, ValueError):
        return False
    if info.get("params") != params:
        return False
    return all((out / sub / f).is_file() for sub in ("target", "drafter")
               for f in ("config.json", "model.safetensors", "tokenizer.json"))


def build_tiny_pair(out_dir: str | None = None, seed: int = 0, corpus: str | None = None, *,
                    progress: bool = True, force: bool = False, **hyperparams) -> str:
    """Build (or reuse) the tiny target/drafter pair in `out_dir` (default `default_tiny_dir()`);
    returns out_dir. `hyperparams` override `DEFAULTS`; `force` rebuilds even a matching pair."""
    out = Path(out_dir if out_dir is not None else default_tiny_dir()).expanduser().resolve()
    params = _params(seed, corpus, hyperparams)
    if not force and _existing(out, params):
        return str(out)
    log.info("building the tiny model pair in %s", out)
    t0 = time.perf_counter()
    build_once(out, params, lambda tmp: _build(tmp, params, progress), force, done=_existing)
    log.info("tiny pair ready in %s (%.0f s)", out, time.perf_counter() - t0)
    return str(out)


def _build(tmp: Path, p: dict, progress: bool) -> dict:
    import tokenizers
    import transformers

    t0, c0 = time.perf_counter(), time.process_time()
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else None
    times = {}
    docs, corpus_info = load_corpus(p["corpus"], p["corpus_max_bytes"], p["max_file_bytes"])
    tokenizer = train_tokenizer(docs, p["vocab_size"], model_max_length=p["seq_len"])
    eos_id = tokenizer.convert_tokens_to_ids(EOS)
    ids: list[int] = []
    for enc in tokenizer.backend_tokenizer.encode_batch(docs):
        ids.extend(enc.ids)
        ids.append(eos_id)
    stream = torch.tensor(ids, dtype=torch.long)
    n_eval = int(stream.numel() * p["eval_fraction"])
    train_stream, eval_stream = (stream[:-n_eval], stream[-n_eval:]) if n_eval else (stream, stream[:0])
    if train_stream.numel() < p["seq_len"] + 2:
        raise ValueError(f"tiny corpus too small: {train_stream.numel()} tokens for seq_len {p['seq_len']}")
    corpus_info["tokens"] = int(stream.numel())
    corpus_info["bytes_per_token"] = round(corpus_info["bytes"] / stream.numel(), 3)
    times["corpus_tokenizer_s"] = round(time.perf_counter() - t0, 2)

    torch.manual_seed(p["seed"])
    vocab = len(tokenizer)
    target = _llama(vocab, p["target_hidden"], p["target_layers"], p["target_heads"], p["target_ffn"],
                    p["seq_len"], eos_id)
    drafter = _llama(vocab, p["drafter_hidden"], p["drafter_layers"], p["drafter_heads"], p["drafter_ffn"],
                     p["seq_len"], eos_id, tie=True)
    t1 = time.perf_counter()
    if p["zero_init_residual"]:
        _zero_init_residual(target)
    losses = _train(target, drafter, train_stream, p, p["seed"], progress)
    times["train_s"] = round(time.perf_counter() - t1, 2)
    t2 = time.perf_counter()
    evaluation = _evaluate(target, drafter, eval_stream, p)
    times["eval_s"] = round(time.perf_counter() - t2, 2)

    files = {}
    for sub, model in (("target", target), ("drafter", drafter)):
        d = tmp / sub
        model.save_pretrained(d)
        tokenizer.save_pretrained(d)
        files.update({f"{sub}/{f.name}": file_sha256(f) for f in sorted(d.iterdir()) if f.is_file()})
    times["total_s"] = round(time.perf_counter() - t0, 2)
    times["cpu_s"] = round(time.process_time() - c0, 2)  # all threads; ~2x total_s on an idle 2-core machine
    times["load_avg_at_start"] = round(load, 2) if load is not None else None  # others' load inflates total_s
    return {
        "name": NAME,
        "params": p,
        "corpus": corpus_info,
        "vocab_size": vocab,
        "eos_token": EOS,
        "eos_token_id": eos_id,
        "max_position_embeddings": p["seq_len"],
        # prompt + generation must fit in the trained window (RoPE, no extrapolation)
        "recommended": {"max_prompt_tokens": max(1, p["seq_len"] - 128), "max_new_tokens": min(128, p["seq_len"] // 2)},
        "n_params": {"target": _n_params(target), "drafter": _n_params(drafter)},
        "losses": {**losses, **evaluation},
        "times": times,
        "wall_time_s": times["total_s"],
        "threads": torch.get_num_threads(),
        "bf16_autocast": training.use_bf16(p["precision"]),
        "versions": {"torch": torch.__version__, "transformers": transformers.__version__,
                     "tokenizers": tokenizers.__version__},
        "files": files,
    }
