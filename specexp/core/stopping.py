"""When a sample's generation ends: an EOS token or a stop string, wherever it appears among the
tokens a round emits (draft, correction or bonus)."""
from __future__ import annotations


class Stopper:
    def __init__(self, eos_ids=(), stop_strings=(), tokenizer=None):
        self.eos = set(int(i) for i in eos_ids if i is not None)
        self.strings = [s for s in stop_strings if s]
        if self.strings and tokenizer is None:
            raise ValueError("stop strings need a tokenizer")
        self.tokenizer = tokenizer
        # a stop string ending in token i lies within the last `window` tokens (each token decodes
        # to at least one byte), so checking that window is exact and O(1) per token
        self.window = max((len(s.encode()) for s in self.strings), default=0) + 1

    def first_stop(self, generated: list[int], start: int) -> int | None:
        """Index of the first token at or after `start` whose emission ends generation, or None."""
        for i in range(start, len(generated)):
            if generated[i] in self.eos:
                return i
            if self.strings:
                text = self.tokenizer.decode(generated[max(0, i + 1 - self.window): i + 1])
                if any(s in text for s in self.strings):
                    return i
        return None
