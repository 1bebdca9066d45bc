"""`specexp-report` (cli.py): every metrics.json under sweep or run folders collected into one
table (collect_runs.py, per_sample.py), the named table layouts (tables.py) rendered as Markdown
or LaTeX (rendering.py), paired statistics across runs (paired.py), the study report (study.py)
and plots (plots.py); and the torch-free arithmetic a run's summary shares with the report:
per-category breakdowns (categories.py), forward-count cost models (forward_costs.py), the
per-drafted-token aggregates (token_records.py), the paper-reproduction estimators
(paper_estimators.py) and the benchmark's analysis (bench_analysis.py).

May import: stats and dotted_keys only. Never torch, never the layers that decode."""
from specexp import _moved

__getattr__ = _moved.package_getattr(__name__)  # `specexp.report.main` of 0.1, with a warning
