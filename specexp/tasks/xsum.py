"""XSum (Narayan et al. 2018; test split): a one-sentence summary of a BBC article, scored with
ROUGE-1/2/L F1 (Porter stemming, the `rouge-score` package, as in the papers; offline -- the
`evaluate` hub metric is not used). Scores are fractions in [0, 1], averaged over samples."""
from __future__ import annotations

from specexp.tasks.base import Sample, Task, check_completions
from specexp.tasks.dataset_sources import load_hub, read_local, render_span, resolve

ROUGE_TYPES = ("rouge1", "rouge2", "rougeL")


def rouge_f1(predictions: list[str], references: list[str]) -> list[dict[str, float]]:
    """Per pair: {"rouge1", "rouge2", "rougeL"} F1 with stemming (rouge-score's tokenizer: lowercased,
    non-alphanumerics dropped)."""
    from rouge_score import rouge_scorer

    scorer = rouge_scorer.RougeScorer(list(ROUGE_TYPES), use_stemmer=True)
    return [{k: v.fmeasure for k, v in scorer.score(ref, pred).items()} for pred, ref in zip(predictions, references)]


class XSum(Task):
    name = "xsum"
    version = "2"  # 2: a too-long prompt keeps the article's start and the instruction (was: the last tokens)
    keep = "start"  # a too-long prompt keeps the article's start (its lead) and the instruction after it
    cut_part = "article"  # the article is each prompt's cut_span

    def __init__(self, source: str = "auto", path=None, hub_name: str = "EdinburghNLP/xsum",
                 split: str = "test",
                 template: str = "Article: {document}\n\nSummarize the above article in 1 sentence.\n", **kw):
        super().__init__(**kw)
        self.source = source  # auto | path | shared | hub (see specexp/tasks/dataset_sources.py)
        self.path = path  # local file(s) or folder: rows with document, summary (id optional)
        self.hub_name, self.split = hub_name, split
        self.template = template  # the prompt; {document} is replaced

    def load(self) -> list[Sample]:
        rows = resolve(self.name, self.source, self.path, f"xsum/{self.split}.jsonl",
                       lambda p: read_local(p, self.split), lambda: load_hub(self.hub_name, None, self.split),
                       self.hub_name)
        out = []
        for i, r in enumerate(rows):
            if "document" not in r or "summary" not in r:
                raise ValueError(f"xsum rows need 'document' and 'summary' fields, got {sorted(r)}")
            prompt, span = render_span(self.template, "document", r["document"].strip())
            out.append(Sample(str(r.get("id") or f"xsum/{i}"), prompt, reference=r["summary"].strip(), cut_span=span))
        return out

    def postprocess(self, sample: Sample, completion: str) -> str:
        """Cut at the first stop string (leading blank lines skipped first), then strip."""
        text = completion.lstrip()
        return super().postprocess(sample, text).strip()

    def score(self, samples: list[Sample], completions: list[str]) -> dict:
        check_completions(samples, completions)
        preds = [c.strip() for c in completions]
        scores = rouge_f1(preds, [s.reference for s in samples])
        n = len(scores)
        out = {k: (sum(sc[k] for sc in scores) / n if n else 0.0) for k in ROUGE_TYPES}
        out["n_scored"] = n
        out["per_sample"] = [{"id": s.id, **sc, "pred": p, "gold": s.reference}
                             for s, sc, p in zip(samples, scores, preds)]
        return out
