"""`specexp reproduce RUN_DIR` (or a path to its metrics.json): decode a recorded run again and
compare.

  1. read the run's metrics.json (status ok): its config and its command-line overrides;
  2. recompose the config from the overrides with today's conf/ and print where it differs from
     the recorded one (the config files changed since); the decode uses the recorded config;
  3. print the environment differences: torch, transformers, specexp versions, python, device,
     the project's git commit (and dirty flag), each model's revision or file hash;
  3b. give back what the run measured that steers decoding (metrics.json "measured": cost_aware's
     verification and drafter costs), so that nothing is measured again (the clock differs);
  4. decode every sample again (the same per-sample seeds, so greedy and seeded sampling repeat)
     and compare the emitted tokens sample by sample, then the aggregates side by side (timings
     differ from run to run; token counts, acceptance and quality must not);
  5. exit 0 when every sample's tokens are identical, 1 on a token mismatch (2: the run cannot be
     read).
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Callable

from omegaconf import DictConfig, OmegaConf

from specexp.experiment import provenance
from specexp.experiment.config import RunConfig, compose

AGGREGATES = ("new_tokens", "acceptance_rate", "mean_accepted_length", "tokens_per_second")


def read_run(path: str | Path) -> tuple[Path, dict]:
    """(metrics.json path, its content) for a run directory or the file itself."""
    p = Path(path).expanduser()
    f = p / "metrics.json" if p.is_dir() else p
    if not f.is_file():
        raise FileNotFoundError(f"{p}: no metrics.json there; give a run directory (hydra.run.dir) or the JSON file")
    m = json.loads(f.read_text())
    if m.get("status") != "ok" or "config" not in m:
        raise ValueError(f"{f}: status {m.get('status')!r}; only a finished run (status ok, with its config) "
                         "can be reproduced")
    return f, m


def recompose(overrides: list[str]) -> dict:
    """The config `specexp <overrides>` composes today (conf/ as installed now)."""
    return OmegaConf.to_container(compose(overrides), resolve=False)


def flat(d, prefix: str = "") -> dict:
    if not isinstance(d, dict):
        return {prefix: d}
    out = {}
    for k, v in d.items():
        out.update(flat(v, f"{prefix}.{k}" if prefix else str(k)))
    return out


def differences(old: dict, new: dict) -> list[tuple[str, object, object]]:
    """(key, recorded, now) for each leaf that differs between two nested dicts."""
    a, b = flat(old), flat(new)
    return [(k, a.get(k, "(absent)"), b.get(k, "(absent)")) for k in sorted(set(a) | set(b)) if a.get(k) != b.get(k)]


def run_config(recorded: dict) -> DictConfig:
    """The recorded config, typed by today's schema (defaults filled for keys added since); as
    recorded when the schema no longer takes it."""
    try:
        return OmegaConf.merge(OmegaConf.structured(RunConfig), recorded)
    except Exception as e:  # noqa: BLE001 - a key the schema dropped: run it as it was
        print(f"  note: today's schema does not take the recorded config ({type(e).__name__}); using it untyped")
        return OmegaConf.create(recorded)


def replay_measured(config: dict, measured: dict | None) -> list[str]:
    """Put the recorded run's measured values (metrics.json "measured" -> "replay": length config
    key -> value, LengthPolicy.measured) into `config` (in place), so the decode measures nothing
    and decides as the recorded run did. A key the strategy exposes at its top level (the length
    node reads `${..key}`) is set there, a key "proposer.x" in strategy.proposer, else in
    strategy.length. Returns the overrides, as typed."""
    replay = (measured or {}).get("replay") or {}
    strategy = config.setdefault("strategy", {})
    length = strategy.setdefault("length", {})
    out = []
    for key, value in replay.items():
        if key.startswith("proposer."):  # the proposer measured it (a machine-sized tree's costs)
            strategy.setdefault("proposer", {})[key.split(".", 1)[1]] = value
            out.append(f"strategy.{key}={json.dumps(value)}")
            continue
        if length.get(key) == f"${{..{key}}}" and key in strategy:
            strategy[key], where = value, f"strategy.{key}"
        else:
            length[key], where = value, f"strategy.length.{key}"
        out.append(f"{where}={json.dumps(value)}")
    return out


def environment_now(result: dict) -> dict:
    return {**result.get("environment", {}), **{f"git.{k}": v for k, v in provenance.git_state().items()}}


def environment_then(m: dict) -> dict:
    git = (m.get("provenance") or {}).get("git") or {}
    return {**m.get("environment", {}), **{f"git.{k}": v for k, v in git.items()}}


def compare_tokens(old: list[dict], new: list[dict]) -> list[str]:
    """One line per sample whose tokens differ (first differing position), or whose id is missing."""
    bad = []
    by_id = {s["id"]: s for s in new}
    for s in old:
        n = by_id.get(s["id"])
        if n is None:
            bad.append(f"sample {s['id']}: not decoded again (the dataset changed?)")
            continue
        a, b = s["tokens"], n["tokens"]
        if a != b:
            i = next((j for j, (x, y) in enumerate(zip(a, b)) if x != y), min(len(a), len(b)))
            bad.append(f"sample {s['id']}: tokens differ at position {i} of {len(a)} recorded / {len(b)} now "
                       f"(recorded {a[i:i + 5]}, now {b[i:i + 5]})")
    return bad


def _fmt(x) -> str:
    return "n/a" if x is None else (f"{x:.4g}" if isinstance(x, float) else str(x))


def main(argv: list[str] | None, decode: Callable[[DictConfig], dict]) -> int:
    """The command (see the module doc); `decode` is specexp.experiment.run.decode_dataset (passed in by the
    CLI, so that this module does not import run)."""
    ap = argparse.ArgumentParser(prog="specexp reproduce", description=__doc__.split("\n\n")[0])
    ap.add_argument("run", help="a run directory (holding metrics.json) or a metrics.json path")
    args = ap.parse_args(argv)
    try:
        f, m = read_run(args.run)
    except (OSError, ValueError) as e:
        print(f"specexp reproduce: {e}", file=sys.stderr)
        return 2
    overrides = list(m.get("overrides") or [])
    print(f"reproducing {f}\n  overrides: {' '.join(overrides) or '(none)'}")
    # 1-2. The config: recomposed today vs recorded.
    try:
        diff = differences(m["config"], recompose(overrides))
    except Exception as e:  # noqa: BLE001 - conf/ no longer composes these overrides: say so, go on
        diff = [("(compose)", "ok", f"{type(e).__name__}: {e}")]
    print("  config: " + ("recomposes identically" if not diff else "recomposed today differs from the recorded one "
                          "(the recorded config is used):"))
    for k, a, b in diff:
        print(f"    {k}: {_fmt(a)} -> {_fmt(b)}")
    # 3-4. Decode again, with what the run measured given back; the environment and model differences.
    config = json.loads(json.dumps(m["config"]))  # a copy: the recorded config itself stays as read
    replayed = replay_measured(config, m.get("measured"))
    if replayed:
        print("  measured by the recorded run, given back (nothing measured again): " + " ".join(replayed))
    result = decode(run_config(config))
    env = differences(environment_then(m), environment_now(result))
    models = differences((m.get("provenance") or {}).get("models") or {}, result["provenance"]["models"])
    print("  environment: " + ("same" if not env else "differs:"))
    for k, a, b in env:
        print(f"    {k}: {_fmt(a)} -> {_fmt(b)}")
    print("  models: " + ("same files" if not models else "differ:"))
    for k, a, b in models:
        print(f"    {k}: {_fmt(a)} -> {_fmt(b)}")
    bad = compare_tokens(m.get("samples") or [], result["samples"])
    print(f"  tokens: {len(m.get('samples') or []) - len(bad)}/{len(m.get('samples') or [])} samples identical")
    for line in bad:
        print(f"    {line}")
    print("  aggregates (recorded -> now):")
    for k in AGGREGATES:
        print(f"    {k}: {_fmt(m.get(k))} -> {_fmt(result.get(k))}")
    sp_then, sp_now = (m.get("speedup") or {}), (result.get("speedup") or {})
    if sp_then or sp_now:
        print(f"    speedup (throughput ratio): {_fmt(sp_then.get('throughput_ratio'))} -> "
              f"{_fmt(sp_now.get('throughput_ratio'))}")
    for k, a, b in differences({"quality": m.get("quality") or {}}, {"quality": result.get("quality") or {}}):
        if ".per_sample" not in k:
            print(f"    {k}: {_fmt(a)} -> {_fmt(b)}")
    print("reproduced: identical tokens" if not bad else f"NOT reproduced: {len(bad)} sample(s) differ")
    return 0 if not bad else 1
