"""Watching one generation: the output text with each round's draft tokens marked.

Each round of the decoder (specexp/core/decode.py) contributes, in order:

    kind       what                                            terminal          plain text
    accepted   draft tokens the target kept                    green             as is
    rejected   draft tokens the target threw away              red, struck out   [-...-]
    target     the target's own token (correction or bonus)    bold cyan         {+...+}

Rejected drafts are shown where they were proposed but are not part of the output: deleting the
[-...-] spans and the {+ +} markers from the plain text gives exactly
`tokenizer.decode(tokens, skip_special_tokens=False)` of the generated tokens (the spans are
slices of that one string). Colours are used when the output is a terminal, plain markers
otherwise (a pipe, a file, the tests).
"""
from __future__ import annotations

import sys

from rich.console import Console
from rich.table import Table
from rich.text import Text

from specexp.core.decode import Generation

ACCEPTED, REJECTED, TARGET = "accepted", "rejected", "target"
MARKERS = {ACCEPTED: ("", ""), REJECTED: ("[-", "-]"), TARGET: ("{+", "+}")}  # plain text
STYLES = {ACCEPTED: "green", REJECTED: "red strike", TARGET: "bold cyan"}  # terminal (rich styles)


def decode(tokenizer, ids: list[int]) -> str:
    """Every token, special ones included, exactly as the tokenizer spells it."""
    return tokenizer.decode(ids, skip_special_tokens=False, clean_up_tokenization_spaces=False)


def spans(tokenizer, gen: Generation) -> list[tuple[str, str]]:
    """(kind, text) pieces of `gen` in order; adjacent pieces of one kind merged, empty ones dropped.
    The accepted and target pieces, joined, are `decode(tokenizer, gen.tokens)`."""
    text = decode(tokenizer, gen.tokens)
    out: list[tuple[str, str]] = []
    offset = 0  # characters of `text` already placed

    def add(kind: str, piece: str) -> None:
        if piece:
            if out and out[-1][0] == kind:
                out[-1] = (kind, out[-1][1] + piece)
            else:
                out.append((kind, piece))

    def upto(j: int) -> str:
        """The text from the last boundary to the end of token j (boundaries are where the decoded
        prefix ends; kept monotone, and the last one is the end of `text`)."""
        nonlocal offset
        end = len(text) if j == len(gen.tokens) else min(len(text), max(offset, len(decode(tokenizer, gen.tokens[:j]))))
        piece, offset = text[offset:end], end
        return piece

    pos = 0  # tokens of the output placed so far
    for n, m, rejected in zip(gen.accepted, gen.emitted, gen.rejected):
        a = min(n, m)  # accepted drafts kept (a stop string may cut inside them)
        add(ACCEPTED, upto(pos + a))
        if m > a:  # the target's own token was kept: first the drafts it replaced
            add(REJECTED, continuation(tokenizer, gen.tokens[:pos + a], rejected))
            add(TARGET, upto(pos + m))
        pos += m
    add(TARGET, upto(len(gen.tokens)))  # nothing left unless the rounds do not cover the tokens
    return out


def continuation(tokenizer, context: list[int], ids: list[int]) -> str:
    """The text `ids` add after `context` (a token's spelling depends on what precedes it)."""
    if not ids:
        return ""
    before, after = decode(tokenizer, context), decode(tokenizer, context + ids)
    return after[len(before):] if after.startswith(before) else decode(tokenizer, ids)


def plain(pieces: list[tuple[str, str]]) -> str:
    return "".join(MARKERS[k][0] + t + MARKERS[k][1] for k, t in pieces)


LEGEND = "accepted drafts as is, [-rejected drafts-], {+the target's own tokens+}"


def stats(gen: Generation, base: Generation | None = None) -> str:
    """One line: tokens, acceptance, mean accepted length, tokens/s; with `base` (the
    autoregressive decode of the same prompt), the speedup and whether the outputs are identical."""
    drafted, accepted, n = sum(gen.drafted), sum(gen.accepted), len(gen.tokens)
    parts = [f"{n} tokens"]
    if drafted:
        parts.append(f"{gen.target_forwards} target forwards, acceptance {accepted / drafted:.2f} "
                     f"({accepted}/{drafted} drafts), mean accepted length {n / gen.target_forwards:.2f}")
    if gen.wall_time > 0:
        parts.append(f"{n / gen.wall_time:.1f} tokens/s")
        if base is not None and base.wall_time > 0 and base.tokens:
            # the throughput ratio, as metrics.json's speedup; one sample: no interval
            ratio = (n / gen.wall_time) / (len(base.tokens) / base.wall_time)
            parts.append(f"speedup (throughput ratio, one sample, no CI) {ratio:.2f}x over autoregressive")
    if base is not None:
        parts.append("output identical" if base.tokens == gen.tokens else "output differs")
    return ", ".join(parts)


def entropy_table(tokenizer, gen: Generation) -> str:
    """One line per drafted token (needs `gen.records`, i.e. generate(records=True)): round,
    position in the draft, the token, the drafter's and the target's entropy (nats) there, the
    drafter's top probability ("-" where the proposer has none), and whether the target kept it."""
    if not gen.records:
        return "(no per-token records: this strategy drafts nothing or records no entropy)"
    drafted, start = [], 0  # per round: the drafted token ids (None: accepted, but cut by a stop)
    for n, m, rejected, k in zip(gen.accepted, gen.emitted, gen.rejected, gen.drafted):
        kept = gen.tokens[start:start + min(n, m)]
        drafted.append(kept + (rejected if m > n else [None] * (k - len(kept))))
        start += m
    rows = [("round", "pos", "token", "H drafter", "H target", "p top", "kept")]
    for r in gen.records:
        tok = drafted[r["round"]][r["position"]]
        text = "(after stop)" if tok is None else repr(decode(tokenizer, [tok]))
        num = [("-" if r.get(key) is None else f"{r[key]:.3f}")  # model-free drafters have no drafter side
               for key in ("drafter_entropy", "target_entropy", "drafter_top_prob")]
        rows.append((str(r["round"]), str(r["position"]), text, *num, "yes" if r["accepted"] else "no"))
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    return "\n".join("  ".join(c.ljust(w) if i == 2 else c.rjust(w) for i, (c, w) in enumerate(zip(row, widths)))
                     for row in rows)


class Printer:
    """Writes headers, texts and marked generations to `out`: rich colours on a terminal, plain
    text with `== title ==` headers and the markers otherwise."""

    def __init__(self, out=None, color: bool | None = None):
        self.out = out or sys.stdout
        self.color = (hasattr(self.out, "isatty") and self.out.isatty()) if color is None else color
        self.rich = None
        if self.color:
            self.rich = Console(file=self.out, force_terminal=True, highlight=False, markup=False,
                                soft_wrap=True, emoji=False)

    def _text(self, body):
        """A plain string, or a rich Text: `body` is a string or a list of (kind, text) spans."""
        if isinstance(body, str):
            return body
        if self.rich is None:
            return plain(body)
        t = Text()
        for kind, piece in body:  # a rejected line break shows as ↵ (struck out, it would be invisible)
            t.append(piece.replace("\n", "↵") if kind == REJECTED else piece, style=STYLES[kind])
        return t

    def line(self, s: str = "") -> None:
        if self.rich is None:
            self.out.write(s + "\n")
        else:
            self.rich.print(s, style="dim")

    def header(self, title: str, legend: bool = False) -> None:
        """A section title; with `legend`, what the marks of a marked generation mean."""
        if self.rich is None:
            self.out.write(f"== {title}: {LEGEND} ==\n" if legend else f"== {title} ==\n")
        else:
            self.rich.rule(title, style="dim")
            if legend:
                self.rich.print(self.legend())

    def body(self, body) -> None:
        """A generation: a string, or the (kind, text) spans of `spans`."""
        if self.rich is None:
            self.out.write(self._text(body) + "\n")
        else:
            self.rich.print(self._text(body))

    def legend(self):
        """LEGEND, or on a terminal the same words in the colours they explain."""
        if self.rich is None:
            return LEGEND
        words = {ACCEPTED: "accepted drafts", REJECTED: "rejected drafts", TARGET: "the target's own tokens"}
        return Text(", ").join(Text(w, style=STYLES[kind]) for kind, w in words.items())

    def side_by_side(self, columns: list[tuple[str, object, str]]) -> None:
        """(title, body, stats line) per column: a table on a terminal, one block after another otherwise."""
        if self.rich is None:
            for title, body, note in columns:
                self.header(title, legend=not isinstance(body, str))
                self.body(body)
                self.line(f"-- {note}")
            return
        table = Table(show_lines=True, expand=True)
        for title, body, note in columns:
            legend = [self.legend(), "\n"] if not isinstance(body, str) else []
            table.add_column(Text.assemble(title, "\n", *legend, (note, "dim")), ratio=1, overflow="fold")
        table.add_row(*(self._text(body) for _, body, _ in columns))
        self.rich.print(table)


def show_run(printer: Printer, tokenizer, prompt: str, gen: Generation, base: Generation | None,
             strategy: str, entropy: bool = False) -> None:
    """What `specexp prompt=...` prints: the prompt, the generation with its drafts marked and its
    numbers, then (with the baseline) the autoregressive text."""
    printer.header("prompt")
    printer.body(prompt)
    printer.header(strategy, legend=True)
    printer.body(spans(tokenizer, gen))
    printer.line(f"-- {stats(gen, base)}")
    if entropy:
        printer.header("per drafted token: entropy in nats")
        printer.body(entropy_table(tokenizer, gen))
    if base is not None:
        same = "identical" if base.tokens == gen.tokens else "differs"
        printer.header(f"autoregressive (the target alone): {same}")
        printer.body(decode(tokenizer, base.tokens))
        printer.line(f"-- {stats(base)}")
