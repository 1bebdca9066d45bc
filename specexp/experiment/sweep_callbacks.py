"""Sweep helpers: the one line a finished run prints, the resume check, the job folder resolver
(`specexp_job_dir`: a sweep never overwrites another sweep's results), and Hydra callbacks that
a sweep config switches on (`hydra.callbacks`; see docs/sweeps.md):

  SweepLock     one sweep at a time per hydra.sweep.dir (a second one fails at once)
  SweepSummary  at the end of a multirun (also when the sweep raises because a job failed),
                print one line per run of the sweep dir (ok / skipped / failed with its error)
                and write the report table (`<sweep dir>/report/runs.csv` and `.parquet`)
  PinGPU        pin each launcher worker process to its own GPU (specexp/experiment/gpu_pin.py)
  Objective     replace a job's return value (tokens/s) by the metric a sweeper optimises,
                penalised when the run's quality constraint does not hold (Optuna)

Callbacks run inside Hydra's `run_job` (on_job_*), in the process that runs the job (a joblib
worker, a SLURM job), or in the launching process (on_multirun_*). This module imports no
torch at import time: `specexp-report` and the launching process stay light.
"""
from __future__ import annotations

import atexit
import fcntl
import json
import logging
import os
import re
import statistics
import sys
import time
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf

from specexp import stats
from specexp.dotted_keys import value_at
from specexp.experiment import gpu_pin

log = logging.getLogger("specexp.experiment.sweep_callbacks")

PinGPU = gpu_pin.PinGPU  # it lives in specexp/experiment/gpu_pin.py; specexp.experiment.sweep_callbacks.PinGPU is the path older configs name

# Keys of the run config that do not change what a run measures: a metrics.json written with
# other values of these still counts as "the same run" for resume.
RESUME_IGNORED_KEYS = ("resume", "summary")


# --------------------------------------------------------------------------------------------
# One line per finished run, and the resume check (used by specexp.experiment.run)
# --------------------------------------------------------------------------------------------

def one_line(text: str | None, limit: int = 240) -> str:
    """A (multi-line) error message on one line, cut to `limit` characters."""
    s = " ".join(part.strip() for part in str(text or "").splitlines() if part.strip())
    return s if len(s) <= limit else s[: limit - 3] + "..."


def _num(x, fmt: str) -> str:
    return "n/a" if x is None else fmt.format(x)


# --------------------------------------------------------------------------------------------
# Headline: the figures a run's summary, its log line and the sweep objective report
# --------------------------------------------------------------------------------------------

BATCH_THROUGHPUT = "batch throughput"
# Keys of metrics.json that are per-row figures on a batched run (sums of per-row latencies)
PER_ROW_KEYS = ("tokens_per_second", "speedup.throughput_ratio")


def headline(m: dict) -> dict:
    """metrics.json["headline"]: the run's throughput and speedup, and what they measure.

    batch 1: throughput = new tokens / the sum of the samples' decode times (metrics
      tokens_per_second), speedup = metrics speedup.throughput_ratio with its interval (docs/statistics.md)
      over samples.
    batch B > 1: batch throughput = new tokens of all samples / wall time of the whole dataset's
      decode (metrics batch.tokens_per_second), speedup against autoregressive at the same B
      (batch.speedup_vs_autoregressive_same_batch). A batched decode is timed as a whole, one
      time per mode and repeat, so its CIs are over repeats: timing noise, the same samples in
      each (`_log_t_interval`); one repeat gives none (`why_no_ci` says so). The per-row figures
      (each row timed from admission to its last round, rows sharing the batch counted apart)
      are under `per_row`, as tokens_per_second and speedup keep them."""
    conf = stats.CONFIDENCE
    b = m.get("batch")
    sp = m.get("speedup") if isinstance(m.get("speedup"), dict) else {}
    if not (isinstance(b, dict) and (m.get("batch_size") or 1) > 1):
        ci = [sp["ci_low"], sp["ci_high"]] if sp.get("ci_low") is not None else None
        return {"measure": "throughput", "batch_size": m.get("batch_size") or 1,
                "estimator": "new tokens / the sum of the samples' decode times",
                "tokens_per_second": m.get("tokens_per_second"), "tokens_per_second_ci": None,
                "speedup": sp.get("throughput_ratio"), "speedup_ci": ci,
                "speedup_against": "autoregressive" if sp else None, "confidence": conf,
                "ci_method": (sp.get("ci") or {}).get("method"),
                "why_no_ci": None if ci or not sp else f"n={sp.get('n_samples')} samples"}
    B, tps, walls = b["batch_size"], b["tokens_per_second"], b["wall_time_s"]
    main = "strategy" if "strategy" in tps else "autoregressive"
    repeats = len(walls[main])
    # per repeat r: mode m's throughput = its new tokens (tokens/s x median time) / its time in repeat r
    thr = {k: [tps[k] * statistics.median(walls[k]) / t for t in walls[k]] for k in tps}
    speedup = b.get("speedup_vs_autoregressive_same_batch")
    if repeats < 2:
        why = (f"one repeat (timing.repeats={repeats}): a batched decode is timed as a whole, one time per mode; "
               "timing.repeats>=2 gives a CI over repeats")
    else:
        why = None
    modes = {k: {"tokens_per_second": v, "ci": _log_t_interval(thr[k], conf) if why is None else None}
             for k, v in tps.items()}
    ratios = [s / a for s, a in zip(thr[main], thr.get("autoregressive", []))]  # paired: the same repeat
    return {"measure": BATCH_THROUGHPUT, "batch_size": B, "estimator": b.get("estimator"),
            "tokens_per_second": tps[main], "tokens_per_second_ci": modes[main]["ci"],
            "speedup": speedup,
            "speedup_ci": _log_t_interval(ratios, conf) if speedup is not None and why is None else None,
            "speedup_against": f"autoregressive at batch {B}" if speedup is not None else None,
            "speedup_vs_autoregressive_batch1": b.get("speedup_vs_autoregressive_batch1"),
            "confidence": conf,
            "ci_method": (f"Student t interval over the {repeats} repeats of the log per-repeat value "
                          "(the geometric mean's; timing noise only, the same samples in every repeat)"),
            "why_no_ci": why, "main_mode": main, "modes": modes, "repeats": repeats,
            "per_row": {"tokens_per_second": m.get("tokens_per_second"), "speedup": sp.get("throughput_ratio"),
                        "speedup_ci": [sp["ci_low"], sp["ci_high"]] if sp.get("ci_low") is not None else None,
                        "latency_ms_per_token_p50": value_at(m, "latency_ms_per_token.p50")}}


def _log_t_interval(xs: list[float], confidence: float) -> list[float] | None:
    """A CI of the geometric mean of `xs` (> 0): the Student t interval of mean(log x),
    mean +- t_{n-1} * sd / sqrt(n), mapped back by exp. None with fewer than 2 values."""
    import math

    from scipy.stats import t

    if len(xs) < 2 or min(xs) <= 0:
        return None
    logs = [math.log(x) for x in xs]
    half = t.ppf((1 + confidence) / 2, len(logs) - 1) * statistics.stdev(logs) / math.sqrt(len(logs))
    mean = statistics.fmean(logs)
    return [math.exp(mean - half), math.exp(mean + half)]


def format_tps(x, ci=None) -> str:
    """`169.8 tok/s [150.2, 190.1]`; `n/a` when absent."""
    return _num(x, "{:.1f}") + " tok/s" + (f" [{ci[0]:.1f}, {ci[1]:.1f}]" if ci else "")


def format_headline_speedup(h: dict) -> str:
    """`0.77x [0.70, 0.85]`, `0.77x (no CI: one repeat)`, `n/a` (headline's `why_no_ci` says more)."""
    if h.get("speedup") is None:
        return "n/a"
    ci = h.get("speedup_ci")
    if ci:
        return stats.format_ratio(h["speedup"], ci[0], ci[1])
    why = "one repeat" if h.get("repeats") == 1 else h.get("why_no_ci") or "none"
    return stats.format_ratio(h["speedup"]) + f" (no CI: {why})"


def run_line(m: dict, skipped: bool = False) -> str:
    """The headline of one run, for the log: status, overrides, tokens/s, acceptance, speedup
    (a batched run: batch throughput and the speedup at its batch size first, per row after).

        specexp run ok: [strategy.gamma=2 sampling=greedy] 812.3 tok/s, accept 0.412, speedup (throughput ratio, 95% CI) 1.31x [1.12, 1.50]
        specexp run ok: [batch_size=3] batch 3: 169.8 tok/s [160.1, 180.0] batch throughput, speedup vs
            autoregressive at batch 3 (batch throughput ratio, 95% CI over repeats) 0.77x [0.70, 0.85],
            per-row 74.3 tok/s, accept 0.412, ...
        specexp run FAILED: [strategy.gamma=0] ValueError: gamma must be >= 1, got 0
    """
    overrides = " ".join(m.get("overrides") or []) or "no overrides"
    status = m.get("status", "?")
    if status != "ok":
        return f"specexp run {status.upper()}: [{overrides}] {one_line(m.get('error'))}".rstrip()
    h = m.get("headline") or headline(m)
    if h["measure"] == BATCH_THROUGHPUT:
        what = "skipped (resume: already ok)" if skipped else "ok"
        parts = [f"batch {h['batch_size']}: {format_tps(h['tokens_per_second'], h['tokens_per_second_ci'])} "
                 "batch throughput"]
        if h.get("speedup") is not None:
            ci = f", {int(h['confidence'] * 100)}% CI over repeats" if h.get("speedup_ci") else ""
            parts.append(f"speedup vs {h['speedup_against']} (batch throughput ratio{ci}) {format_headline_speedup(h)}")
        parts += [f"per-row {format_tps(h['per_row']['tokens_per_second'])}",
                  f"accept {_num(m.get('acceptance_rate'), '{:.3f}')}",
                  f"mean acc. len {_num(m.get('mean_accepted_length'), '{:.2f}')}"]
        if m.get("all_match_baseline") is not None:
            parts.append(f"matches AR {m.get('n_matches_baseline')}/{value_at(m, 'dataset.n_samples')}")
        return f"specexp run {what}: [{overrides}] " + ", ".join(parts)
    parts = [f"{_num(m.get('tokens_per_second'), '{:.1f}')} tok/s",
             f"accept {_num(m.get('acceptance_rate'), '{:.3f}')}",
             f"mean acc. len {_num(m.get('mean_accepted_length'), '{:.2f}')}"]
    sp = m.get("speedup")
    if isinstance(sp, dict):
        parts.append(f"speedup (throughput ratio, 95% CI) {stats.format_speedup(sp)}")
    if m.get("all_match_baseline") is not None:
        parts.append(f"matches AR {m.get('n_matches_baseline')}/{value_at(m, 'dataset.n_samples')}")
    what = "skipped (resume: already ok)" if skipped else "ok"
    return f"specexp run {what}: [{overrides}] " + ", ".join(parts)


def _comparable(config: dict | None) -> dict:
    c = dict(config or {})
    for k in RESUME_IGNORED_KEYS:
        c.pop(k, None)
    return json.loads(json.dumps(c, default=str))  # the form it has after a JSON round trip


def same_config(stored: dict | None, current: dict | None) -> bool:
    """Whether a stored metrics.json was written by the same run config (unresolved, as saved),
    ignoring `resume`/`summary`. A job dir reused by a different sweep point (job numbers shift
    when a sweep's lists change) is therefore run again instead of being passed off as done."""
    return stored is not None and _comparable(stored) == _comparable(current)


def read_metrics(path: str | Path) -> dict:
    """A metrics.json's content; {} when it is missing or unreadable (a run to do)."""
    try:
        return json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return {}


# --------------------------------------------------------------------------------------------
# Job folders that never overwrite another sweep's results, and one sweep per folder at a time
# --------------------------------------------------------------------------------------------

def job_dir(sweep_dir: str, num: Any, _root_: DictConfig) -> str:
    """Resolver `${specexp_job_dir:${hydra.sweep.dir},${hydra.job.num}}` (conf/config.yaml's
    hydra.sweep.subdir): the folder, inside `sweep_dir`, where job `num` writes.

    Job `num` writes `<num>`, unless that folder holds an ok result of another run config (an
    earlier sweep with other lists in the same hydra.sweep.dir); then `<num>_1`, `<num>_2`, ...
    In that chain it takes the folder that holds this config's ok result (resume: skipped),
    else the first one without an ok result (a failed or unfinished run is retried there), else
    a new one. Hydra evaluates this once per job, before it creates the folder; jobs of one
    sweep each search their own names, and SweepLock keeps other sweeps out meanwhile."""
    config = OmegaConf.to_container(_root_, resolve=False)
    config.pop("hydra", None)  # what specexp.experiment.run saves as metrics.json's "config"
    metrics_file = str(_root_.get("metrics_file") or "metrics.json")
    free = None
    for k in range(10_000):
        name = str(num) if k == 0 else f"{num}_{k}"
        path = Path(str(sweep_dir)) / name
        if not path.exists():
            return free or name
        m = read_metrics(path / metrics_file)
        if m.get("status") != "ok":
            free = free or name
        elif same_config(m.get("config"), config):
            return name
    raise RuntimeError(f"job {num}: 10000 folders in {sweep_dir} hold other runs' results")


if not OmegaConf.has_resolver("specexp_job_dir"):
    OmegaConf.register_new_resolver("specexp_job_dir", job_dir)

_LOCKS: dict[str, list[int]] = {}  # lock file -> [descriptor holding it, users in this process]


class SweepLock(Callback):
    """One sweep at a time per hydra.sweep.dir: an exclusive, non-blocking flock on
    `<sweep dir>/.specexp-sweep.lock`, taken when the multirun starts (in the launching process,
    which waits for every job, whatever the launcher) and released when it ends or the process
    exits. A second sweep into the same folder fails at once, naming the one that holds it.
    (SweepSummary takes the same lock, so that it never reports on a folder another sweep is
    writing and the lock outlives its report; the lock is counted per user in this process.)"""

    def __init__(self) -> None:
        self._key: str | None = None

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        self._key = lock_or_exit(str(config.hydra.sweep.dir))

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        release_sweep_lock(self._key)


class SweepBusy(RuntimeError):
    """Another sweep holds this sweep dir's lock."""


def acquire_sweep_lock(sweep_dir: str) -> str:
    """Take `<sweep_dir>/.specexp-sweep.lock` for this process and return its key for
    release_sweep_lock, or raise SweepBusy naming the process that holds it (its pid, start time
    and command line are written in the file)."""
    folder = Path(sweep_dir)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / ".specexp-sweep.lock"
    key = str(path.resolve())
    if key in _LOCKS:  # held by this process already: one more user
        _LOCKS[key][1] += 1
        return key
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        holder = os.pread(fd, 4096, 0).decode(errors="replace").strip() or "unknown"
        os.close(fd)
        raise SweepBusy(f"specexp sweep: {folder} is in use by another sweep ({holder}). Two sweeps must "
                           "not write one folder at once: wait for that one to end, or give this one its own "
                           "hydra.sweep.dir") from None
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"pid {os.getpid()}, started {time.strftime('%Y-%m-%d %H:%M:%S')}: "
                  f"{' '.join(sys.argv)}\n".encode(), 0)
    _LOCKS[key] = [fd, 1]
    return key


def lock_or_exit(sweep_dir: str) -> str:
    """acquire_sweep_lock, or print why not and end the process (status 1) before any job runs:
    Hydra turns an Exception raised in a callback into a warning and goes on, SystemExit it lets through."""
    try:
        return acquire_sweep_lock(sweep_dir)
    except SweepBusy as err:
        print(err, file=sys.stderr, flush=True)
        raise SystemExit(1) from None


def release_sweep_lock(key: str | None) -> None:
    """One user of the lock `key` is done; the last one unlocks it."""
    if key in _LOCKS:
        _LOCKS[key][1] -= 1
        if _LOCKS[key][1] <= 0:
            os.close(_LOCKS.pop(key)[0])


def release_sweep_locks() -> None:
    """Release every sweep lock this process holds (specexp.experiment.run.run_cli, after a sweep that
    raised and so never reached on_multirun_end)."""
    while _LOCKS:
        os.close(_LOCKS.popitem()[1][0])


# --------------------------------------------------------------------------------------------
# SweepSummary: what happened to every run of the sweep
# --------------------------------------------------------------------------------------------

def summarize(sweep_dir: str | Path, since: float | None = None) -> str:
    """One line per metrics.json under `sweep_dir` (sorted by job dir): ok / skipped / failed.
    `since`: the sweep's start time; a run whose metrics.json is older was skipped (resume)."""
    sweep_dir = Path(sweep_dir)
    paths = sorted(sweep_dir.rglob("metrics.json"), key=lambda p: _job_sort_key(p, sweep_dir))
    counts = {"ok": 0, "skipped": 0, "failed": 0}
    lines = []
    loaded = []
    for p in paths:
        try:
            loaded.append((p, json.loads(p.read_text())))
        except (OSError, ValueError) as err:
            loaded.append((p, {"status": "failed", "error": f"unreadable metrics.json ({err})"}))
    sets = [set(m.get("overrides") or []) for _, m in loaded]
    common = set.intersection(*sets) if len(sets) > 1 else set()
    for p, m in loaded:
        rel = str(p.parent.relative_to(sweep_dir))
        ov = " ".join(o for o in (m.get("overrides") or []) if o not in common)
        if m.get("status") == "ok":
            state = "skipped" if since is not None and p.stat().st_mtime < since else "ok"
            counts[state] += 1
            sp, h = m.get("speedup"), m.get("headline") or headline(m)
            if h["measure"] == BATCH_THROUGHPUT:  # a batched run: its batch throughput, per row after
                lines.append(f"  {rel:>4} {state:<7} [{ov}] batch {h['batch_size']}: "
                             f"{format_tps(h['tokens_per_second'], h['tokens_per_second_ci'])} batch throughput"
                             + (f", speedup vs {h['speedup_against']} {format_headline_speedup(h)}"
                                if h.get("speedup") is not None else "")
                             + f", per-row {format_tps(h['per_row']['tokens_per_second'])}, "
                             f"accept {_num(m.get('acceptance_rate'), '{:.3f}')}")
                continue
            lines.append(f"  {rel:>4} {state:<7} [{ov}] {_num(m.get('tokens_per_second'), '{:.1f}')} tok/s, "
                         f"accept {_num(m.get('acceptance_rate'), '{:.3f}')}"
                         + (f", speedup (throughput ratio, 95% CI) {stats.format_speedup(sp)}"
                            if isinstance(sp, dict) else ""))
        else:
            counts["failed"] += 1
            lines.append(f"  {rel:>4} FAILED  [{ov}] {one_line(m.get('error'), 160)}")
    head = (f"specexp sweep {sweep_dir}: {len(paths)} runs, {counts['ok']} ok, "
            f"{counts['skipped']} skipped (already ok), {counts['failed']} failed")
    if counts["failed"]:
        head += " (re-run the same command to retry the failed runs; ok runs are skipped)"
    if common:
        head += "\n  common overrides: " + " ".join(o for o in (loaded[0][1].get("overrides") or []) if o in common)
    return "\n".join([head, *lines])


def _job_sort_key(p: Path, root: Path):
    """Job folders in numeric order, each job's later folders after it: 0, 0_1, 1, 2, 10."""
    rel = p.parent.relative_to(root).parts
    return tuple((0, tuple(map(int, x.split("_"))), "") if re.fullmatch(r"\d+(_\d+)*", x) else (1, (), x)
                 for x in rel)


class SweepSummary(Callback):
    """Print the sweep's summary when the multirun ends, also when it ends by raising (Hydra's
    basic sweeper runs every job of a batch, then re-raises the first failure; the summary then
    comes after the traceback). `report: true` also writes `<sweep dir>/report/runs.csv|parquet`."""

    def __init__(self, report: bool = True) -> None:
        self.report = report
        self._dir: str | None = None
        self._t0 = 0.0
        self._pending = False
        self._lock: str | None = None

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        self._lock = lock_or_exit(str(config.hydra.sweep.dir))  # never report on (or into) a busy folder
        self._dir = str(config.hydra.sweep.dir)
        self._t0 = time.time()  # a metrics.json older than this was left by an earlier sweep (skipped)
        self._pending = True
        atexit.register(self._finish)

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        self._finish()
        atexit.unregister(self._finish)

    def _finish(self) -> None:
        if not self._pending or self._dir is None or not Path(self._dir).is_dir():
            return
        self._pending = False
        try:
            print(summarize(self._dir, since=self._t0), file=sys.stderr, flush=True)
            if self.report:
                from specexp.report import cli as report

                df = report.collect([self._dir])
                out = report.write_table(df, Path(self._dir) / "report")
                print(f"specexp sweep: report table {out[0]} ({len(df)} runs); "
                      f"`specexp-report {self._dir} --table NAME` for the papers' tables", file=sys.stderr, flush=True)
        except Exception as err:  # a summary must never hide the sweep's own outcome
            print(f"specexp sweep: could not summarise {self._dir}: {type(err).__name__}: {err}", file=sys.stderr)
        finally:
            release_sweep_lock(self._lock)


# --------------------------------------------------------------------------------------------
# Objective: what a sweeper (Optuna) maximises
# --------------------------------------------------------------------------------------------

def objective(m: dict, metric: str = "headline.tokens_per_second", require_match: bool = True,
              max_quality_drop: float | None = None, penalty: float = 0.0) -> tuple[float, str | None]:
    """The value of `metric` (a dotted key of metrics.json) and why it was penalised (None if it was not).
    `headline.tokens_per_second` (the default) and `headline.speedup` are what the run's summary
    reports: at batch 1 the throughput and speedup, on a batched run the batch throughput and the
    speedup against autoregressive at the same batch size (`headline`). Any other key is read as
    it is: tokens_per_second, speedup.throughput_ratio (per-row figures on a batched run),
    batch.speedup_vs_autoregressive_batch1, quality.rouge1...
      require_match     all_match_baseline must not be false (greedy: same tokens as autoregressive)
      max_quality_drop  every quality score may fall at most this far below quality_baseline
    """
    if metric.startswith("headline.") and "headline" not in m:  # a metrics.json written before the block
        m = {**m, "headline": headline(m)}
    value = value_at(m, metric)
    if not isinstance(value, (int, float)) or isinstance(value, bool):
        return penalty, f"{metric} is {value!r}"
    if require_match and m.get("all_match_baseline") is False:
        return penalty, (f"output differs from autoregressive on "
                         f"{value_at(m, 'dataset.n_samples', 0) - (m.get('n_matches_baseline') or 0)} samples")
    if max_quality_drop is not None:
        q, qb = m.get("quality") or {}, m.get("quality_baseline") or {}
        for k, base in qb.items():
            v = q.get(k)
            if isinstance(base, (int, float)) and isinstance(v, (int, float)) and base - v > max_quality_drop:
                return penalty, f"quality {k} {v:.4g} < baseline {base:.4g} - {max_quality_drop}"
    return float(value), None


class Objective(Callback):
    """Set each finished job's return value (what Hydra's sweepers read) to `objective(...)` of
    its metrics.json. The app itself returns headline.tokens_per_second (batch throughput on a
    batched run), unconstrained; with this callback an Optuna sweep maximises e.g. tokens/s *at
    unchanged output*: a run whose output differs from autoregressive decoding scores `penalty`
    instead. Failed jobs stay failed."""

    def __init__(self, metric: str = "headline.tokens_per_second", require_match: bool = True,
                 max_quality_drop: float | None = None, penalty: float = 0.0) -> None:
        self.metric = metric
        self.require_match = require_match
        self.max_quality_drop = max_quality_drop
        self.penalty = penalty

    def on_job_end(self, config: DictConfig, job_return: Any, **kwargs: Any) -> None:
        from hydra.core.utils import JobStatus

        if job_return.status != JobStatus.COMPLETED:
            return
        path = Path(str(config.hydra.runtime.output_dir)) / str(config.get("metrics_file", "metrics.json"))
        try:
            m = json.loads(path.read_text())
        except (OSError, ValueError) as err:
            log.warning("Objective: cannot read %s (%s); objective = penalty %s", path, err, self.penalty)
            job_return.return_value = self.penalty
            return
        if self.metric in PER_ROW_KEYS and (m.get("batch_size") or 1) > 1:
            log.warning("Objective: %s of a batched run (batch_size=%s) is a per-row figure (sum of per-row "
                        "latencies), not batch throughput; hydra.callbacks.objective.metric=headline.%s "
                        "optimises the batch figure", self.metric, m.get("batch_size"),
                        "tokens_per_second" if self.metric == "tokens_per_second" else "speedup")
        value, why = objective(m, self.metric, self.require_match, self.max_quality_drop, self.penalty)
        if why:
            log.warning("Objective: %s penalised to %s: %s", self.metric, value, why)
        else:
            log.info("Objective: %s = %.6g", self.metric, value)
        job_return.return_value = value
