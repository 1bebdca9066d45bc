"""Log-likelihood of a continuation after a context, as lm-evaluation-harness scores
multiple-choice tasks (`output_type: multiple_choice`, e.g. its `mmlu`): the answer is the choice
whose continuation tokens the model finds most likely.

Tokenization follows the harness's `_encode_pair`: trailing whitespace of the context moves to
the front of the continuation; `whole = encode(context + continuation)`, `ctx = encode(context)`,
and the continuation's tokens are `whole[len(ctx):]` (so a leading space merges with the choice
as it would in running text); no special tokens are added (the harness's default for causal
models). Encoder-decoder models: the context goes to the encoder (with the tokenizer's special
tokens), the continuation is scored as the decoder's output.

A task that scores this way asks for the target: the run calls `task.set_model(model, tokenizer)`
before `score()` when the task has that method (`specexp/experiment/run.py`).
"""
from __future__ import annotations

import torch


def encode_pair(tokenizer, context: str, continuation: str) -> tuple[list[int], list[int]]:
    """(context ids, continuation ids), the harness's way (module doc)."""
    n_spaces = len(context) - len(context.rstrip())
    if n_spaces:
        context, continuation = context[:-n_spaces], context[-n_spaces:] + continuation
    whole = tokenizer(context + continuation, add_special_tokens=False)["input_ids"]
    ctx = tokenizer(context, add_special_tokens=False)["input_ids"]
    return ctx, whole[len(ctx):]


@torch.inference_mode()
def loglikelihood(model, tokenizer, context: str, continuation: str) -> float:
    """Sum over the continuation's tokens of log p(token | everything before it), in nats."""
    device = next(model.parameters()).device
    if getattr(model.config, "is_encoder_decoder", False):
        enc = tokenizer(context, return_tensors="pt")["input_ids"].to(device)
        cont = tokenizer(continuation, add_special_tokens=False)["input_ids"]
        labels = torch.tensor([cont], device=device)
        logits = model(input_ids=enc, labels=labels).logits[0]  # [len(cont), V]: position i predicts cont[i]
    else:
        ctx, cont = encode_pair(tokenizer, context, continuation)
        if not ctx:  # nothing to condition on: start from BOS/EOS, as the harness does
            ctx = [tokenizer.bos_token_id if tokenizer.bos_token_id is not None else tokenizer.eos_token_id]
        ids = torch.tensor([ctx + cont], device=device)
        logits = model(input_ids=ids[:, :-1]).logits[0, len(ctx) - 1:]  # position len(ctx)-1+i predicts cont[i]
    logp = torch.log_softmax(logits.float(), dim=-1)
    return float(logp[torch.arange(len(cont), device=device), torch.tensor(cont, device=device)].sum())
