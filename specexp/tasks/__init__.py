"""Tasks: where a dataset's samples come from, how a sample becomes a prompt, when generation
stops, and how outputs are scored.

    humaneval.HumanEval   pass@1 in a sandbox (sandbox/)       conf/dataset/humaneval.yaml
    gsm8k.GSM8K           final-number accuracy                 conf/dataset/gsm8k.yaml, gsm8k_csd.yaml
    mmlu.MMLU             answer-letter accuracy                conf/dataset/mmlu.yaml, mmlu_csd.yaml
    xsum.XSum             ROUGE-1/2/L F1                        conf/dataset/xsum.yaml
    wikitext.WikiText     continuation (no metric)              conf/dataset/wikitext.yaml
    typed_prompts.PromptTask  prompts from the command line     conf/dataset/prompt.yaml
    chat_categories.ChatCategories  chat prompts of 15 kinds    conf/dataset/chat_categories.yaml

Sources (local files, the shared copy, the hub) are resolved in dataset_sources.py; docs/datasets.md has
the details.

May import: nothing of specexp outside tasks/ (a task knows text, not models)."""
from specexp.tasks.base import Sample, Task

__all__ = ["Sample", "Task"]
