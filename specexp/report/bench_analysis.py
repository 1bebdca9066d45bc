"""The analysis half of scripts/bench.py (the benchmark against transformers' `generate`): per
mode and setting, throughput, forwards, acceptance, speedups with their CIs (specexp.stats), the
Leviathan prediction, the ours / transformers ratios, the goals this bench checks, and the printed table.
It takes the benchmark's timed calls (objects with .repeat, .prompt and .gen: a Generation whose
wall_time is the whole call) and its modes (.key, .name, .side, .gamma, .fixed_gamma, .drafter,
.counterpart, and .tree where the mode drafts token trees); it loads and runs no model.

Speedups and the ours / hf ratio are throughput ratios (total tokens / total seconds, one mode over
the other) with a 95% CI over the prompts (specexp.stats.speedup_estimates): each call is paired
with the other mode's call of the same prompt, repeat and seed, and a prompt's repeats are summed
into one unit, since repeats of one prompt are not independent samples (resampling prompt x
repeat as units covers about 0.67 where 0.95 is claimed).
"""
from __future__ import annotations

import math

import numpy as np

from specexp import stats
from specexp.report import forward_costs

GOALS = {"ours/hf assisted": 1.3, "overhead": 0.10, "prediction": 0.10}  # the speed goals set for this machine's bench
# the feature drafter's goals (modes ours-eagle*) on SmolLM2: tokens per target forward, speedup
# over our autoregressive decoding, and tokens/s over transformers' fastest speculative mode
FEATURE_GOALS = {"tau": 2.5, "speedup": 1.3, "over hf": 1.5}
# the token trees' goals (modes with Mode.tree): tokens per target forward of the best tree mode;
# the fastest one's speedup over our autoregressive decoding, greedy and sampled; its tokens/s over
# transformers' fastest mode; the machine-sized tree against the best fixed template (ratio >= 0.95)
TREE_GOALS = {"tau": 3.0, "speedup greedy": 1.8, "speedup sampled": 1.5, "over hf": 1.5, "sized": 0.95}


def _ratio(a, b):
    return a / b if (a is not None and b) else None


def mode_stats(calls: list, mode) -> dict:
    """Throughput, overhead, forwards and acceptance of one mode in one setting."""
    gens = [c.gen for c in calls]
    n, fw, sec, pre, pre_sec = forward_costs.totals(gens)
    wall = sum(g.wall_time for g in gens)
    inside, prefill = sum(sec.values()), sum(pre_sec.values())
    per_repeat = {}
    for c in calls:
        t, w = per_repeat.get(c.repeat, (0, 0.0))
        per_repeat[c.repeat] = (t + len(c.gen.tokens), w + c.gen.wall_time)
    drafted = sum(sum(g.drafted) for g in gens)
    accepted = sum(sum(g.accepted) for g in gens)
    spec = mode.gamma is not None
    nodes = [x for g in gens for x in getattr(g, "tree_nodes", [])]  # per round that drafted a tree
    depths = [x for g in gens for x in getattr(g, "tree_depth", [])]
    return {
        "tokens": n, "wall_s": wall, "tokens_per_s": _ratio(n, wall),
        "tokens_per_s_repeats": [t / w for t, w in per_repeat.values() if w],
        "decode_tokens_per_s": _ratio(n, wall - prefill),
        "forward_s": inside, "prefill_s": prefill, "overhead_share": 1 - inside / wall if wall else None,
        "forwards": fw, "prefills": pre, "forward_seconds": sec, "prefill_seconds": pre_sec,
        "seconds_per_forward": forward_costs.measured_costs(fw, sec, pre, pre_sec),
        "rounds": sum(len(g.drafted) for g in gens) if spec else None,
        "drafted": drafted if spec else None, "accepted": accepted if spec else None,
        "accept_rate": _ratio(accepted, drafted) if spec else None,
        "alpha": forward_costs.acceptance_alpha(gens) if spec else None,
        "tau": _ratio(n, fw.get("target")),
        "tau_ci": tau_interval(calls),
        # drafted tokens per target forward: a tree's nodes, a chain's drafts (ours: every round is one forward)
        "nodes_per_forward": _ratio(drafted, fw.get("target")) if spec and mode.side == "ours" else None,
        "tree_rounds": len(nodes) or None,
        "tree_nodes_mean": _ratio(sum(nodes), len(nodes)), "tree_depth_mean": _ratio(sum(depths), len(depths)),
    }


def tau_interval(calls: list) -> list[float] | None:
    """The 95% CI of tokens per target forward (total tokens / total target forwards) over the
    prompts, a prompt's repeats summed into one unit: specexp.stats.log_t_interval (a t interval on
    the log scale with the paired bootstrap standard error), as for the speedups. None below 2 prompts."""
    per_prompt: dict = {}  # prompt -> [tokens, target forwards]
    for c in calls:
        u = per_prompt.setdefault(c.prompt, [0, 0])
        u[0] += len(c.gen.tokens)
        u[1] += c.gen.model_forwards.get("target", 0)
    units = [u for u in per_prompt.values() if u[0] > 0 and u[1] > 0]
    lo, hi = stats.log_t_interval([[u[0] for u in units], [u[1] for u in units]], _ratio_of_totals)
    return None if lo is None else [lo, hi]


def _ratio_of_totals(a, b, axis=-1):
    return np.sum(a, axis) / np.sum(b, axis)


def paired_speedup(calls: list, base: list, seed: int = 0) -> dict:
    """stats.speedup_estimates of `calls` over `base`, each call paired with the base call of the
    same repeat and prompt, the pairs summed per prompt (tokens and seconds over its repeats): the
    throughput ratio (= tokens/s over base tokens/s) and its CI over prompts, the independent units."""
    ref = {(c.repeat, c.prompt): c.gen for c in base}
    per_prompt: dict = {}  # prompt -> [tokens, seconds, base tokens, base seconds, identical on every repeat]
    for c in calls:
        b = ref.get((c.repeat, c.prompt))
        if b is None:
            continue
        u = per_prompt.setdefault(c.prompt, [0, 0.0, 0, 0.0, True])
        u[0] += len(c.gen.tokens)
        u[1] += c.gen.wall_time
        u[2] += len(b.tokens)
        u[3] += b.wall_time
        u[4] = u[4] and c.gen.tokens == b.tokens
    units = list(per_prompt.values())
    return stats.speedup_estimates(*([u[i] for u in units] for i in range(5)), seed)


def identical_to(calls: list, reference: list) -> tuple[int, int]:
    """(calls whose tokens equal the reference's for the same repeat and prompt, calls)."""
    ref = {(c.repeat, c.prompt): c.gen.tokens for c in reference}
    same = sum(c.gen.tokens == ref.get((c.repeat, c.prompt)) for c in calls)
    return same, len(calls)


def analyse(calls: dict, modes: list, sets: list) -> list[dict]:
    """One row per (setting, mode): stats, speedups against the same side's autoregressive mode,
    the Leviathan prediction and (greedy) identity with our autoregressive output."""
    by_key = {m.key: m for m in modes}
    rows = []
    for s in sets:
        by_mode = {m.key: mode_stats(calls[(s.name, m.key)], m) for m in modes}
        for m in modes:
            st = by_mode[m.key]
            base_key = "ours-ar" if m.side == "ours" else "hf-ar"
            base = by_mode.get(base_key) if base_key in by_key else None
            row = {"setting": s.name, "temperature": s.sampling.temperature, "mode": m.key, "name": m.name,
                   "side": m.side, "gamma": m.gamma, "drafter": m.drafter, "tree": bool(getattr(m, "tree", False)),
                   **st,
                   "speedup": None, "speedup_ci": None, "decode_speedup": None, "verify_cost": None, "cost_ratio_c": None,
                   "predicted": None, "measured_over_predicted": None, "predicted_with_verify_cost": None,
                   "identical": None}
            if base is not None and m.key != base_key:
                sp = paired_speedup(calls[(s.name, m.key)], calls[(s.name, base_key)])
                row["speedup"], row["speedup_ci"] = sp["throughput_ratio"], [sp["ci_low"], sp["ci_high"]]
                row["decode_speedup"] = _ratio(st["decode_tokens_per_s"], base["decode_tokens_per_s"])
                row["verify_cost"] = _ratio(st["seconds_per_forward"].get("target"),
                                            base["seconds_per_forward"].get("target"))
                if m.fixed_gamma and st["alpha"] is not None:
                    t_ar = base["seconds_per_forward"].get("target")
                    d = st["seconds_per_forward"].get(m.drafter) if m.drafter else 0.0
                    c = _ratio(d, t_ar) if m.drafter else 0.0
                    if c is not None:
                        row["cost_ratio_c"] = c
                        row["predicted"] = forward_costs.leviathan_speedup(st["alpha"], m.gamma, c)
                        row["measured_over_predicted"] = _ratio(row["decode_speedup"], row["predicted"])
                        if row["verify_cost"]:  # the same, a verification forward costing what it measured
                            row["predicted_with_verify_cost"] = (row["predicted"] * (m.gamma * c + 1)
                                                                 / (m.gamma * c + row["verify_cost"]))
            if s.sampling.greedy and "ours-ar" in by_key:
                same, total = identical_to(calls[(s.name, m.key)], calls[(s.name, "ours-ar")])
                row["identical"] = same == total
                row["identical_calls"] = [same, total]
            rows.append(row)
    return rows


def ratios(rows: list[dict], modes: list, calls: dict | None = None) -> list[dict]:
    """ours / transformers tokens/s for every mode that has a counterpart, per setting (with its
    CI over prompts when the timed `calls` are given)."""
    idx = {(r["setting"], r["mode"]): r for r in rows}
    out = []
    for r in rows:
        m = next(x for x in modes if x.key == r["mode"])
        hf = idx.get((r["setting"], m.counterpart)) if m.side == "ours" else None
        if hf is not None:
            ci = None
            if calls is not None:
                sp = paired_speedup(calls[(r["setting"], m.key)], calls[(r["setting"], hf["mode"])])
                ci = [sp["ci_low"], sp["ci_high"]]
            out.append({"setting": r["setting"], "ours": m.key, "hf": hf["mode"],
                        "ratio": _ratio(r["tokens_per_s"], hf["tokens_per_s"]), "ratio_ci": ci})
    return out


def goals(rows: list[dict], ratio_rows: list[dict], calls: dict | None = None) -> list[dict]:
    """The speed goals for this machine, per setting: our speculative decoding (the classic
    algorithm with the pair's drafter) against transformers' assisted generation; the overhead of
    every one of our modes (the worst is shown); the classic algorithm's decode speedup (ours,
    model drafters) against Leviathan et al.'s prediction; the feature drafter's and the token
    trees' goals when those modes ran (`calls`, the timed calls: the trees' paired ratio CIs)."""
    out = []
    for setting in dict.fromkeys(r["setting"] for r in rows):
        for q in ratio_rows:
            if q["setting"] == setting and q["ours"] in ("ours-spec", "ours-spec-vocab") and q["ratio"] is not None:
                goal = (f"ours speculative{' (subset head)' if q['ours'] == 'ours-spec-vocab' else ''} / hf assisted "
                        f">= {GOALS['ours/hf assisted']}x")
                out.append({"setting": setting, "goal": goal,
                            "value": f"{q['ratio']:.2f}x", "met": q["ratio"] >= GOALS["ours/hf assisted"]})
        ours = [r for r in rows if r["setting"] == setting and r["side"] == "ours" and r["overhead_share"] is not None]
        if ours:
            worst = max(ours, key=lambda r: r["overhead_share"])
            out.append({"setting": setting, "goal": f"overhead <= {GOALS['overhead']:.0%} in every mode of ours",
                        "value": f"{worst['overhead_share']:.1%} at most ({worst['name']})",
                        "met": worst["overhead_share"] <= GOALS["overhead"]})
        for r in rows:
            if (r["setting"] == setting and r["side"] == "ours" and r["drafter"]
                    and r["measured_over_predicted"] is not None):
                v = r["measured_over_predicted"]
                with_cost = r.get("predicted_with_verify_cost")
                out.append({"setting": setting, "goal": f"{r['name']}: decode speedup within "
                                                        f"{GOALS['prediction']:.0%} of the prediction",
                            "value": f"{r['decode_speedup']:.2f}x vs {r['predicted']:.2f}x ({v:.2f})"
                                     + (f"; with the measured verification cost {with_cost:.2f}x "
                                        f"({r['decode_speedup'] / with_cost:.2f})" if with_cost else ""),
                            "met": abs(v - 1) <= GOALS["prediction"]})
        out += feature_goals([r for r in rows if r["setting"] == setting])
        out += tree_goals([r for r in rows if r["setting"] == setting], calls)
    return out


def feature_goals(rows: list[dict]) -> list[dict]:
    """The feature drafter's goals in one setting's rows, when feature-drafter modes (ours-eagle*) ran: the
    most tokens per target forward of any of them; the fastest one's speedup over our
    autoregressive decoding (throughput ratio, point estimate, with its 95% CI); and its tokens/s
    over the fastest of transformers' speculative modes (assisted, prompt lookup) in the run."""
    feat = [r for r in rows if r["side"] == "ours" and r["mode"].startswith("ours-eagle")]
    if not feat:
        return []
    setting, out = feat[0]["setting"], []
    top = max(feat, key=lambda r: r["tau"] or 0.0)
    out.append({"setting": setting, "goal": f"feature drafter: >= {FEATURE_GOALS['tau']} tokens per target forward "
                                            "(its best mode)",
                "value": f"{top['tau']:.2f} ({top['name']})", "met": (top["tau"] or 0.0) >= FEATURE_GOALS["tau"]})
    fast = max(feat, key=lambda r: r["tokens_per_s"] or 0.0)
    if fast["speedup"] is not None:
        out.append({"setting": setting, "goal": f"feature drafter: >= {FEATURE_GOALS['speedup']}x our autoregressive "
                                                "(its fastest mode; throughput ratio, point estimate)",
                    "value": f"{stats.format_ratio(fast['speedup'], *(fast.get('speedup_ci') or [None, None]))} "
                             f"({fast['name']})",
                    "met": fast["speedup"] >= FEATURE_GOALS["speedup"]})
    hf = [r for r in rows if r["side"] == "hf" and r["gamma"] is not None and r["tokens_per_s"]]
    if hf and fast["tokens_per_s"]:
        best = max(hf, key=lambda r: r["tokens_per_s"])
        v = fast["tokens_per_s"] / best["tokens_per_s"]
        out.append({"setting": setting, "goal": f"feature drafter: >= {FEATURE_GOALS['over hf']}x transformers' "
                                                "fastest speculative mode (tokens/s ratio)",
                    "value": f"{v:.2f}x ({fast['name']} / {best['name']})", "met": v >= FEATURE_GOALS["over hf"]})
    return out



def tree_goals(rows: list[dict], calls: dict | None = None) -> list[dict]:
    """The token trees' goals in one setting's rows, when tree modes ran (row["tree"]), each met or
    not with its number and 95% CI (point estimates decide (1)-(3); the best mode is picked on the
    same prompts it is reported on, so (1)-(3) are optimistic and (4) is conservative):
      (1) the most tokens per target forward of any tree mode >= 3.0 (CI: tau_interval);
      (2) the fastest tree mode's speedup over our autoregressive (its throughput ratio, paired per
          prompt) >= 1.8x greedy, >= 1.5x sampled;
      (3) its tokens/s over transformers' fastest mode in the setting (any hf-* mode) >= 1.5x;
      (4) ours-recycling-sized against the fastest fixed-template recycling mode (ours-recycling,
          ours-recycling-b*): the ratio of speeds >= 0.95 (point estimate), and whether its 95% CI
          decides it (entirely on one side of 0.95) or cannot at this n.
    Ratios with `calls` are paired_speedup's (per prompt, repeats summed); without, tokens/s ratios."""
    trees = [r for r in rows if r.get("tree")]
    if not trees:
        return []
    setting, out = trees[0]["setting"], []

    def ratio(a, b) -> tuple[float | None, list | None]:
        if calls is None:
            return _ratio(a["tokens_per_s"], b["tokens_per_s"]), None
        sp = paired_speedup(calls[(setting, a["mode"])], calls[(setting, b["mode"])])
        return sp["throughput_ratio"], (None if sp["ci_low"] is None else [sp["ci_low"], sp["ci_high"]])

    def fmt(x, ci) -> str:
        return stats.format_ratio(x, *(ci or [None, None]))

    def add(goal, value, met):
        out.append({"setting": setting, "goal": f"trees: {goal}", "value": value, "met": bool(met)})

    top = max(trees, key=lambda r: r["tau"] or 0.0)  # (1)
    ci = top.get("tau_ci")
    add(f">= {TREE_GOALS['tau']} tokens per target forward (the best tree mode)",
        f"{_f(top['tau'])}{f' [{ci[0]:.2f}, {ci[1]:.2f}]' if ci else ''} ({top['name']})",
        (top["tau"] or 0.0) >= TREE_GOALS["tau"])
    fast = max(trees, key=lambda r: r["tokens_per_s"] or 0.0)
    if fast["speedup"] is not None:  # (2)
        want = TREE_GOALS["speedup greedy" if not fast["temperature"] else "speedup sampled"]
        add(f">= {want}x our autoregressive (the fastest tree mode; throughput ratio, point estimate)",
            f"{fmt(fast['speedup'], fast.get('speedup_ci'))} ({fast['name']})", fast["speedup"] >= want)
    hf = [r for r in rows if r["side"] == "hf" and r["tokens_per_s"]]
    if hf and fast["tokens_per_s"]:  # (3)
        best = max(hf, key=lambda r: r["tokens_per_s"])
        v, ci = ratio(fast, best)
        add(f">= {TREE_GOALS['over hf']}x transformers' fastest mode (throughput ratio, point estimate)",
            f"{fmt(v, ci)} ({fast['name']} / {best['name']})", v is not None and v >= TREE_GOALS["over hf"])
    sized = next((r for r in trees if r["mode"] == "ours-recycling-sized"), None)
    fixed = [r for r in trees if r["mode"] == "ours-recycling" or r["mode"].startswith("ours-recycling-b")]
    if sized is not None and fixed:  # (4)
        best = max(fixed, key=lambda r: r["tokens_per_s"] or 0.0)
        v, ci = ratio(sized, best)
        want = TREE_GOALS["sized"]
        if ci is None:
            verdict = "no CI (one prompt): undecided by the data"
        elif ci[0] >= want or ci[1] < want:
            verdict = "the CI decides it"
        else:
            verdict = f"the CI holds {want} on both sides: undecided at this n"
        add(f"the machine-sized tree within {1 - want:.0%} of the best fixed tree (ratio of speeds, point "
            f"estimate >= {want})", f"{fmt(v, ci)} ({sized['name']} / {best['name']}; {verdict})",
            v is not None and v >= want)
    return out


# ------------------------------------------------------------------------------------ reporting
def _f(x, fmt="{:.2f}", none="-"):
    return none if x is None or (isinstance(x, float) and math.isnan(x)) else fmt.format(x)


COLUMNS = [("mode", 34, lambda r: r["name"]),
           ("tok/s", 7, lambda r: _f(r["tokens_per_s"], "{:.1f}")),
           ("spread", 12, lambda r: (f"{min(r['tokens_per_s_repeats']):.1f}-{max(r['tokens_per_s_repeats']):.1f}"
                                     if r["tokens_per_s_repeats"] else "-")),
           ("speedup [95% CI]", 20, lambda r: stats.format_ratio(r["speedup"], *(r.get("speedup_ci") or [None, None]))
            if r["speedup"] is not None else "-"),
           ("decode", 7, lambda r: _f(r["decode_speedup"], "{:.2f}x")),
           ("predict", 8, lambda r: _f(r["predicted"], "{:.2f}x")),
           ("meas/pr", 8, lambda r: _f(r["measured_over_predicted"])),
           ("pr+vrf", 7, lambda r: _f(r["predicted_with_verify_cost"], "{:.2f}x")),
           ("overhd", 7, lambda r: _f(r["overhead_share"], "{:.1%}")),
           ("prefill", 8, lambda r: _f(r["prefill_s"] / r["wall_s"] if r["wall_s"] else None, "{:.1%}")),
           ("accept", 7, lambda r: _f(r["accept_rate"])),
           ("alpha", 6, lambda r: _f(r["alpha"])),
           ("tau", 5, lambda r: _f(r["tau"])),
           ("nodes", 6, lambda r: _f(r.get("nodes_per_forward"), "{:.1f}")),
           ("c", 5, lambda r: _f(r["cost_ratio_c"])),
           ("vrf", 5, lambda r: _f(r["verify_cost"])),
           ("same", 5, lambda r: "-" if r["identical"] is None else ("yes" if r["identical"] else "NO"))]


def format_table(report: dict) -> str:
    lines = []
    for setting in dict.fromkeys(r["setting"] for r in report["rows"]):
        lines.append(f"\n[{setting}]")
        lines.append(" ".join(f"{h:<{w}}" if i == 0 else f"{h:>{w}}" for i, (h, w, _) in enumerate(COLUMNS)))
        for r in report["rows"]:
            if r["setting"] == setting:
                lines.append(" ".join(f"{fn(r):<{w}}" if i == 0 else f"{fn(r):>{w}}"
                                      for i, (_, w, fn) in enumerate(COLUMNS)))
        for q in report["ratios"]:
            if q["setting"] == setting:
                lines.append(f"  ours/hf tokens/s (throughput ratio, 95% CI), {q['ours']} vs {q['hf']}: "
                             f"{stats.format_ratio(q['ratio'], *(q.get('ratio_ci') or [None, None]))}")
        for r in report["rows"]:
            if r["setting"] == setting and r.get("identical") is False:
                same, total = r["identical_calls"]
                lines.append(f"  {r['name']}: output differs from ours autoregressive on {total - same}/{total} calls")
    if report["goals"]:
        lines.append("\ngoals:")
        lines += [f"  [{'met' if g['met'] else 'NOT met'}] {g['setting']}: {g['goal']}: {g['value']}"
                  for g in report["goals"]]
    return "\n".join(lines)


LEGEND = ("tok/s: total new tokens / total wall s; spread: per-repeat min-max; speedup: throughput ratio over the "
          "same side's autoregressive, 95% CI over prompts (t interval on the log scale, paired bootstrap standard error; repeats summed per prompt); decode: the same with prefill forwards left out; predict: Leviathan et al. from "
          "alpha, gamma and c; meas/pr: decode speedup / predicted; overhd: share of wall time outside model "
          "forwards; prefill: share in prefill forwards; accept: accepted/drafted; tau: tokens per target forward; "
          "nodes: drafted tokens per target forward (ours: a tree's nodes, a chain's drafts); "
          "c: drafter/target seconds per forward; vrf: target seconds per forward here / in autoregressive decoding "
          "(the formula assumes 1); pr+vrf: the prediction with that measured verification cost, (1 - alpha^(g+1)) / "
          "((1 - alpha)(g c + vrf)); same: greedy output == ours autoregressive on every call")


