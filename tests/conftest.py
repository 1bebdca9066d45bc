"""Shared fixtures: random-init tiny models saved in Hugging Face format (fast), the trained tiny
pair (built once per machine and cached), and Hydra config composition."""
from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

# Tiny models gain nothing from intra-op threads, and oversubscribed threads (pytest next to other
# work on 2 cores) make each forward 20x slower.
torch.set_num_threads(1)

ROOT = Path(__file__).resolve().parents[1]
CONF = ROOT / "conf"


def load_script(stem: str):
    """scripts/ is not a package: import scripts/<stem>.py from its path, once (registered in
    sys.modules first, which its dataclasses need)."""
    import importlib.util
    import sys

    name = f"specexp_scripts_{stem}"
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(name, ROOT / "scripts" / f"{stem}.py")
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        spec.loader.exec_module(module)
    return sys.modules[name]

CORPUS = ("def add(a, b):\n    return a + b\n\nclass Point:\n    def __init__(self, x, y):\n"
          "        self.x = x\n        self.y = y\n\nfor i in range(10):\n    print(i)\n") * 20


def make_tokenizer(vocab_size: int = 300):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=["<|endoftext|>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator([CORPUS], trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|endoftext|>", bos_token="<|endoftext|>")


def random_model(arch: str, vocab: int, hidden: int, layers: int, seed: int, eos: int = 0):
    from transformers import GPT2Config, GPT2LMHeadModel, LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    if arch == "llama":
        cfg = LlamaConfig(vocab_size=vocab, hidden_size=hidden, intermediate_size=2 * hidden,
                          num_hidden_layers=layers, num_attention_heads=4, num_key_value_heads=2,
                          max_position_embeddings=1024, eos_token_id=eos, bos_token_id=eos)
        return LlamaForCausalLM(cfg).eval()
    if arch == "gpt2":
        cfg = GPT2Config(vocab_size=vocab, n_embd=hidden, n_layer=layers, n_head=4, n_positions=1024,
                         eos_token_id=eos, bos_token_id=eos)
        return GPT2LMHeadModel(cfg).eval()
    raise ValueError(arch)


def noisy_copy(model, scale: float, seed: int):
    """A drafter that agrees with the target often but not always: the target plus weight noise."""
    import copy

    torch.manual_seed(seed)
    d = copy.deepcopy(model)
    with torch.no_grad():
        for p in d.parameters():
            p.add_(scale * p.std().nan_to_num() * torch.randn_like(p))
    return d


def pooled_chisquare(counts: torch.Tensor, p: torch.Tensor, n_draws: int) -> float:
    """Chi-square goodness-of-fit p-value (scipy) of observed `counts` against the exact
    probabilities `p` over `n_draws` draws (same shape), the cells expecting fewer than 5 draws
    pooled into one, as the test needs."""
    from scipy.stats import chisquare

    expected, counts = (p * n_draws).flatten(), counts.flatten()
    keep = expected >= 5
    obs = torch.cat([counts[keep], counts[~keep].sum()[None]])
    exp = torch.cat([expected[keep], expected[~keep].sum()[None]])
    obs, exp = obs[exp > 0], exp[exp > 0]
    return float(chisquare(obs.numpy(), exp.numpy() * obs.sum().item() / exp.sum().item()).pvalue)


def pair_counts_pvalue(counts, exact: torch.Tensor) -> float:
    """pooled_chisquare (in float64) of a Counter of emitted token pairs {(t1, t2): draws}
    against their exact joint distribution `exact` [V, V]."""
    v = exact.shape[1]
    observed = torch.zeros(exact.numel(), dtype=torch.float64)
    for (a, b), c in counts.items():
        observed[a * v + b] += c
    return pooled_chisquare(observed, exact.double().flatten(), sum(counts.values()))


def check_pairs_follow(exact: torch.Tensor, emit, monkeypatch, n: int = 1000, power: float = 1e-4) -> None:
    """The sampling check of a tree strategy: `emit(i)` decodes with generator seed i and returns
    (its first two tokens, drafts accepted). With verification's residual step broken (p kept
    after a rejection) the pairs must fail a chi-square against `exact` [V, V] (power: p < `power`);
    with the real rule they must pass it (p > 1e-3), drafts must have been accepted, and no pair
    the target rules out may appear."""
    from collections import Counter

    from specexp.core import verify

    def draw():
        counts, accepted = Counter(), 0
        for i in range(n):
            pair, a = emit(i)
            counts[pair] += 1
            accepted += a
        return counts, accepted

    with monkeypatch.context() as m:
        m.setattr(verify, "residual", lambda p, q: p)
        broken, _ = draw()
    assert pair_counts_pvalue(broken, exact) < power
    counts, accepted = draw()
    assert pair_counts_pvalue(counts, exact) > 1e-3 and accepted > 0
    assert not any(exact[a, b] == 0 for a, b in counts), "a token outside the target's top-k was emitted"


def exact_joint(model, prompt: torch.Tensor, sampling, vocab: int) -> torch.Tensor:
    """Exact distribution [vocab, vocab] of the first two tokens `model` emits after `prompt`
    under `sampling`: p(t1) * p(t2 | t1), one forward per first token."""
    from specexp.models.cached_lm import CachedLM

    p1 = sampling.probs(CachedLM(model).forward(prompt)[-1])
    p2 = torch.stack([sampling.probs(CachedLM(model).forward(torch.cat([prompt, torch.tensor([t])]))[-1])
                      for t in range(vocab)])
    return p1[:, None] * p2


def save_pair(root: Path, arch: str = "llama", vocab_size: int = 300) -> Path:
    tok = make_tokenizer(vocab_size)
    for role, hidden, layers, seed in (("target", 64, 2, 0), ("drafter", 32, 1, 1)):
        model = random_model(arch, len(tok), hidden, layers, seed, eos=tok.eos_token_id)
        model.save_pretrained(root / role)
        tok.save_pretrained(root / role)
    return root


class ModelsByRole:
    """What a proposer's `bind` reads from a loaded `models.Pair`: the models by role and the
    target's logit width."""

    def __init__(self, target, drafter=None):
        self.target, self.drafter = target, drafter
        self.vocab_size = target.get_output_embeddings().weight.shape[0]

    def get(self, role):
        return getattr(self, role)


@pytest.fixture(scope="session")
def random_pair_dir(tmp_path_factory) -> Path:
    """A random-init Llama target/drafter pair with a shared 300-token BPE tokenizer, on disk."""
    return save_pair(tmp_path_factory.mktemp("random_pair"))


@pytest.fixture(scope="session")
def trained_pair_dir() -> Path:
    """The trained tiny pair (specexp.builds.train_tiny_pair), built once per machine into the cache (~3 min)."""
    from specexp.builds.train_tiny_pair import build_tiny_pair

    return Path(build_tiny_pair())


def compose(overrides: list[str]):
    """The real config, composed as `specexp <overrides>` would (without running)."""
    from hydra import compose as hcompose
    from hydra import initialize_config_dir

    from specexp.experiment.config import register

    register()
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        return hcompose("config", overrides=overrides, return_hydra_config=True)


def pair_overrides(pair_dir: Path) -> list[str]:
    return ["model_pair.build=null", f"model_pair.dir={pair_dir}", "model_pair.name=test"]


# One short HumanEval sample, no warm-up, no summary: about a second per run on the random pair.
SHORT_RUN = ["dataset.limit=1", "dataset.max_new_tokens=4", "dataset.max_prompt_tokens=16", "warmup=0", "summary=false"]

# A specexp subprocess's environment: nothing fetched from the Hub, no tokenizer threads.
OFFLINE_ENV = {"HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}


@pytest.fixture
def fresh_cache(monkeypatch):
    """An empty model cache and load counter: what this test loads, and only that, is counted (a
    check that fails before loading leaves it at 0). Returns the counter."""
    from specexp.models import loading

    monkeypatch.setattr(loading, "_MODEL_CACHE", {})
    monkeypatch.setitem(loading.LOAD_COUNT, "models", 0)
    return loading.LOAD_COUNT


@pytest.fixture
def run_specexp(tmp_path):
    """Run the real CLI in a subprocess; returns (completed process, run dir)."""
    import subprocess
    import sys

    def _run(*overrides: str, check: bool = True, multirun: bool = False):
        run_dir = tmp_path / "run"
        cmd = [sys.executable, "-m", "specexp", *(["-m"] if multirun else []), *overrides,
               f"hydra.run.dir={run_dir}", f"hydra.sweep.dir={tmp_path / 'sweep'}"]
        env = {**os.environ, **OFFLINE_ENV}
        proc = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=ROOT, timeout=600)
        if check and proc.returncode != 0:
            raise AssertionError(f"specexp failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
        return proc, run_dir

    return _run


def pytest_terminal_summary(terminalreporter, exitstatus, config):
    """A loud list of every skipped test and its reason (a missing asset: the shared data, the
    SmolLM2 GGUF, a GPU...): a skipped test proved nothing, and a green run must say so."""
    skipped = terminalreporter.stats.get("skipped", [])
    if not skipped:
        return
    tr = terminalreporter
    tr.write_sep("!", f"{len(skipped)} TEST(S) SKIPPED: they proved nothing in this run", red=True, bold=True)
    for rep in skipped:
        reason = rep.longrepr[2] if isinstance(rep.longrepr, tuple) else str(rep.longrepr)
        where = rep.nodeid if "::" in rep.nodeid else f"{rep.nodeid} (whole module)"
        tr.write_line(f"SKIPPED {where}: {reason.removeprefix('Skipped: ')}", red=True, bold=True)
