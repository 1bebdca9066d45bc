"""One prompt given on the command line (`specexp prompt="..."`) or typed in the console: a
dataset of one sample, no quality metric. With `show` the run prints the generation with the draft
tokens marked (specexp/experiment/watch.py)."""
from __future__ import annotations

from specexp.tasks.base import Sample, Task


class PromptTask(Task):
    name = "prompt"
    version = "1"

    def __init__(self, text: str | None = None, show: bool = True, **kw):
        super().__init__(**kw)
        if not text:
            raise ValueError('the prompt dataset needs a text: specexp prompt="..." (or dataset.text="...")')
        self.text = str(text)  # the prompt, as is (the chat template, if on, wraps it)
        self.show = show  # print the marked generation after decoding

    def load(self) -> list[Sample]:
        return [Sample("prompt", self.text)]
