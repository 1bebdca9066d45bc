"""`specexp-console` (or `specexp console`): load the pair once, then generate from prompts typed
one after another, changing settings between them with `:` commands (`:help` lists them).

    specexp-console                                   # the tiny pair, speculative, greedy
    specexp-console model_pair=llama-7b__llama-160m strategy=entropy_static

The console takes the same overrides as `specexp`. Every command is an override too: the console
recomposes the config with it (so unknown keys and bad values fail as they do for `specexp`),
rebuilds the strategy and sampling, and keeps the previous settings when anything fails. The pair
is never reloaded. Prompts go through the prompt dataset (conf/dataset/prompt.yaml: chat
template, system message, stop strings).
"""
from __future__ import annotations

import re
import sys
from pathlib import Path

import torch
import transformers
from omegaconf import OmegaConf

from specexp.core.decode import Generation, generate
from specexp.core.stopping import Stopper
from specexp.experiment import instantiate, validate
from specexp.experiment import watch as show
from specexp.experiment.config import CONF_DIR, cli_overrides, compose
from specexp.models.cached_lm import cached_lm
from specexp.models.prompt_ids import eos_ids, fit_prompts
from specexp.tasks.typed_prompts import PromptTask

HELP = """\
Type a prompt to generate from it (a line ending in \\ continues on the next line).
Commands:
  :strategy NAME          switch strategy, e.g. speculative, entropy_static, autoregressive (no NAME: list them)
  :set KEY=VALUE ...      any config override, e.g. :set strategy.gamma=8   :set strategy.tau=1.5 seed=3
  :sampling greedy        greedy decoding (temperature 0)
  :sampling KEY=VALUE ... temperature, top_k, top_p, e.g. :sampling temperature=0.7 top_k=50 top_p=0.9
  :max N                  at most N new tokens per prompt
  :chat on|off|auto       wrap prompts in the tokenizer's chat template (:set dataset.system=... for a system turn)
  :compare on|off         also generate with the drafter alone and the target alone, side by side
  :entropy on|off         per drafted token: drafter and target entropy, top probability, kept or not
  :settings               show the current settings
  :reset                  back to the settings the console started with
  :help                   this text
  :quit                   leave (Ctrl-D too)"""

SWITCHES = {"on": True, "true": True, "off": False, "false": False}
# a command's words: split at spaces, except inside '...', "..." (Hydra's quotes) and [...] (lists)
WORD = re.compile(r"""(?:'(?:\\.|[^'\\])*'|"(?:\\.|[^"\\])*"|\[[^\]]*\]|[^\s'"\[]|['"\[])+""")


def compose_config(overrides: list[str]):
    """The run config as `specexp <overrides>` composes and checks it (specexp.experiment.validate)."""
    cfg = compose(overrides)
    probe = cfg.copy()  # the console's prompts come one by one: check the rest with a stand-in text
    probe.dataset.text = probe.dataset.get("text") or "-"
    validate.check(probe)  # unknown keys, types, ranges and choices fail as they do for `specexp`
    return cfg


def _key(override: str) -> str:
    return override.split("=", 1)[0].lstrip("+~")


class Console:
    """The session: `overrides` from the command line, output to `out` (colours when it is a
    terminal, unless `color` says otherwise)."""

    def __init__(self, overrides: list[str] = (), out=None, color: bool | None = None):
        self.printer = show.Printer(out or sys.stdout, color)
        self.start = ["dataset=prompt", *overrides]  # what :reset goes back to
        self.cfg = compose_config(self.start)
        self.pair = instantiate.pair(self.cfg.model_pair)  # loaded once
        self.target = cached_lm(self.pair.target)
        self._drafter = None  # the drafter alone, for :compare (loaded on first use)
        self.reset()
        if self.cfg.warmup:  # the first calls pay for allocations: keep them out of the first prompt's tokens/s
            self._decode("warm-up", max_new_tokens=8)

    # ---- settings -----------------------------------------------------------------------------

    def reset(self) -> None:
        self.overrides: dict[str, str] = {}  # key -> override applied by commands, in order
        self.compare = False  # also show the drafter alone and the target alone
        self.entropy = False  # show the per-drafted-token entropy table
        self.apply([])

    def apply(self, new: list[str]) -> None:
        """Recompose with `new` overrides on top of the current ones and rebuild the strategy and
        sampling; on any error nothing changes."""
        overrides = dict(self.overrides)
        for o in new:
            key = _key(o)
            if key == "model_pair" or key.startswith("model_pair."):
                raise ValueError("the pair is loaded once: restart the console with model_pair=... to change it")
            if "." not in key:  # a group choice (strategy=..., sampling=...) drops overrides inside it
                overrides = {k: v for k, v in overrides.items() if not k.startswith(key + ".")}
            overrides.pop(key, None)
            overrides[key] = o
        cfg = compose_config(self.start + list(overrides.values()))
        proposer, policy = instantiate.strategy(cfg.strategy, self.pair)
        sampling = instantiate.sampling(cfg.sampling)
        self._task(cfg, "check").samples()  # a dataset option that cannot work (chat without a template) fails now
        self.cfg, self.overrides, self.proposer, self.policy, self.sampling = cfg, overrides, proposer, policy, sampling

    def _task(self, cfg, text: str) -> PromptTask:
        node = {**OmegaConf.to_container(cfg.dataset, resolve=True), "text": text}
        task = instantiate.task(OmegaConf.create(node), self.pair.tokenizer)
        if not isinstance(task, PromptTask):
            raise ValueError("the console reads its prompts itself: it needs dataset=prompt")
        if cfg.max_new_tokens is not None:
            task.max_new_tokens = cfg.max_new_tokens
        return task

    def settings(self) -> str:
        s, task = self.cfg.strategy, self._task(self.cfg, "settings")
        params = " ".join(f"{k}={v}" for k, v in s.items() if k not in ("name", "proposer", "length")
                          and not OmegaConf.is_config(v))
        smp = self.sampling
        sampling = "greedy" if smp.greedy else f"temperature={smp.temperature} top_k={smp.top_k} top_p={smp.top_p}"
        onoff = {True: "on", False: "off"}
        return "\n".join([
            f"strategy: {s.get('name')} {params}".rstrip(),
            f"sampling: {sampling}",
            f"max_new_tokens: {task.max_new_tokens}",
            f"chat: {onoff.get(task.chat, task.chat)}" + (f" (system: {task.system!r})" if task.system else ""),
            f"compare: {onoff[self.compare]}, entropy: {onoff[self.entropy]}, seed: {self.cfg.seed}",
            f"pair: {self.cfg.model_pair.name} on {self.pair.device}",
            "overrides: " + (" ".join(self.overrides.values()) or "(none)"),
        ])

    # ---- commands -----------------------------------------------------------------------------

    def command(self, line: str) -> bool:
        """Run one `:` command; False to end the session."""
        words = WORD.findall(line[1:])
        if not words:
            raise ValueError("a command follows ':' (:help lists them)")
        name, *args = words
        if name in ("quit", "q", "exit"):
            return False
        if name in ("help", "h", "?"):
            self.printer.line(HELP)
        elif name == "strategy":
            if not args:
                names = sorted(p.stem for p in (Path(CONF_DIR) / "strategy").glob("*.yaml"))
                self.printer.line("strategies: " + " ".join(names))
                return True
            self.apply([f"strategy={args[0]}"])
            self.printer.line(self.settings())
        elif name == "set":
            if not args or not all("=" in a for a in args):
                raise ValueError("usage: :set KEY=VALUE ... (e.g. :set strategy.gamma=8)")
            self.apply(args)
            self.printer.line(self.settings())
        elif name == "sampling":
            if args == ["greedy"]:
                self.apply(["sampling=greedy"])
            elif args and all("=" in a for a in args):
                self.apply([f"sampling.{a}" for a in args])  # temperature 0 is greedy, > 0 samples
            else:
                raise ValueError("usage: :sampling greedy | :sampling temperature=T [top_k=K] [top_p=P]")
            self.printer.line(self.settings())
        elif name == "max":
            if len(args) != 1 or not args[0].isdigit():
                raise ValueError("usage: :max N (new tokens per prompt)")
            self.apply([f"max_new_tokens={args[0]}"])
            self.printer.line(self.settings())
        elif name == "chat":
            if len(args) != 1 or args[0] not in ("on", "off", "auto"):
                raise ValueError("usage: :chat on|off|auto")
            self.apply(["dataset.chat=" + {"on": "true", "off": "false", "auto": "auto"}[args[0]]])
            self.printer.line(self.settings())
        elif name in ("compare", "entropy"):
            if len(args) != 1 or args[0] not in SWITCHES:
                raise ValueError(f"usage: :{name} on|off")
            setattr(self, name, SWITCHES[args[0]])
            self.printer.line(self.settings())
        elif name == "settings":
            self.printer.line(self.settings())
        elif name == "reset":
            self.reset()
            self.printer.line(self.settings())
        else:
            raise ValueError(f"unknown command :{name} (:help lists the commands)")
        return True

    # ---- generation ---------------------------------------------------------------------------

    def _decode(self, text: str, compare: bool = False, max_new_tokens: int | None = None) -> dict[str, Generation]:
        """`text` decoded with the strategy ("speculative") and, with `compare`, by the drafter
        ("drafter", when the pair has one) and the target ("target") alone."""
        task = self._task(self.cfg, text)
        tok, device = self.pair.tokenizer, self.pair.device
        task.max_new_tokens = max_new_tokens or task.max_new_tokens
        lms = {"target": self.target, **(getattr(self.proposer, "cached_models", None) or {})}
        if compare and self.pair.specs.get("drafter") is not None:
            if self._drafter is None:
                self._drafter = cached_lm(self.pair.drafter, vocab_size=self.pair.vocab_size)
            lms["drafter alone"] = self._drafter
        prompt = fit_prompts(tok, task.samples(), task, lms, device)[0][0]  # cut to fit, as a run does
        stopper = Stopper(eos_ids(self.pair), task.stop, tok)

        def run(lm, proposer=None, policy=None) -> Generation:
            gen = torch.Generator(device=device).manual_seed(self.cfg.seed)  # same seed: same text each time
            if policy is not None:
                policy.start_sample(carry=bool(self.cfg.carry_length_state))
                proposer.records = self.entropy
            return generate(lm, prompt, task.max_new_tokens, self.sampling, stopper,
                            proposer, policy, gen, records=self.entropy and proposer is not None)

        out = {"speculative": run(self.target, self.proposer, self.policy)}
        if compare:
            if self._drafter is not None:
                out["drafter"] = run(self._drafter)
            out["target"] = run(self.target)
        return out

    def generate(self, text: str) -> dict[str, Generation]:
        """Decode `text` and print it: the strategy's generation with its drafts marked and, with
        :compare, the drafter's and the target's alone beside it. Returns the generations."""
        out = self._decode(text, compare=self.compare)
        tok, name = self.pair.tokenizer, self.cfg.strategy.get("name")
        task = self._task(self.cfg, text)
        if task.chat and (templated := task.samples()[0].prompt) != text:  # what the model was given
            self.printer.header("prompt (chat template)")
            self.printer.body(templated)
        if not self.compare:
            self.printer.header(name, legend=True)
            self.printer.body(show.spans(tok, out["speculative"]))
            self.printer.line(f"-- {show.stats(out['speculative'])}")
        else:
            columns = [(f"{mode} alone", show.decode(tok, out[mode].tokens), show.stats(out[mode]))
                       for mode in ("drafter", "target") if mode in out]
            columns.append((name, show.spans(tok, out["speculative"]), show.stats(out["speculative"], out["target"])))
            self.printer.side_by_side(columns)
        if self.entropy:
            self.printer.header(f"per drafted token: entropy in nats ({entropy_legend(out['speculative'], self.sampling)})")
            self.printer.body(show.entropy_table(tok, out["speculative"]))
        return out

    # ---- the loop -----------------------------------------------------------------------------

    def run(self, lines=None) -> None:
        """Read lines until :quit or the end of input: from `lines` (any iterable of strings, echoed
        to the output), else from the keyboard with readline history."""
        source = iter(lines) if lines is not None else _keyboard()
        for line in source:
            line = line.rstrip("\r\n")
            while line.endswith("\\"):  # a multi-line prompt
                line = line[:-1] + "\n" + next(source, "").rstrip("\r\n")
            if lines is not None:
                self.printer.line(f"> {line}")
            if not line.strip():
                continue
            try:
                if line.startswith(":"):
                    if not self.command(line):
                        return
                else:
                    self.generate(line)
            except KeyboardInterrupt:
                self.printer.line("interrupted")
            except Exception as err:  # noqa: BLE001 -- a bad command or prompt never ends the session
                self.printer.line(f"error: {type(err).__name__}: {err}")


def entropy_legend(gen: Generation, sampling) -> str:
    """What the entropy columns measure: the drafter's is the one its length rule read."""
    of = sorted({r["drafter_entropy_of"] for r in gen.records if r.get("drafter_entropy_of")})
    target = "softmax(logits / 1)" if sampling.greedy else "the sampling distribution p"
    return f"H drafter: {', '.join(of) or 'n/a'}, as the length rule read it; H target: shannon of {target}"


def _keyboard():
    try:
        import readline  # noqa: F401 -- arrow keys and history for input()
    except ImportError:
        pass
    while True:
        try:
            yield input("specexp> ")
        except EOFError:
            print()
            return
        except KeyboardInterrupt:
            print()


def main(argv: list[str] | None = None) -> None:
    overrides = sys.argv[1:] if argv is None else argv
    if any(a in ("-h", "--help") for a in overrides):
        print(__doc__.strip() + "\n\n" + HELP)
        return
    overrides = cli_overrides(list(overrides))  # as `specexp` reads them: prompt=TEXT literal, SPECEXP_OVERRIDES last
    print("specexp console: loading the pair ...", flush=True)
    transformers.utils.logging.disable_progress_bar()  # no "Loading weights" bars in the session
    try:
        console = Console(overrides)
    except Exception as err:  # noqa: BLE001 -- a bad starting override: one line, not a traceback
        sys.exit(f"specexp-console: {type(err).__name__}: {err}")
    console.printer.line(f"pair {console.cfg.model_pair.name} on {console.pair.device}; "
                         f"strategy {console.cfg.strategy.get('name')}; :help lists the commands, :quit leaves")
    console.run(None if sys.stdin.isatty() else sys.stdin)


if __name__ == "__main__":
    main()
