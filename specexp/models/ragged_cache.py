"""`RaggedCache`: a batched KV cache whose rows hold different prefixes (specexp.core.batch_decode decodes with
it). One HF DynamicCache of C columns for all rows, and a [B, C] mask of which cached columns are
valid for each row. Holes are allowed anywhere:
  - a forward feeds each row its own chunk (unseen suffix + drafts), right-padded to the
    batch's widest chunk W; the pads are masked out (mask 0), their position ids are ignored;
    every real token gets its row's true position id (valid tokens so far + j), so RoPE and
    learned positions see exactly the positions of a batch-1 decode;
  - rollback of a row's rejected drafts zeroes their mask entries (per-row rollback, no crop);
  - a finished row is removed from the cache (rows are index-selected): it costs no more work;
  - a new row is appended with C masked columns and starts like a batch-1 decode (empty cache);
  - when C exceeds twice the longest row, each row's valid columns are gathered to the right
    (`compact`), which drops every hole; K/V carry their rotary positions, so moving them is exact.
Masked keys get weight exactly 0 in attention, so each row's logits are those of its batch-1
decode up to float rounding (reduction order over a different number of masked keys); a query
whose keys are all masked (a row with nothing to feed) only affects its own row.
"""
from __future__ import annotations

import torch

from specexp.models.cached_lm import cache_arg, cache_of


def _fit_width(logits: torch.Tensor, v: int | None) -> torch.Tensor:
    """Logits cut or -inf padded to the target's width (as CachedLM.forward)."""
    if v is None or logits.shape[-1] == v:
        return logits
    if logits.shape[-1] > v:
        return logits[:, :v]
    return torch.nn.functional.pad(logits, (0, v - logits.shape[-1]), value=float("-inf"))


class RaggedCache:
    """A batched KV cache whose rows hold different prefixes, with holes (module docstring).
    `length[b]`: tokens of row b's sequence cached (its valid columns)."""

    def __init__(self, model, vocab_size: int | None = None):
        self.model, self.dec = model, model.get_decoder()
        self.head = model.get_output_embeddings()
        self.vocab_size = vocab_size
        self.cache = None  # DynamicCache over C columns (None: nothing cached yet)
        self.mask = torch.zeros(0, 0, dtype=torch.long, device=model.device)  # [B, C] 1 = valid
        self.length: list[int] = []

    @property
    def rows(self) -> int:
        return len(self.length)

    def _kv(self) -> list[tuple[torch.Tensor, torch.Tensor]]:
        return [(layer.keys, layer.values) for layer in self.cache.layers]

    def _set_kv(self, kv) -> None:
        from transformers import DynamicCache

        self.cache = DynamicCache(ddp_cache_data=kv, config=self.model.config)

    @torch.inference_mode()
    def add_rows(self, n: int) -> None:
        """n empty rows at the end (all columns masked)."""
        self.length += [0] * n
        self.mask = torch.cat([self.mask, self.mask.new_zeros(n, self.mask.shape[1])])
        if self.cache is not None:
            self._set_kv([(torch.cat([k, k.new_zeros(n, *k.shape[1:])]), torch.cat([v, v.new_zeros(n, *v.shape[1:])]))
                          for k, v in self._kv()])

    @torch.inference_mode()
    def keep_rows(self, keep: list[int]) -> None:
        """Drop every row not in `keep` (finished rows cost nothing more)."""
        self.length = [self.length[i] for i in keep]
        if not keep:  # nothing left: start afresh
            self.cache, self.mask = None, self.mask.new_zeros(0, 0)
            return
        idx = torch.tensor(keep, device=self.mask.device)
        self.mask = self.mask[idx]
        if self.cache is not None:
            self._set_kv([(k[idx], v[idx]) for k, v in self._kv()])

    @torch.inference_mode()
    def drop_last(self, b: int, n: int) -> None:
        """Per-row rollback: row b forgets its last n cached tokens (their columns are masked)."""
        if n > 0:
            cols = self.mask[b].nonzero().flatten()[-n:]
            self.mask[b, cols] = 0
            self.length[b] -= n

    @torch.inference_mode()
    def compact(self) -> None:
        """Gather each row's valid columns to the right (left padding), dropping all holes."""
        if self.cache is None or self.mask.shape[1] <= 2 * max(self.length, default=0) + 8:
            return
        width = max(self.length)
        idx = torch.zeros(self.rows, width, dtype=torch.long, device=self.mask.device)
        mask = self.mask.new_zeros(self.rows, width)
        for b, n in enumerate(self.length):
            if n:
                idx[b, width - n:] = self.mask[b].nonzero().flatten()
                mask[b, width - n:] = 1
        self.mask = mask
        kv = []
        for k, v in self._kv():  # [B, H, C, D]: gather along C per row
            g = idx[:, None, :, None].expand(-1, k.shape[1], -1, k.shape[3])
            kv.append((k.gather(2, g), v.gather(2, g)))
        self._set_kv(kv)

    @torch.inference_mode()
    def forward(self, feeds: list[torch.Tensor | None], keep: list[int]) -> list[torch.Tensor]:
        """Feed row b the ids feeds[b] [n_b] (None or empty: nothing) after its cached tokens;
        return for each row float32 logits [keep[b], V] after its last keep[b] fed tokens."""
        device = self.mask.device
        lens = [0 if f is None else int(f.shape[0]) for f in feeds]
        W = max(lens)
        ids = torch.zeros(self.rows, W, dtype=torch.long, device=device)
        new = torch.zeros(self.rows, W, dtype=torch.long, device=device)
        pos = torch.zeros(self.rows, W, dtype=torch.long, device=device)
        for b, (f, n) in enumerate(zip(feeds, lens)):
            if n:
                ids[b, :n], new[b, :n] = f, 1
                pos[b, :n] = torch.arange(self.length[b], self.length[b] + n, device=device)
        self.mask = torch.cat([self.mask, new], 1)
        out = self.dec(input_ids=ids, attention_mask=self.mask, position_ids=pos,
                       **cache_arg(self.dec, self.cache), use_cache=True)
        self.cache = cache_of(out)
        hidden = out.last_hidden_state  # [B, W, H]
        picked = [hidden[b, n - k: n] for b, (n, k) in enumerate(zip(lens, keep))]
        for b, n in enumerate(lens):
            self.length[b] += n
        if not sum(keep):
            return [hidden.new_zeros(0, 0) for _ in feeds]
        logits = _fit_width(self.head(torch.cat(picked)).float(), self.vocab_size)
        return list(logits.split(keep))
