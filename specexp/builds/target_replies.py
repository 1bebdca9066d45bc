"""The target's own greedy replies to chat prompts, as token ids: the text a drafter most needs to
predict (greedy acceptance asks for exactly the target's argmax after its own tokens). Used by the
feature drafter's build (specexp/builds/train_feature_drafter.py, with the target's reads kept as it writes) and by the
reply datastore (specexp/builds/build_datastore.py, ids only)."""
from __future__ import annotations

import time

import torch


def chat_ids(tok, prompts: list[str], plain: bool = False) -> list[list[int]]:
    """The token ids of `prompts` as user turns in the tokenizer's chat template, ready for the
    reply. A tokenizer without a chat template raises, unless `plain` (the prompt text as is)."""
    if not getattr(tok, "chat_template", None):
        if plain:
            return [tok(q, add_special_tokens=False)["input_ids"] for q in prompts]
        raise ValueError("eagle: the target's tokenizer has no chat template to put the reply prompts in; "
                         "set model_pair.build.replies=0 and give it model_pair.build.corpus text instead")
    return [tok(tok.apply_chat_template([{"role": "user", "content": q}], tokenize=False, add_generation_prompt=True),
                add_special_tokens=False)["input_ids"] for q in prompts]


@torch.inference_mode()
def replies_with_reads(target, prompt_ids: list[list[int]], eos: int, pad: int, max_new_tokens: int, batch: int,
                       topk: int, progress: bool, desc: str = "eagle: the target answers") -> list[dict]:
    """The target's greedy replies to the prompts `prompt_ids`, each as its token ids (prompt +
    reply, `eos` kept; "prompt_tokens": where the reply starts) with what the target computed while
    writing them: its last hidden state at every position (a hook on the final norm, which the
    prefill and every decoding step pass through) and its top-k next-token distribution there
    (renormalised). One pass: no second read of the text. `topk` = 0: the ids only (no hook, no
    head). Batched by prompt length, left-padded with `pad`; returned in prompt order."""
    from tqdm.auto import tqdm

    order = sorted(range(len(prompt_ids)), key=lambda i: len(prompt_ids[i]))
    head, seen, out = target.get_output_embeddings(), [], [None] * len(prompt_ids)
    hook = target.get_decoder().norm.register_forward_hook(lambda _m, _i, h: seen.append(h)) if topk else None
    bar = tqdm(total=len(prompt_ids), desc=desc, unit="prompt", disable=not progress)
    written, t0 = 0, time.perf_counter()
    try:
        for s in range(0, len(order), batch):
            rows = order[s: s + batch]
            width = max(len(prompt_ids[i]) for i in rows)
            ids = torch.full((len(rows), width), pad)
            mask = torch.zeros_like(ids)
            for r, i in enumerate(rows):  # left padding: every prompt ends where the replies start
                ids[r, width - len(prompt_ids[i]):] = torch.tensor(prompt_ids[i])
                mask[r, width - len(prompt_ids[i]):] = 1
            seen.clear()
            gen = target.generate(input_ids=ids, attention_mask=mask, max_new_tokens=max_new_tokens, do_sample=False,
                                  pad_token_id=pad, top_k=None, top_p=None, temperature=None)
            hidden = torch.cat(seen, dim=1) if topk else None  # [b, positions fed]: the last token is never fed
            for r, i in enumerate(rows):
                reply = gen[r, width:].tolist()
                if eos in reply:  # the reply ends at its EOS (kept); padding follows
                    reply = reply[: reply.index(eos) + 1]
                start = width - len(prompt_ids[i])
                if not topk:
                    out[i] = {"ids": gen[r, start: width + len(reply)].clone(), "prompt_tokens": len(prompt_ids[i])}
                else:
                    n = min(len(prompt_ids[i]) + len(reply), hidden.shape[1] - start)
                    h = hidden[r, start: start + n]
                    p, j = head(h).float().softmax(-1).topk(topk, dim=-1)
                    out[i] = {"ids": gen[r, start: start + n].clone(), "prompt_tokens": len(prompt_ids[i]),
                              "top_ids": j.int(), "top_probs": (p / p.sum(-1, keepdim=True)).half(),
                              "hidden": h.half()}
                written += len(reply)
            bar.update(len(rows))
            bar.set_postfix(reply_tok_s=f"{written / (time.perf_counter() - t0):.0f}")
    finally:
        if hook is not None:
            hook.remove()
        bar.close()
    return out
