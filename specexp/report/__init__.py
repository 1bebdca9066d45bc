"""`specexp-report` (cli.py): every metrics.json under sweep or run folders collected into one
table (collect_runs.py, per_sample.py), the named table layouts (tables.py) rendered as Markdown
or LaTeX (rendering.py), paired statistics across runs (paired.py), the study report (study.py)
and plots (plots.py), per-category tables (categories.py); and the torch-free arithmetic a
run's summary shares with the report: forward-count cost models (forward_costs.py), the
per-drafted-token aggregates (token_records.py), the paper-reproduction estimators
(paper_estimators.py), the benchmark's analysis (bench_analysis.py) and how a pair is named
from its models (pair_names.py).

May import: stats and dotted_keys only. Never torch, never the layers that decode."""
from specexp import _moved

__getattr__ = _moved.package_getattr(__name__)  # `specexp.report.main` of 0.1, with a warning
