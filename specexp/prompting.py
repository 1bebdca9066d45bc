"""From text to the token ids the decode loop starts from, and the ids that end a generation."""
from __future__ import annotations

import torch


def encode_prompt(tokenizer, text: str, max_prompt_tokens: int | None, device) -> torch.Tensor:
    ids = tokenizer(text)["input_ids"]
    if max_prompt_tokens:
        ids = ids[-max_prompt_tokens:]  # keep the end of the prompt: it is what the model continues
    if not ids:
        if tokenizer.bos_token_id is None:
            raise ValueError("a prompt encodes to no tokens and the tokenizer has no BOS token")
        ids = [tokenizer.bos_token_id]
    return torch.tensor(ids, device=device)


def eos_ids(pair) -> list[int]:
    ids = {pair.tokenizer.eos_token_id}
    gen_eos = getattr(getattr(pair.target, "generation_config", None), "eos_token_id", None)
    ids.update(gen_eos if isinstance(gen_eos, list) else [gen_eos])
    return sorted(i for i in ids if i is not None)
