#!/usr/bin/env python
"""Run the sweeps behind one of the report's named tables, then print the table.

    python scripts/run_table_sweeps.py reproduction --out sweeps/repro
    python scripts/run_table_sweeps.py thesis_6_6 --out sweeps/thesis --format latex
    python scripts/run_table_sweeps.py cascade --out sweeps/csd -- hydra/launcher=joblib_gpus
    python scripts/run_table_sweeps.py thesis_6_6 --out /tmp/t --dry-run      # print the commands only

Everything after `--` is appended to every sweep (a launcher, a device, smaller limits...). The
sweeps run in this process through `specexp.experiment.run.run_cli` (each model loads once with the basic
launcher); each gets its own sweep dir under --out, and a re-run resumes (ok runs are skipped).
The models are hub downloads: this needs the network (or local copies, see conf/model_pair/).
"""
from __future__ import annotations

import argparse
import shlex
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def _grid(name: str) -> str:
    """`grid=X`: a threshold grid of conf/grid/ (config.yaml's defaults list `- grid: null`)."""
    return f"grid={name}"


def recipes() -> dict[str, list[tuple[str, list[str]]]]:
    """table -> [(sweep dir name, specexp arguments)]."""
    return {
        "thesis_6_6": [
            ("base", ["experiment=entropy_thesis_opt", "strategy=autoregressive,heuristic"]),
            ("static", ["experiment=entropy_thesis_opt", _grid("entropy_static")]),
            ("ma", ["experiment=entropy_thesis_opt", _grid("entropy_ma")]),
            ("cum", ["experiment=entropy_thesis_opt", _grid("entropy_cum")]),
        ],
        "reproduction": [
            ("gptneo_xsum", ["experiment=repro_gptneo_xsum"]),
            ("deepseek_humaneval", ["experiment=repro_deepseek_humaneval"]),
            ("opt_xsum", ["experiment=repro_opt_xsum"]),
        ],
        "cascade": [
            ("flan_t5_mmlu", ["experiment=csd_flan_t5_mmlu", "strategy=cascade_flan_t5,speculative"]),
            ("flan_t5_mmlu_prevwork", ["experiment=csd_flan_t5_mmlu_prevwork"]),
            ("flan_t5_gsm8k", ["experiment=csd_flan_t5_gsm8k", "strategy=cascade_flan_t5,speculative"]),
            ("llama7b_mmlu", ["experiment=csd_llama7b_mmlu", "strategy=cascade_llama,speculative"]),
            ("llama7b_gsm8k", ["experiment=csd_llama7b_gsm8k", "strategy=cascade_llama,speculative"]),
        ],
        "specbench": [
            ("specbench", ["model_pair=llama-3.2-3b__1b", "dataset=xsum,gsm8k,humaneval,mmlu,wikitext",
                           "strategy=speculative,heuristic,entropy_static,prompt_lookup", "dataset.limit=80"]),
        ],
    }


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    extra = argv[argv.index("--") + 1:] if "--" in argv else []
    argv = argv[: argv.index("--")] if "--" in argv else argv
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("table", choices=sorted(recipes()))
    ap.add_argument("--out", required=True, help="root folder; one sweep dir per sweep below it")
    ap.add_argument("--format", default="md", choices=["md", "latex"])
    ap.add_argument("--dry-run", action="store_true", help="print the commands, run nothing")
    args = ap.parse_args(argv)

    out = Path(args.out)
    failed = 0
    for name, sweep_args in recipes()[args.table]:
        cmd = ["-m", *sweep_args, *extra, f"hydra.sweep.dir={out / name}"]
        print("specexp " + " ".join(shlex.quote(c) for c in cmd), flush=True)
        if not args.dry_run:
            from specexp.experiment import run

            failed += run.run_cli(cmd) != 0
    report_cmd = [str(out), "--table", args.table, "--format", args.format]
    print("specexp-report " + " ".join(shlex.quote(c) for c in report_cmd), flush=True)
    if args.dry_run:
        return 0
    from specexp.report import cli as report

    code = report.main(report_cmd)
    if failed:
        print(f"reproduce_table: {failed} sweep(s) had failed runs (see the runs table: "
              f"specexp-report {out}); re-run this command to retry them", file=sys.stderr)
    return code or (1 if failed else 0)


if __name__ == "__main__":
    sys.exit(main())
