"""`specexp-report`: collect every metrics.json under sweep / run dirs into one table, print the
papers' tables, the paired statistics across runs and a study report with plots.

    specexp-report outputs/multirun/2025-01-01/12-00-00            # runs.csv + runs.parquet, runs table
    specexp-report SWEEP_DIR --table thesis_6_6 --format latex      # a named layout (see TABLES)
    specexp-report SWEEP_A SWEEP_B --table all --plots -o report/   # several sweeps, all tables, PNGs
    specexp-report SWEEP_DIR --stats                                # paired tests vs each run's own baseline
    specexp-report SWEEP_DIR --stats --reference strategy=speculative   # ... vs the best fixed-gamma run
    specexp-report PILOT_DIR --plan --effect 1.10 --power 0.8       # samples needed, from a pilot run
    python -m specexp.report.cli ...                                    # the same

Modules, imported downward only: stats (tests, intervals) <- collect (tables of runs and samples)
<- tables (named layouts), compare (paired statistics across runs), plots <- report (this CLI and
final_report.md).
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from specexp.report import paired as compare
from specexp.report import plots, study
from specexp.report.collect_runs import collect, load_runs, write_table
from specexp.report.per_sample import collect_samples
from specexp.report.rendering import render_latex, render_markdown
from specexp.report.tables import TABLES, render

# --------------------------------------------------------------------------------------------
# CLI
# --------------------------------------------------------------------------------------------

def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        prog="specexp-report",
        description="Collect metrics.json files of sweeps/runs into one table (CSV + parquet), "
                    "print named tables (Markdown or LaTeX), paired statistics and write plots.")
    ap.add_argument("paths", nargs="+", help="sweep dirs, run dirs or metrics.json files (searched recursively)")
    ap.add_argument("-o", "--out", help="output dir (default: <the one dir given>/report, else ./report)")
    ap.add_argument("-t", "--table", action="append", default=None,
                    help=f"table layout to print, repeatable: {', '.join(TABLES)} or all (default: runs)")
    ap.add_argument("-f", "--format", default="md", choices=["md", "latex"], help="table format")
    ap.add_argument("--plots", action="store_true", help="write PNG plots into the output dir")
    ap.add_argument("--stats", action="store_true",
                    help="paired statistics of every run against its reference (stats.csv): speedup with a "
                         "t interval, paired t-test (the verdict's), Wilcoxon, Cohen's d, Holm, verdict (or undecidable, "
                         "with the n that would decide)")
    ap.add_argument("--reference", nargs="+", metavar="KEY=VALUE", default=None,
                    help="the reference of --stats: the run matching every KEY=VALUE (e.g. strategy=speculative: "
                         "the fastest fixed-gamma run; run=0: job 0); default: each run's own autoregressive baseline")
    ap.add_argument("--study", action="store_true",
                    help="the study report: final_report.md, processed_data.csv, stats.csv and the figures "
                         "(implies --stats and --plots)")
    ap.add_argument("--plan", action="store_true",
                    help="from a pilot sweep: the samples per run needed to detect a speedup of --effect with "
                         "--power (paired t-test on log per-sample ratios, Holm across the runs), with its assumptions")
    ap.add_argument("--effect", type=float, default=1.10, help="--plan: the speedup to detect (default 1.10)")
    ap.add_argument("--power", type=float, default=0.8, help="--plan: the power wanted (default 0.8)")
    ap.add_argument("--seed", type=int, default=0, help="seed of the bootstrap resampling (default 0)")
    ap.add_argument("--no-write", action="store_true",
                    help="print only: write no table files (--plots still writes its PNGs)")
    args = ap.parse_args(argv)

    runs = load_runs(args.paths)
    if not runs:
        print(f"specexp-report: no metrics.json under {' '.join(args.paths)}", file=sys.stderr)
        return 1
    df = collect(args.paths, runs=runs)
    samples = collect_samples(runs, df)
    if args.out:
        out = Path(args.out)
    elif len(args.paths) == 1 and Path(args.paths[0]).is_dir():
        out = Path(args.paths[0]) / "report"
    else:
        out = Path("report")
    n_ok = int((df["status"] == "ok").sum())
    print(f"specexp-report: {len(df)} runs ({n_ok} ok, {len(df) - n_ok} failed) from {len(args.paths)} path(s)",
          file=sys.stderr)
    if not args.no_write:
        csv, pq = write_table(df, out)
        print(f"specexp-report: wrote {csv} and {pq}", file=sys.stderr)
    if args.plan:
        try:
            print("\n".join(compare.plan(df, samples, args.effect, args.power)))
        except ValueError as err:
            print(f"specexp-report: {err}", file=sys.stderr)
            return 2
        if not (args.table or args.stats or args.study or args.plots):
            return 0
    names = args.table or ([] if args.stats or args.study else ["runs"])
    if "all" in names:
        names = list(TABLES)
    for name in names:
        text = render(df, name, args.format, samples)
        print(text)
        if not args.no_write:
            (out / f"{name}.{'tex' if args.format == 'latex' else 'md'}").write_text(text)
    try:
        reference = compare.parse_reference(args.reference)
        if args.study:
            path, comparison = study.write_final_report(df, samples, runs, out, reference, args.seed)
            print(render(df, "runs", "md", samples))
            print(comparison)
            print(f"specexp-report: wrote {path} (with processed_data.csv, stats.csv and the figures)", file=sys.stderr)
            return 0
        if args.stats:
            st = compare.compare_runs(df, samples, reference, args.seed)
            section = study.stats_section(st)
            print(render_latex([section], "Paired statistics") if args.format == "latex"
                  else render_markdown([section], "Paired statistics"))
            if not args.no_write:
                st.to_csv(out / "stats.csv", index=False)
                print(f"specexp-report: wrote {out / 'stats.csv'}", file=sys.stderr)
    except ValueError as err:
        print(f"specexp-report: {err}", file=sys.stderr)
        return 2
    if args.plots:
        written = plots.plot_all(df, runs, out)
        for p in written:
            print(f"specexp-report: plot {p}", file=sys.stderr)
        if not written:
            print("specexp-report: nothing to plot (no ok runs with a varying threshold, records or drafts)",
                  file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
