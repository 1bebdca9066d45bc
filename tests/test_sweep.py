"""Sweeps: one model load per process, isolation of a failing run, resume, the per-run line, the
sweep summary, Ctrl-C, the launcher / sweeper configs (joblib GPU pinning, submitit, Optuna)."""
from __future__ import annotations

import fcntl
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pandas as pd
import pytest
from omegaconf import OmegaConf

from conftest import OFFLINE_ENV, ROOT, SHORT_RUN, compose, pair_overrides
from specexp.experiment import gpu_pin
from specexp.report import cli as report
from specexp.experiment import run
from specexp.experiment import sweep_callbacks as sweep
from specexp.length import Fixed

ENV = {**os.environ, **OFFLINE_ENV}


def tiny(pair_dir: Path) -> list[str]:
    """The random pair, one short HumanEval sample, no warm-up: about a second per run."""
    return [*pair_overrides(pair_dir), *SHORT_RUN]


def metrics(sweep_dir: Path) -> dict[str, dict]:
    return {p.parent.name: json.loads(p.read_text()) for p in sorted(sweep_dir.glob("*/metrics.json"))}


def test_sweep_in_one_process_loads_each_model_once(random_pair_dir, tmp_path, fresh_cache):
    sweep_dir = tmp_path / "sweep"
    code = run.run_cli(["-m", *tiny(random_pair_dir), "strategy.gamma=1,2,3", f"hydra.sweep.dir={sweep_dir}"])
    assert code == 0
    runs = metrics(sweep_dir)
    assert sorted(runs) == ["0", "1", "2"] and all(m["status"] == "ok" for m in runs.values())
    assert [m["config"]["strategy"]["gamma"] for m in runs.values()] == [1, 2, 3]
    assert fresh_cache["models"] == 2  # target + drafter, once for the three jobs


def test_sweep_3x2_failure_isolated_resume_and_report(random_pair_dir, tmp_path, fresh_cache, capsys):
    """The proof: a 3x2 sweep where the gamma=0 runs fail; the sweep goes on, exits non-zero and
    names the failure; re-running skips the ok runs (their metrics.json untouched) and reruns
    the failed ones; the report has every run with the failed ones marked."""
    sweep_dir = tmp_path / "sweep"
    base = ["-m", *tiny(random_pair_dir), f"hydra.sweep.dir={sweep_dir}"]

    # 1. gamma=0 is a bad value: those two runs raise ValueError, the other four complete.
    code = run.run_cli([*base, "strategy.gamma=1,0,4", "sampling=greedy,sample"])
    out = capsys.readouterr()
    assert code == 1  # Hydra re-raises the first failure after the batch: the exit says so
    assert "Error executing job with overrides" in out.err and "strategy.gamma=0" in out.err
    assert "specexp run FAILED: [" in out.out and "gamma must be >= 1" in out.out
    assert out.out.count("specexp run ok: [") == 4
    runs = metrics(sweep_dir)
    assert sorted(runs) == [str(i) for i in range(6)]
    status = {k: (m["status"], m["config"]["strategy"]["gamma"], m["overrides"][-1]) for k, m in runs.items()}
    assert status == {"0": ("ok", 1, "sampling=greedy"), "1": ("ok", 1, "sampling=sample"),
                      "2": ("failed", 0, "sampling=greedy"), "3": ("failed", 0, "sampling=sample"),
                      "4": ("ok", 4, "sampling=greedy"), "5": ("ok", 4, "sampling=sample")}
    assert all("gamma must be >= 1" in runs[k]["error"] and runs[k]["traceback"] for k in ("2", "3"))
    assert not list(sweep_dir.rglob("*.tmp"))  # atomic writes: no half-written files left

    df = report.collect([sweep_dir])
    assert len(df) == 6
    assert df.set_index("job")["status"].to_dict() == {0: "ok", 1: "ok", 2: "failed", 3: "failed", 4: "ok", 5: "ok"}
    failed = df[df["status"] == "failed"]
    assert failed["error"].str.contains("gamma must be >= 1").all()
    assert failed["override.strategy.gamma"].tolist() == [0, 0]
    summary = sweep.summarize(sweep_dir)
    assert "6 runs, 4 ok, 0 skipped (already ok), 2 failed" in summary
    assert "common overrides:" in summary and "FAILED  [strategy.gamma=0 sampling=greedy]" in summary

    ok_files = {k: (sweep_dir / k / "metrics.json") for k in ("0", "1", "4", "5")}
    before = {k: (p.stat().st_mtime_ns, p.read_bytes()) for k, p in ok_files.items()}
    failed_mtime = (sweep_dir / "2" / "metrics.json").stat().st_mtime_ns

    # 2. The same command again: ok runs are skipped, the failed ones run (and fail) again.
    t_resume = time.time()
    assert run.run_cli([*base, "strategy.gamma=1,0,4", "sampling=greedy,sample"]) == 1
    out = capsys.readouterr().out
    assert out.count("specexp run skipped (resume: already ok)") == 4 and out.count("specexp run FAILED") == 2
    assert (sweep_dir / "2" / "metrics.json").stat().st_mtime_ns > failed_mtime
    assert {k: (p.stat().st_mtime_ns, p.read_bytes()) for k, p in ok_files.items()} == before
    assert "4 skipped (already ok), 2 failed" in sweep.summarize(sweep_dir, since=t_resume)

    # 3. Fixed (gamma 0 -> 2), same sweep dir: only jobs 2 and 3 run; the rest are untouched.
    assert run.run_cli([*base, "strategy.gamma=1,2,4", "sampling=greedy,sample"]) == 0
    out = capsys.readouterr().out
    assert out.count("specexp run skipped (resume: already ok)") == 4 and out.count("specexp run ok: [") == 2
    assert {k: (p.stat().st_mtime_ns, p.read_bytes()) for k, p in ok_files.items()} == before
    runs = metrics(sweep_dir)
    assert all(m["status"] == "ok" for m in runs.values())
    assert [runs[k]["config"]["strategy"]["gamma"] for k in ("2", "3")] == [2, 2]
    assert fresh_cache["models"] == 2  # three sweeps in this process, one load per model

    # 4. The report: every run, its overrides as columns, speedup from the paired baseline.
    assert report.main([str(sweep_dir), "--table", "runs"]) == 0
    df = pd.read_parquet(sweep_dir / "report" / "runs.parquet")
    assert len(df) == 6 and (df["status"] == "ok").all()
    assert sorted(df["override.strategy.gamma"].tolist()) == [1, 1, 2, 2, 4, 4]
    assert set(df["override.sampling"]) == {"greedy", "sample"}
    assert (df["speedup_source"] == "paired").all() and df["speedup"].notna().all()
    assert set(df["method"]) == {"speculative (gamma=1)", "speculative (gamma=2)", "speculative (gamma=4)"}
    csv = pd.read_csv(sweep_dir / "report" / "runs.csv")
    assert len(csv) == 6 and "tokens_per_second" in csv


def test_resume_never_overwrites_another_configs_result_and_resume_false_reruns(random_pair_dir, tmp_path):
    """Job numbers shift when a sweep's lists change: an ok result of another config in job 0's
    folder is kept, and this config's job writes 0_1; `resume=false` really runs it again."""
    sweep_dir = tmp_path / "sweep"
    base = ["-m", *tiny(random_pair_dir), f"hydra.sweep.dir={sweep_dir}"]
    assert run.run_cli([*base, "strategy.gamma=1"]) == 0
    first = (sweep_dir / "0" / "metrics.json").read_bytes()
    assert run.run_cli([*base, "strategy.gamma=3"]) == 0
    runs = metrics(sweep_dir)
    assert (sweep_dir / "0" / "metrics.json").read_bytes() == first  # gamma=1 kept
    assert runs["0_1"]["config"]["strategy"]["gamma"] == 3 and runs["0_1"]["status"] == "ok"
    # the same sweep again: resumed from 0_1 (untouched), no third folder
    again = (sweep_dir / "0_1" / "metrics.json").read_bytes()
    assert run.run_cli([*base, "strategy.gamma=3"]) == 0
    assert (sweep_dir / "0_1" / "metrics.json").read_bytes() == again and sorted(metrics(sweep_dir)) == ["0", "0_1"]
    # resume off: the run is done again, in its own folder, and the file is rewritten
    assert run.run_cli([*base, "strategy.gamma=3", "resume=false"]) == 0
    redone = json.loads((sweep_dir / "0_1" / "metrics.json").read_text())
    assert redone["status"] == "ok" and redone["config"]["resume"] is False  # written by this run
    assert (sweep_dir / "0" / "metrics.json").read_bytes() == first and sorted(metrics(sweep_dir)) == ["0", "0_1"]


def test_readme_example_second_sweep_keeps_the_first(random_pair_dir, tmp_path, capsys):
    """README: `specexp -m strategy=... ` then `specexp -m strategy.gamma=...` into the same
    hydra.sweep.dir. The first sweep's runs stay as they were; the second writes new job
    folders; each sweep re-run is a resume; the summary and the report see all runs."""
    sweep_dir = tmp_path / "sweeps" / "a"
    base = ["-m", *tiny(random_pair_dir), f"hydra.sweep.dir={sweep_dir}"]
    assert run.run_cli([*base, "strategy=speculative,autoregressive"]) == 0
    first = {k: (sweep_dir / k / "metrics.json").read_bytes() for k in ("0", "1")}
    assert run.run_cli([*base, "strategy.gamma=1,2,4"]) == 0
    runs = metrics(sweep_dir)
    assert {k: (sweep_dir / k / "metrics.json").read_bytes() for k in ("0", "1")} == first
    assert sorted(runs) == ["0", "0_1", "1", "1_1", "2"] and all(m["status"] == "ok" for m in runs.values())
    assert [runs[k]["config"]["strategy"]["gamma"] for k in ("0_1", "1_1", "2")] == [1, 2, 4]
    assert [runs[k]["strategy"] for k in ("0", "1")] == ["speculative", "autoregressive"]
    capsys.readouterr()
    for args, n in (("strategy=speculative,autoregressive", 2), ("strategy.gamma=1,2,4", 3)):  # both resume
        before = {k: (sweep_dir / k / "metrics.json").read_bytes() for k in runs}
        assert run.run_cli([*base, args]) == 0
        assert capsys.readouterr().out.count("specexp run skipped (resume: already ok)") == n
        assert {k: (sweep_dir / k / "metrics.json").read_bytes() for k in runs} == before
    assert "5 runs, 5 ok" in sweep.summarize(sweep_dir) and len(report.collect([sweep_dir])) == 5


def test_a_run_never_overwrites_another_configs_ok_result(random_pair_dir, tmp_path, capsys):
    """The last guard, for folders the job-folder resolver does not choose (a fixed
    hydra.run.dir given twice): the second config is refused, the first result kept."""
    run_dir = tmp_path / "run"
    assert run.run_cli([*tiny(random_pair_dir), "strategy.gamma=1", f"hydra.run.dir={run_dir}"]) == 0
    first = (run_dir / "metrics.json").read_bytes()
    assert run.run_cli([*tiny(random_pair_dir), "strategy.gamma=2", f"hydra.run.dir={run_dir}"]) == 1
    err = capsys.readouterr().err
    assert f"{run_dir} holds an ok run of another config" in err and "does not overwrite it" in err
    assert (run_dir / "metrics.json").read_bytes() == first


def test_second_sweep_into_a_busy_folder_fails_fast(random_pair_dir, tmp_path, capsys):
    """Another sweep holds the folder's lock (an flock on another open file description, as a
    second process has): this sweep fails at once with a message and writes nothing."""
    sweep_dir = tmp_path / "sweep"
    sweep_dir.mkdir()
    other = os.open(sweep_dir / ".specexp-sweep.lock", os.O_RDWR | os.O_CREAT)
    fcntl.flock(other, fcntl.LOCK_EX | fcntl.LOCK_NB)
    os.write(other, b"pid 4242, started 2026-01-01 00:00:00: specexp -m strategy.gamma=1,2")
    base = ["-m", *tiny(random_pair_dir), f"hydra.sweep.dir={sweep_dir}", "strategy.gamma=1,2"]
    try:
        assert run.run_cli(base) == 1
        err = capsys.readouterr().err
        assert f"specexp sweep: {sweep_dir} is in use by another sweep (pid 4242" in err
        assert "give this one its own hydra.sweep.dir" in err
        assert not list(sweep_dir.rglob("metrics.json")) and not (sweep_dir / "report").exists()
    finally:
        os.close(other)  # that sweep ends
    assert run.run_cli(base) == 0 and sorted(metrics(sweep_dir)) == ["0", "1"]
    assert sweep._LOCKS == {}  # released when the sweep ended


def test_metrics_write_failure_saves_the_results_elsewhere(random_pair_dir, tmp_path, monkeypatch, capsys):
    """metrics.json cannot be written (here a folder is in its way, as a read-only file system
    would refuse it): the finished run's results go to the fallback folder, and the error names it."""
    (tmp_path / "tmp").mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path / "tmp"))  # the first fallback: <temp dir>/specexp-unsaved
    run_dir = tmp_path / "run"
    (run_dir / "metrics.json").mkdir(parents=True)
    code = run.run_cli([*tiny(random_pair_dir), f"hydra.run.dir={run_dir}"])
    assert code == 1
    saved = list((tmp_path / "tmp" / "specexp-unsaved").glob("*-run-metrics.json"))
    assert len(saved) == 1
    m = json.loads(saved[0].read_text())
    assert m["status"] == "ok" and m["new_tokens"] > 0 and m["samples"]
    err = capsys.readouterr().err
    assert f"could not write {run_dir / 'metrics.json'}" in err and f"saved in {saved[0]}" in err


def test_resume_check_ignores_only_resume_and_summary():
    a = {"seed": 0, "resume": True, "summary": True, "strategy": {"gamma": 2}}
    assert sweep.same_config(a, {**a, "resume": False, "summary": False})
    assert not sweep.same_config(a, {**a, "seed": 1})
    assert not sweep.same_config(None, a)


class WaitForInterrupt(Fixed):
    """A length policy that, at its first draft round, says so on stderr and waits for a signal:
    the Ctrl-C test interrupts a run that is certainly decoding (an event, not a clock)."""

    def begin(self) -> int:
        print("specexp-test: decoding, waiting for SIGINT", file=sys.stderr, flush=True)
        signal.pause()  # SIGINT's KeyboardInterrupt is raised here
        return super().begin()


def test_ctrl_c_leaves_a_failed_json_not_ok(random_pair_dir, tmp_path):
    """SIGINT in the middle of decoding: the run's metrics.json says failed (KeyboardInterrupt),
    no temp file is left, and a resumed run would redo it. The run waits inside its first draft
    round (WaitForInterrupt) until the signal comes."""
    run_dir = tmp_path / "run"
    cmd = [sys.executable, "-m", "specexp", *pair_overrides(random_pair_dir), "dataset.limit=1",
           "dataset.max_new_tokens=8", "warmup=0", "strategy.length._target_=test_sweep.WaitForInterrupt",
           f"hydra.run.dir={run_dir}"]
    env = {**ENV, "PYTHONPATH": os.pathsep.join([str(ROOT / "tests"), ENV.get("PYTHONPATH", "")])}
    # SIGINT's default disposition for the child: a shell without job control starts background
    # jobs (and so this test run) with SIGINT ignored, and Python then installs no KeyboardInterrupt
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    seen = b""
    try:
        while b"waiting for SIGINT" not in seen:
            chunk = os.read(proc.stderr.fileno(), 4096)
            if not chunk:  # the child ended without reaching the draft round
                break
            seen += chunk
        assert b"waiting for SIGINT" in seen, seen.decode(errors="replace")[-2000:]
        proc.send_signal(signal.SIGINT)
        proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode != 0
    m = json.loads((run_dir / "metrics.json").read_text())
    assert m["status"] == "failed" and m["error"].startswith("KeyboardInterrupt")
    assert not list(run_dir.glob(".metrics.json.*.tmp"))


def test_run_line():
    ok = {"status": "ok", "overrides": ["strategy.gamma=2"], "tokens_per_second": 812.34, "acceptance_rate": 0.4123,
          "mean_accepted_length": 2.5, "all_match_baseline": True, "n_matches_baseline": 5, "dataset": {"n_samples": 5},
          "speedup": {"estimator": "throughput_ratio", "throughput_ratio": 1.31, "ci_low": 1.12, "ci_high": 1.5}}
    assert sweep.run_line(ok) == ("specexp run ok: [strategy.gamma=2] 812.3 tok/s, accept 0.412, mean acc. len 2.50, "
                                  "speedup (throughput ratio, 95% CI) 1.31x [1.12, 1.50], matches AR 5/5")
    assert "skipped (resume: already ok)" in sweep.run_line(ok, skipped=True)
    bad = {"status": "failed", "overrides": ["strategy.gamma=0"], "error": "ValueError:\ngamma must be >= 1"}
    assert sweep.run_line(bad) == "specexp run FAILED: [strategy.gamma=0] ValueError: gamma must be >= 1"


def test_objective_penalises_changed_output_and_quality_drop():
    m = {"tokens_per_second": 100.0, "speedup": {"estimator": "throughput_ratio", "throughput_ratio": 1.5}, "all_match_baseline": True,
         "n_matches_baseline": 4, "dataset": {"n_samples": 4},
         "quality": {"rouge1": 0.30}, "quality_baseline": {"rouge1": 0.31}}
    assert sweep.objective(m) == (100.0, None)
    assert sweep.objective(m, metric="speedup.throughput_ratio") == (1.5, None)
    value, why = sweep.objective({**m, "all_match_baseline": False, "n_matches_baseline": 3})
    assert value == 0.0 and "differs from autoregressive on 1 samples" in why
    assert sweep.objective(m, max_quality_drop=0.005, penalty=-1.0)[0] == -1.0
    assert sweep.objective(m, max_quality_drop=0.02) == (100.0, None)
    assert sweep.objective({"status": "ok"}, penalty=-5.0)[0] == -5.0  # metric missing


def test_gpu_slots_are_exclusive(tmp_path):
    a = gpu_pin.acquire_slot(tmp_path, 2)
    b = gpu_pin.acquire_slot(tmp_path, 2)  # another open file description: as another process
    assert a is not None and b is not None and {a[0], b[0]} == {0, 1}
    assert gpu_pin.acquire_slot(tmp_path, 2) is None  # every slot taken
    os.close(a[1])  # the process holding slot a exits
    c = gpu_pin.acquire_slot(tmp_path, 2)
    assert c is not None and c[0] == a[0]
    os.close(b[1])
    os.close(c[1])


def test_pin_gpu_sets_cuda_visible_devices_once_per_process(tmp_path, monkeypatch):
    monkeypatch.setattr(gpu_pin, "_PINNED", None)
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "4,6")
    cb = gpu_pin.PinGPU()  # gpus from the launching process's CUDA_VISIBLE_DEVICES
    assert cb.gpus == ["4", "6"]
    cfg = OmegaConf.create({"hydra": {"sweep": {"dir": str(tmp_path)}, "job": {"num": 3}}})
    held = gpu_pin.acquire_slot(tmp_path / ".gpu_slots", 1)  # another worker holds slot 0 (GPU 4)
    cb.on_job_start(cfg, task_function=None)
    assert os.environ["CUDA_VISIBLE_DEVICES"] == "6" and gpu_pin._PINNED["slot"] == 1
    cb.on_job_start(cfg, task_function=None)  # the next job in the same worker: same GPU
    assert os.environ["CUDA_VISIBLE_DEVICES"] == "6"
    first = gpu_pin._PINNED
    # Every slot taken (more workers than GPUs): fall back to job.num % len(gpus), with a warning.
    monkeypatch.setattr(gpu_pin, "_PINNED", None)
    crowded = gpu_pin.PinGPU(gpus=[0], lock_dir=str(tmp_path / ".gpu_slots"))
    crowded.on_job_start(cfg, task_function=None)
    assert os.environ["CUDA_VISIBLE_DEVICES"] == "0" and gpu_pin._PINNED["slot"] is None
    os.close(held[1])
    os.close(first["fd"])


def test_launcher_and_sweeper_configs_compose():
    c = compose(["hydra/launcher=joblib_gpus"])
    assert c.hydra.launcher._target_.endswith("JoblibLauncher") and c.hydra.launcher.backend == "loky"
    assert c.hydra.callbacks.gpu_pin._target_ == "specexp.experiment.gpu_pin.PinGPU"
    assert OmegaConf.to_container(c.hydra.launcher, resolve=True)["n_jobs"] >= 1  # ${specexp_gpu_count:}
    c = compose(["hydra/launcher=submitit_slurm_gpu", "hydra.launcher.partition=gpu"])
    assert c.hydra.launcher._target_.endswith("SlurmLauncher")
    assert c.hydra.launcher.gpus_per_node == 1 and c.hydra.launcher.partition == "gpu"
    c = compose(["hydra/launcher=submitit_local"])
    assert c.hydra.launcher._target_.endswith("LocalLauncher")
    c = compose(["hydra/sweeper=optuna_gamma"])
    assert c.hydra.sweeper._target_.endswith("OptunaSweeper") and str(c.hydra.sweeper.direction) == "maximize"
    assert c.hydra.sweeper.params["strategy.gamma"] == "range(1, 11)"
    assert c.hydra.callbacks.objective.metric == "headline.tokens_per_second"  # batch throughput when batched
    c = compose(["hydra/sweeper=optuna_entropy_static", "strategy=entropy_static"])
    assert c.hydra.sweeper.params["strategy.tau"] == "interval(0.25, 5.0)" and c.strategy.name == "entropy_static"
    c = compose(["hydra/callbacks=sweep_summary"])
    assert c.hydra.callbacks.sweep_summary._target_ == "specexp.experiment.sweep_callbacks.SweepSummary"
    for extra in ([], ["hydra/launcher=joblib_gpus"], ["hydra/sweeper=optuna_gamma"]):  # the lock is always on
        assert compose(extra).hydra.callbacks.sweep_lock._target_ == "specexp.experiment.sweep_callbacks.SweepLock"
    from hydra.utils import get_class

    for name in ("SweepSummary", "PinGPU", "Objective"):
        assert get_class(f"specexp.experiment.sweep_callbacks.{name}")
    assert get_class("specexp.experiment.sweep_callbacks.PinGPU") is get_class("specexp.experiment.gpu_pin.PinGPU")  # the older path still works


def test_optuna_tunes_gamma_in_process(random_pair_dir, tmp_path):
    sweep_dir = tmp_path / "optuna"
    code = run.run_cli(["-m", "hydra/sweeper=optuna_gamma", "hydra.sweeper.n_trials=3", "strategy.gamma=range(1,5)",
                          *tiny(random_pair_dir), f"hydra.sweep.dir={sweep_dir}"])
    assert code == 0
    runs = metrics(sweep_dir)
    assert len(runs) == 3 and all(m["status"] == "ok" for m in runs.values())
    best = OmegaConf.load(sweep_dir / "optimization_results.yaml")
    assert best.name == "optuna" and 1 <= best.best_params["strategy.gamma"] <= 4
    # the Objective callback: greedy output matches autoregressive, so the value is tokens/s
    assert best.best_value == pytest.approx(max(m["tokens_per_second"] for m in runs.values()))
    assert (sweep_dir / "report" / "runs.csv").exists()  # the sweep summary wrote the table


@pytest.mark.slow
def test_submitit_local_runs_a_two_job_sweep(random_pair_dir, run_specexp, tmp_path):
    proc, _ = run_specexp("hydra/launcher=submitit_local", "hydra.launcher.timeout_min=10",
                          *tiny(random_pair_dir), "strategy.gamma=1,2", multirun=True)
    runs = metrics(tmp_path / "sweep")
    assert sorted(runs) == ["0", "1"] and all(m["status"] == "ok" for m in runs.values())
    assert [m["config"]["strategy"]["gamma"] for m in runs.values()] == [1, 2]
    assert list((tmp_path / "sweep" / ".submitit").glob("*/*_result.pkl"))  # ran as submitit jobs
    df = report.collect([tmp_path / "sweep"])
    assert len(df) == 2 and (df["status"] == "ok").all()


@pytest.mark.slow
def test_joblib_gpus_launcher_pins_workers(random_pair_dir, run_specexp, tmp_path):
    """Two loky workers, two (pretend) GPUs: each worker takes its own slot. Without CUDA the
    runs fall back to the CPU (model_pair.device=auto), so this runs anywhere."""
    proc, _ = run_specexp("hydra/launcher=joblib_gpus", "hydra.launcher.n_jobs=2",
                          "hydra.callbacks.gpu_pin.gpus=[0,1]", *tiny(random_pair_dir),
                          "strategy.gamma=1,2,3,4", multirun=True)
    sweep_dir = tmp_path / "sweep"
    runs = metrics(sweep_dir)
    assert len(runs) == 4 and all(m["status"] == "ok" for m in runs.values())
    pins = {}
    for log in sweep_dir.glob("*/*.log"):
        for line in log.read_text().splitlines():
            if "PinGPU: process" in line:
                pid, gpu = line.split("PinGPU: process ")[1].split(" runs on GPU ")
                pins.setdefault(pid, set()).add(gpu.split()[0])
    assert pins and all(len(g) == 1 for g in pins.values())  # a worker never changes GPU
    if len(pins) == 2:
        assert set().union(*pins.values()) == {"0", "1"}  # two workers, two GPUs
    assert "specexp sweep " in proc.stderr and "4 ok" in proc.stderr  # the summary callback
