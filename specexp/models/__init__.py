"""Models as the loops see them: where weights come from and how a pair loads (loading.py),
fetching the offline copies (fetch.py, which also owns the cache root), a causal LM that owns
its KV cache (cached_lm.py) and a batched cache of ragged rows (ragged_cache.py), turning logits
into the distribution we sample from (sampling.py), its entropy (token_entropy.py), and from a
prompt's text to token ids and the ids that end a generation (prompt_ids.py).

May import: stats and dotted_keys only (the bottom layer besides tasks)."""
from specexp import _moved

__getattr__ = _moved.package_getattr(__name__)  # `specexp.models.load_model` of 0.1, with a warning
