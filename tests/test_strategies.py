"""Every draft-length strategy, end to end: the YAML files are complete and composable, every
strategy is lossless (greedy output == autoregressive output token for token; speculative
sampling keeps the target's distribution), entropy relates to acceptance on the trained tiny
pair, threshold grids sweep, and a user's strategies outside the package run through
hydra.searchpath."""
from __future__ import annotations

import functools
import json
import os
import re
from collections import Counter
from types import SimpleNamespace

import pytest
import torch
from conftest import ModelsByRole, CONF, ROOT, compose, noisy_copy, pair_overrides, random_model
from omegaconf import OmegaConf
from scipy import stats

from specexp.report import token_records as analysis
from specexp.experiment import instantiate
from specexp import length as L
from specexp.core.decode import generate
from specexp.models.cached_lm import CachedLM
from specexp.proposers import DraftModel
from specexp.models.sampling import Sampling
from specexp.core.stopping import Stopper

STRATEGIES = ["speculative", "random_gamma", "oracle", "heuristic", "heuristic_transient", "confidence",
              "entropy_static", "entropy_ma", "entropy_cum", "entropy_absolute", "entropy_relative",
              "entropy_window", "entropy_adaptive", "entropy_combined", "adaedl", "svip"]
FIXED_LENGTH = {"speculative", "random_gamma", "heuristic", "heuristic_transient"}  # no per-token decision


def _drafts_trees(name: str) -> bool:
    """Whether conf/strategy/<name>.yaml's proposer drafts token trees (its class's `drafts_trees`)."""
    from hydra.utils import get_object

    target = (compose([f"strategy={name}"]).strategy.get("proposer") or {}).get("_target_")
    return bool(target) and bool(getattr(get_object(target), "drafts_trees", False))


# Token-tree strategies that draft with the pair's drafter model (found from the files): the YAML
# and losslessness checks below cover them too (a tree's depth is the policy's draft length).
TREES = sorted(p.stem for p in (CONF / "strategy").glob("*.yaml") if _drafts_trees(p.stem)
               and (compose([f"strategy={p.stem}"]).strategy.proposer.get("model") == "drafter"))
GRIDS = sorted(p.stem for p in (CONF / "grid").glob("*.yaml"))
GREEDY = Sampling()


@functools.lru_cache(maxsize=None)
def strategy_cfg(name: str, overrides: tuple[str, ...] = ()):
    return compose([f"strategy={name}", *overrides]).strategy


def make(name: str, pair, overrides: tuple[str, ...] = ()):
    """(proposer, policy) of conf/strategy/<name>.yaml, built as a run builds them."""
    return instantiate.strategy(strategy_cfg(name, tuple(overrides)), pair)


def decode(pair, proposer, policy, prompts, n, sampling=GREEDY, stopper=None, records=False, seed=0):
    """Speculative decode of each prompt, the policy reset per sample as in a run."""
    target = CachedLM(pair.target)
    proposer.records = records
    outs = []
    for i, p in enumerate(prompts):
        policy.start_sample(carry=False)
        gen = torch.Generator().manual_seed(seed + i)
        outs.append(generate(target, p, n, sampling, stopper or Stopper(), proposer, policy, gen, records=records))
    return outs


_AR: dict = {}


def autoregressive(pair, prompts, n, stopper=None):
    """The target's greedy output for each prompt (cached: every strategy compares with it)."""
    key = (id(pair.target), tuple(tuple(p.tolist()) for p in prompts), n, tuple(sorted(stopper.eos)) if stopper else ())
    if key not in _AR:
        target = CachedLM(pair.target)
        _AR[key] = [generate(target, p, n, GREEDY, stopper or Stopper()).tokens for p in prompts]
    return _AR[key]


# --- the YAML files --------------------------------------------------------------------------------

@pytest.mark.parametrize("name", STRATEGIES + TREES)
def test_strategy_yaml_is_complete(name):
    """The file exists, builds a proposer and a length policy, names itself, comments every
    option, and every free top-level parameter reaches the policy (so `strategy.<p>=x` works)."""
    path = CONF / "strategy" / f"{name}.yaml"
    raw = OmegaConf.load(path)
    assert raw.name == name
    free = [k for k in raw if k not in ("name", "proposer", "length")]
    for line in path.read_text().splitlines():
        if re.match(r"^[a-z_]+:\s*\S", line) and not line.startswith(("name:", "proposer:", "length:")):
            assert "#" in line, f"{name}: option without a comment: {line!r}"
    length_node = OmegaConf.to_container(raw.length)
    assert length_node["_target_"].startswith("specexp.length.")
    for k in free:
        assert f"${{..{k}}}" in length_node.values(), f"{name}: {k} is not used by the length policy"


def test_top_level_parameters_override_the_policy(random_pair):
    cases = {"entropy_static": ("tau", 3.5), "entropy_ma": ("m", 0.75), "entropy_cum": ("tau_cum", 4.0),
             "entropy_absolute": ("theta_abs", 2.0), "entropy_relative": ("theta_rel", 2.0),
             "entropy_window": ("window", 5), "entropy_adaptive": ("alpha", 0.3), "adaedl": ("lambda_init", 0.7),
             "svip": ("threshold", 0.5), "confidence": ("threshold", 0.2), "random_gamma": ("max_gamma", 12),
             "heuristic": ("start", 3), "oracle": ("max_len", 6)}
    attr = {"lambda_init": "lam", "start": "current"}
    for name, (key, value) in cases.items():
        _, policy = make(name, random_pair, (f"strategy.{key}={value}",))
        assert getattr(policy, attr.get(key, key)) == value, name
    _, p = make("entropy_absolute", random_pair, ("strategy.entropy_type=renyi", "strategy.renyi_alpha=3"))
    assert (p.entropy_type, p.renyi_alpha) == ("renyi", 3)


@pytest.mark.parametrize("grid", GRIDS)
def test_grid_files_compose(grid):
    """`grid=<g>` selects the strategy and sweeps keys that the strategy has."""
    cfg = compose([f"grid={grid}"])
    params = cfg.hydra.sweeper.params
    assert params, grid
    for key, values in params.items():
        assert key.startswith("strategy."), key
        assert key.split(".", 1)[1] in cfg.strategy, f"{grid}: {key} is not a parameter of {cfg.strategy.name}"
        assert len(str(values).split(",")) >= 2
    build_ok = OmegaConf.to_container(cfg.strategy.length)["_target_"]
    assert build_ok.startswith("specexp.length.")


def test_grids_match_the_thesis_and_the_framework():
    def values(grid, key):
        return [float(v) for v in str(compose([f"grid={grid}"]).hydra.sweeper.params[key]).split(",")]

    assert values("entropy_static", "strategy.tau") == [0.25 * i for i in range(1, 21)]  # 0.25 .. 5.0
    assert values("entropy_absolute", "strategy.theta_abs")[0] == 0.5
    assert values("entropy_absolute", "strategy.theta_abs")[-1] == 2.5
    assert values("entropy_relative", "strategy.theta_rel")[0] == 1.2
    assert values("entropy_relative", "strategy.theta_rel")[-1] == 2.5
    assert values("entropy_window", "strategy.window") == [1, 3, 5]
    for g in ("entropy_absolute", "entropy_relative", "entropy_window"):
        types = str(compose([f"grid={g}"]).hydra.sweeper.params["strategy.entropy_type"]).split(",")
        assert sorted(types) == ["renyi", "shannon", "topk"]


# --- lossless under greedy decoding ----------------------------------------------------------------

@pytest.fixture(scope="module")
def random_pair(random_pair_dir):
    cfg = compose(pair_overrides(random_pair_dir))
    return instantiate.pair(cfg.model_pair)


def _prompts(vocab: int, n: int = 3, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    return [torch.randint(1, vocab, (4 + 3 * i,), generator=g) for i in range(n)]


@pytest.mark.parametrize("name", STRATEGIES + TREES)
def test_every_strategy_is_lossless_on_the_random_pair(random_pair, name):
    """The strategy as configured (defaults), built from its YAML, on the random-init pair (a
    tree: its accepted path within its depth, within the policy's length, and at least one node per level)."""
    proposer, policy = make(name, random_pair)
    prompts = _prompts(random_pair.vocab_size, n=2)
    outs = decode(random_pair, proposer, policy, prompts, 24)
    assert [o.tokens for o in outs] == autoregressive(random_pair, prompts, 24)
    if name in TREES:
        assert any(o.tree_nodes for o in outs), f"{name} drafted no tree"
        assert all(n <= d <= policy.max_len and d <= k for o in outs
                   for n, d, k in zip(o.tree_path, o.tree_depth, o.tree_nodes))
        return
    assert all(0 <= n <= k <= policy.max_len for o in outs for n, k in zip(o.accepted, o.drafted))




@pytest.fixture(scope="module")
def sharp_pair():
    """A random pair whose drafter's entropy varies a lot from token to token (median ~0.9 nats)
    and that agrees with the target about half the time, so the dynamic rules draft variable
    lengths and see both outcomes."""
    target = random_model("llama", vocab=64, hidden=64, layers=2, seed=0)
    with torch.no_grad():
        target.lm_head.weight.mul_(40)
    return ModelsByRole(target, noisy_copy(target, 0.05, seed=2))


# thresholds near the sharp pair's median entropy, so that every rule both drafts and stops
MID = {"entropy_static": ("strategy.tau=0.9",), "entropy_cum": ("strategy.tau_cum=2.0",),
       "entropy_absolute": ("strategy.theta_abs=0.9",), "entropy_window": ("strategy.theta_abs=0.9",),
       "entropy_adaptive": ("strategy.theta_abs=0.7",), "entropy_combined": ("strategy.theta_abs=0.9",),
       "adaedl": ("strategy.lambda_init=0.6",), "svip": ("strategy.threshold=0.35",),
       "confidence": ("strategy.threshold=0.6",), "entropy_ma": ("strategy.m=1.0",)}


@pytest.mark.parametrize("name", STRATEGIES)
def test_every_strategy_is_lossless_with_variable_lengths(sharp_pair, name):
    proposer, policy = make(name, sharp_pair, MID.get(name, ()))
    prompts = _prompts(64, n=3, seed=1)
    outs = decode(sharp_pair, proposer, policy, prompts, 40)
    assert [o.tokens for o in outs] == autoregressive(sharp_pair, prompts, 40)
    lengths = [k for o in outs for k in o.drafted[:-1]]  # the last round may be cut by the budget
    if name not in ("speculative",):
        assert len(set(lengths)) >= 2, f"{name} drafted a constant length {set(lengths)}"
    if name == "oracle":  # every drafted token is accepted
        assert all(n == k for o in outs for n, k in zip(o.accepted, o.drafted))


def test_oracle_matches_fixed_gamma_acceptance_without_waste(sharp_pair):
    """From the same state, the oracle and Fixed(max_len) accept the same tokens in every round
    (both accept up to the first disagreement); the oracle drafts nothing that is rejected."""
    prompts = _prompts(64, n=3, seed=2)
    oracle = decode(sharp_pair, *make("oracle", sharp_pair, ("strategy.max_len=6",)), prompts, 40)
    fixed = decode(sharp_pair, *make("speculative", sharp_pair, ("strategy.gamma=6",)), prompts, 40)
    for o, f in zip(oracle, fixed):
        assert o.accepted == f.accepted and o.tokens == f.tokens
        assert o.drafted == o.accepted
        assert sum(o.drafted) < sum(f.drafted)


def test_oracle_refuses_sampling(sharp_pair):
    proposer, policy = make("oracle", sharp_pair)
    with pytest.raises(ValueError, match="greedy"):
        decode(sharp_pair, proposer, policy, _prompts(64, 1), 8, sampling=Sampling(temperature=1.0))


def test_records_carry_the_policys_entropy(sharp_pair):
    """With records on, drafter_entropy is the policy's own measure (here top-1: always 0)."""
    proposer, policy = make("entropy_absolute", sharp_pair, ("strategy.entropy_type=topk", "strategy.entropy_top_k=1"))
    outs = decode(sharp_pair, proposer, policy, _prompts(64, 1), 20, records=True)
    assert outs[0].records and all(r["drafter_entropy"] == 0.0 for r in outs[0].records)
    proposer, policy = make("entropy_absolute", sharp_pair)
    outs = decode(sharp_pair, proposer, policy, _prompts(64, 1), 20, records=True)
    assert max(r["drafter_entropy"] for r in outs[0].records) > 0.1


def test_analysis_sees_entropy_predict_rejection(sharp_pair):
    """On a pair where the drafter's confidence carries signal, the recorded aggregates show it:
    negative correlation of drafter entropy with acceptance, and a lower acceptance rate in
    the high-entropy bins than in the low ones."""
    proposer, policy = make("speculative", sharp_pair, ("strategy.gamma=6",))
    outs = decode(sharp_pair, proposer, policy, _prompts(64, n=3, seed=1), 40, records=True)
    a = analysis.aggregate([r for o in outs for r in o.records], [o.drafted for o in outs])
    corr = a["correlation"]["drafter_entropy"]
    assert corr["pearson"] < -0.1 and corr["spearman"] < -0.1, corr
    b = a["acceptance_by_entropy"]
    low = sum(b["accepted"][:2]) / sum(b["n"][:2])  # H < 0.5
    high = sum(b["accepted"][4:]) / sum(b["n"][4:])  # H >= 1.0
    assert low > high
    d = a["draft_length"]
    assert len(d["histogram"]) == 7 and d["histogram"][6] > d["n_rounds"] / 2  # gamma 6 (less where the budget cuts)
    assert d["mean"] == pytest.approx(sum(sum(o.drafted) for o in outs) / d["n_rounds"])


# --- lossless under sampling: the output distribution is the target's -------------------------------

class _Cache:
    def __init__(self):
        self.n = 0

    def crop(self, k):  # CachedLM passes the (negative) number of positions to drop
        self.n += k


class BigramLM:
    """A causal LM whose next-token logits depend only on the last token (a [V, V] table): the
    exact distribution of its samples is known, and a forward costs microseconds."""

    def __init__(self, table: torch.Tensor):
        self.table = table
        self.lm_head = SimpleNamespace(weight=table)

    def get_output_embeddings(self):
        return self.lm_head

    def __call__(self, input_ids, past_key_values=None, use_cache=True, logits_to_keep=0):
        cache = past_key_values or _Cache()
        cache.n += input_ids.shape[1]
        logits = self.table[input_ids[0]]
        if logits_to_keep:
            logits = logits[-logits_to_keep:]
        return SimpleNamespace(logits=logits[None], past_key_values=cache)


VS = 6
SAMPLE = Sampling(temperature=0.8, top_k=5)


@pytest.fixture(scope="module")
def bigram_pair():
    g = torch.Generator().manual_seed(0)
    sharp = torch.tensor([0.3, 1.0, 2.0, 4.0, 6.0, 8.0])[:, None]  # some contexts certain, some not
    target = torch.randn(VS, VS, generator=g) * sharp
    drafter = target + 0.8 * torch.randn(VS, VS, generator=g)
    return ModelsByRole(BigramLM(target), BigramLM(drafter))


def first_two_counts(pair, make_policy, draws: int, prompt: torch.Tensor, budget: int = 4) -> Counter:
    target = CachedLM(pair.target)
    proposer = DraftModel().bind(pair)
    proposer.records = False
    policy = make_policy().bind(pair) if make_policy else None
    counts = Counter()
    for i in range(draws):
        gen = torch.Generator().manual_seed(1000 + i)
        if policy is None:
            out = generate(target, prompt, budget, SAMPLE, Stopper(), generator=gen)
        else:
            policy.start_sample(carry=False)
            out = generate(target, prompt, budget, SAMPLE, Stopper(), proposer, policy, gen)
        counts[tuple(out.tokens[:2])] += 1
    return counts


def chi2_pvalue(counts: Counter, expected: torch.Tensor, draws: int) -> float:
    exp = (expected * draws).flatten().tolist()
    cells = [(counts.get((i // VS, i % VS), 0), e) for i, e in enumerate(exp)]
    big = [(o, e) for o, e in cells if e >= 5]
    small_o, small_e = sum(o for o, e in cells if e < 5), sum(e for o, e in cells if e < 5)
    if small_e > 0:
        big.append((small_o, small_e))
    obs, ex = [o for o, _ in big], [e for _, e in big]
    return float(stats.chisquare(obs, [e * sum(obs) / sum(ex) for e in ex]).pvalue)


def exact_first_two(pair, prompt) -> torch.Tensor:
    """P(x1, x2) of the target's own samples: p(x1 | last prompt token) p(x2 | x1)."""
    p = SAMPLE.probs(pair.target.table)  # [V, V]: row = previous token
    return p[int(prompt[-1])][:, None] * p


SAMPLING_POLICIES = {
    "entropy_static": lambda: L.EntropyStatic(tau=0.6),
    "entropy_absolute": lambda: L.EntropyAbsolute(theta_abs=0.6, min_len=0),
    "adaedl": lambda: L.AdaEDL(lambda_init=0.6),
    "svip": lambda: L.SVIP(threshold=0.25),
    "confidence": lambda: L.Confidence(threshold=0.5),
    "heuristic": lambda: L.Heuristic(start=2),
}


@pytest.mark.parametrize("name", list(SAMPLING_POLICIES))
def test_sampling_keeps_the_target_distribution(bigram_pair, name):
    """Chi-square of the first two tokens (round one drafts up to 3) against the target's exact
    distribution, 3000 draws; the drafted lengths vary, so the rule is really exercised."""
    prompt = torch.tensor([2])
    draws = 3000
    counts = first_two_counts(bigram_pair, SAMPLING_POLICIES[name], draws, prompt)
    assert chi2_pvalue(counts, exact_first_two(bigram_pair, prompt), draws) > 1e-3


def test_the_sampling_check_has_power(bigram_pair):
    """The same check rejects the drafter's own distribution (what a lossy decoder would give)."""
    prompt = torch.tensor([2])
    drafter_only = ModelsByRole(bigram_pair.drafter, bigram_pair.drafter)
    counts = first_two_counts(drafter_only, None, 3000, prompt)
    assert chi2_pvalue(counts, exact_first_two(bigram_pair, prompt), 3000) < 1e-6


def test_sampling_rules_see_variable_entropy(bigram_pair):
    """Under sampling the rules read the sampling distribution and stop at different points."""
    target = CachedLM(bigram_pair.target)
    proposer = DraftModel().bind(bigram_pair)
    proposer.records = False
    for name, make_policy in SAMPLING_POLICIES.items():
        policy = make_policy()
        lengths = []
        for i in range(30):
            policy.start_sample(carry=False)
            out = generate(target, torch.tensor([i % VS]), 12, SAMPLE, Stopper(), proposer, policy,
                           torch.Generator().manual_seed(i))
            lengths += out.drafted[:-1]
        assert len(set(lengths)) >= 2, name


# --- the trained tiny pair -------------------------------------------------------------------------

@pytest.fixture(scope="module")
def trained(trained_pair_dir):
    from specexp.tasks.humaneval import HumanEval

    cfg = compose(pair_overrides(trained_pair_dir))
    pair = instantiate.pair(cfg.model_pair)
    tok = pair.tokenizer
    prompts = [torch.tensor(tok(s.prompt)["input_ids"]) for s in HumanEval(limit=3).samples()]
    return pair, prompts, Stopper(eos_ids=[tok.eos_token_id])


@pytest.mark.parametrize("name", STRATEGIES + TREES)
def test_every_strategy_is_lossless_on_the_trained_pair(trained, name):
    pair, prompts, stopper = trained
    proposer, policy = make(name, pair)
    outs = decode(pair, proposer, policy, prompts[:2], 48, stopper=stopper)
    assert [o.tokens for o in outs] == autoregressive(pair, prompts[:2], 48, stopper)


def _trained_records(trained):
    pair, prompts, stopper = trained
    outs = decode(pair, *make("speculative", pair, ("strategy.gamma=8",)), prompts, 64, stopper=stopper,
                  records=True)
    return [r for o in outs for r in o.records], outs


def test_entropy_predicts_rejection_on_the_trained_pair(trained):
    """Records from a fixed-length run: drafter entropy correlates negatively with acceptance,
    and acceptance is higher in the lowest-entropy quarter than in the highest."""
    recs, outs = _trained_records(trained)
    a = analysis.aggregate(recs, [o.drafted for o in outs])
    corr = a["correlation"]["drafter_entropy"]
    assert corr["pearson"] < 0 and corr["spearman"] < 0, corr
    hs = sorted(r["drafter_entropy"] for r in recs)
    low = [r["accepted"] for r in recs if r["drafter_entropy"] <= hs[len(hs) // 4]]
    high = [r["accepted"] for r in recs if r["drafter_entropy"] >= hs[3 * len(hs) // 4]]
    assert sum(low) / len(low) > sum(high) / len(high)


def test_static_rule_at_a_mid_threshold_drafts_variable_lengths_on_the_trained_pair(trained):
    """With tau at an upper-middle quantile of the drafter entropies of a fixed-length run (so a
    draft goes on with probability ~0.8 per token, if entropies were independent), the static
    rule's drafts vary in length, and the output is still the target's."""
    pair, prompts, stopper = trained
    recs, _ = _trained_records(trained)
    hs = sorted(r["drafter_entropy"] for r in recs)
    tau = round(hs[int(0.8 * len(hs))], 3)  # a mid threshold: the 80th percentile of drafter entropy
    outs = decode(pair, *make("entropy_static", pair, (f"strategy.tau={tau}",)), prompts, 64, stopper=stopper)
    lengths = Counter(k for o in outs for k in o.drafted[:-1])
    assert len(lengths) >= 3, (tau, lengths)
    assert [o.tokens for o in outs] == autoregressive(pair, prompts, 64, stopper)


# --- the CLI: threshold grids and user strategies outside the package ------------------------------

def test_grid_sweeps_through_the_cli(run_specexp, random_pair_dir, tmp_path):
    """`specexp -m grid=entropy_static` runs the grid; a command-line sweep of the same key
    narrows it (here to two values, to keep the test fast)."""
    proc, _ = run_specexp("grid=entropy_static", "strategy.tau=1.0,3.0", "debug=fast", "dataset.limit=1",
                          *pair_overrides(random_pair_dir), multirun=True)
    metrics = [json.loads((tmp_path / "sweep" / str(i) / "metrics.json").read_text()) for i in range(2)]
    assert [m["status"] for m in metrics] == ["ok", "ok"]
    assert [m["strategy"] for m in metrics] == ["entropy_static"] * 2
    assert sorted(m["config"]["strategy"]["tau"] for m in metrics) == [1.0, 3.0]
    assert all(m["all_match_baseline"] for m in metrics)


EXAMPLE = ROOT / "examples" / "my_strategies"

USER_RULE = '''
from specexp.length import Decision, LengthPolicy


class EveryOther(LengthPolicy):
    """A user's rule: drafts `long` tokens in even rounds and 1 in odd rounds."""

    def __init__(self, long: int = 5):
        super().__init__(max_len=long)
        self.long = long
        self.reset()

    def begin(self):
        self.round += 1
        return self.long if self.round % 2 else 1

    def reset(self):
        self.round = 0
'''

USER_YAML = """# A strategy with its own Python class (user_rules.py, importable via PYTHONPATH).
name: every_other
long: 5                   # draft length of the long rounds
proposer:
  _target_: specexp.proposers.DraftModel
  model: drafter          # which model of the pair drafts
length:
  _target_: user_rules.EveryOther
  long: ${..long}
"""


def test_user_strategies_outside_the_package_run_through_searchpath(run_specexp, random_pair_dir, tmp_path,
                                                                  monkeypatch):
    """Two strategies that live outside specexp: the YAML-only example in examples/my_strategies
    (an existing rule at its own setting), and one with its own `_target_` class; both found
    through hydra.searchpath, run, lossless, with the analysis aggregates (records=true)."""
    user = tmp_path / "user_conf"
    (user / "strategy").mkdir(parents=True)
    (user / "strategy" / "every_other.yaml").write_text(USER_YAML)
    code = tmp_path / "user_code"
    code.mkdir()
    (code / "user_rules.py").write_text(USER_RULE)
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(code), os.environ.get("PYTHONPATH", "")]))
    assert not (CONF / "strategy" / "my_entropy.yaml").exists()  # really outside the package's conf
    searchpath = f"hydra.searchpath=[file://{EXAMPLE},file://{user}]"
    run_specexp(searchpath, "strategy=my_entropy,every_other", "records=true", "debug=fast", "dataset.limit=1",
                *pair_overrides(random_pair_dir), multirun=True)
    metrics = {m["strategy"]: m for m in
               (json.loads((tmp_path / "sweep" / str(i) / "metrics.json").read_text()) for i in range(2))}
    assert set(metrics) == {"my_entropy", "every_other"}
    for m in metrics.values():
        assert m["status"] == "ok" and m["all_match_baseline"]
        assert m["analysis"]["n_records"] == len(m["draft_records"]) > 0
        assert m["analysis"]["draft_length"]["n_rounds"] == sum(len(s["draft_lengths"]) for s in m["samples"])
    assert metrics["my_entropy"]["config"]["strategy"]["length"]["_target_"] == "specexp.length.EntropyStatic"
    lengths = metrics["every_other"]["samples"][0]["draft_lengths"]
    assert lengths[:4] == [5, 1, 5, 1]
