"""The ratio test of speculative sampling (specexp/core/verify.py) at its boundary: a draft the target
rules out (p(x) = 0, e.g. cut by top-k / top-p) is never accepted, not even when the uniform draw
is exactly 0.0 (torch.rand returns it about once in 2^24 draws), and the emitted tokens still
follow the target's distribution."""
from __future__ import annotations

import torch
from scipy import stats

from specexp.core.verify import accepts, verify_sampling


def test_zero_draw_never_accepts_a_ruled_out_draft():
    u = torch.tensor([0.0, 0.0, 0.0, 0.5])
    q_x = torch.tensor([0.3, 1.0, 0.2, 0.4])
    p_x = torch.tensor([0.0, 0.0, 0.2, 0.1])
    # p = 0: rejected at u = 0; p >= q: accepted at any u in [0, 1); u q < p otherwise
    assert accepts(u, q_x, p_x).tolist() == [False, False, True, False]
    assert accepts(torch.tensor([0.999999]), torch.tensor([0.5]), torch.tensor([0.5])).tolist() == [True]
    assert accepts(torch.tensor([0.25]), torch.tensor([0.8]), torch.tensor([0.2])).tolist() == [False]  # u = p/q


def _generator_before_a_zero_draw() -> torch.Generator:
    """A CPU generator whose next torch.rand draw is exactly 0.0 (found, not assumed: the first
    zero in a seeded stream, then the generator advanced to just before it)."""
    for seed in range(64):
        draws = torch.rand(1 << 22, generator=torch.Generator().manual_seed(seed))
        zeros = (draws == 0).nonzero().flatten()
        if len(zeros):
            g = torch.Generator().manual_seed(seed)
            torch.rand(int(zeros[0]), generator=g)
            return g
    raise AssertionError("no exact 0.0 in 64 x 2^22 draws")


def test_zero_draw_end_to_end_rejects_a_ruled_out_draft():
    """verify_sampling itself, with the real generator at the draw u = 0.0: the draft token has
    target probability 0, so it is rejected and the residual (the target's own tokens) is sampled."""
    g = _generator_before_a_zero_draw()
    assert float(torch.rand(1, generator=_copy(g))) == 0.0  # the draw verify_sampling will make
    p = torch.tensor([[0.5, 0.5, 0.0, 0.0], [0.25, 0.25, 0.25, 0.25]])  # token 2 ruled out (top-k)
    q = torch.tensor([[0.2, 0.2, 0.6, 0.0]])
    n, nxt = verify_sampling(torch.tensor([2]), q, p, g)
    assert n == 0 and nxt in (0, 1)


def _copy(g: torch.Generator) -> torch.Generator:
    c = torch.Generator()
    c.set_state(g.get_state())
    return c


def test_ruled_out_tokens_keep_the_target_distribution():
    """Many single-draft rounds with a drafter that puts most of its mass on tokens the target
    rules out: the emitted token follows p (chi-square), ruled-out tokens never appear, and each
    draft is accepted with probability min(1, p/q)."""
    p = torch.tensor([0.4, 0.3, 0.2, 0.1, 0.0, 0.0])
    q = torch.tensor([0.1, 0.1, 0.1, 0.3, 0.2, 0.2])  # token 3: p/q = 1/3
    g = torch.Generator().manual_seed(0)
    n_draws = 20000
    counts = torch.zeros(6)
    acc, seen = torch.zeros(6), torch.zeros(6)
    for _ in range(n_draws):
        x = int(torch.multinomial(q, 1, generator=g))
        n, nxt = verify_sampling(torch.tensor([x]), q[None], torch.stack([p, p]), g)
        tok = x if n == 1 else nxt
        counts[tok] += 1
        seen[x] += 1
        acc[x] += n
    assert counts[4] == 0 and counts[5] == 0 and acc[4] == 0 and acc[5] == 0
    assert stats.chisquare(counts[:4], (p[:4] * n_draws)).pvalue > 1e-3
    rate = acc[:4] / seen[:4]
    assert rate[:3].tolist() == [1.0, 1.0, 1.0]  # p >= q: always accepted
    assert abs(float(rate[3]) - 1 / 3) < 4 * (1 / 3 * 2 / 3 / float(seen[3])) ** 0.5  # binomial, 4 sd
