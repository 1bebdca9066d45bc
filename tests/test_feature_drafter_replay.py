"""The feature drafter's held-out measures face what decoding faces: a teacher-forced replay of a
decode's own text through the drafter, with the target's features, drafts at every round's
position exactly what the decode drafted first (so the build's reply-position agreement is the
first draft's acceptance rate); the build holds out whole replies, none of which reaches a
training window, and measures them at their reply positions."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from conftest import ModelsByRole, random_model
from test_eagle import chat_target, quick_train

from specexp.builds.train_feature_drafter import (build_feature_drafter, heldout_split, leak_check,
                                                  reply_agreement, shifted, training_windows)
from specexp.core.decode import generate
from specexp.core.stopping import Stopper
from specexp.length import Fixed
from specexp.models.cached_lm import CachedLM
from specexp.models.sampling import Sampling
from specexp.proposers import DraftModel, FeatureDrafter

TIE = 1e-4  # top-2 logits closer than this: the argmax could flip across CPUs, the position is skipped


@pytest.fixture(scope="module")
def tiny():
    """A random Llama target with a sharpened head and a feature drafter trained on it for seconds."""
    target = random_model("llama", vocab=64, hidden=64, layers=2, seed=0)
    target.lm_head.weight.data *= 8
    drafter, _, _ = quick_train(target)
    return target, drafter


def decode_first_drafts(target, drafter, prompt: torch.Tensor, new_tokens: int, gamma: int):
    """Greedy decoding with the feature drafter at Fixed(gamma): (the text, prompt + output, and
    {position of the round's last token: the round's first draft} for every round that drafted)."""
    proposer = DraftModel().bind(ModelsByRole(target, drafter))
    assert isinstance(proposer, FeatureDrafter)
    first, propose = {}, proposer.propose

    def watched(tokens, *args):  # the real propose; what it drafted first is noted
        d = propose(tokens, *args)
        if len(d.tokens):
            first[tokens.shape[0] - 1] = int(d.tokens[0])
        return d

    proposer.propose = watched
    g = generate(CachedLM(target), prompt, new_tokens, Sampling(), Stopper(), proposer, Fixed(gamma))
    return torch.cat([prompt, torch.tensor(g.tokens)]), first


@torch.inference_mode()
def replay(target, drafter, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Teacher-forced: the target reads `x` once (its features f_p, float32), the drafter reads
    [f_{p-1} ; e(x_p)] at every position; (the drafter's logits [n, V], the features [n, H])."""
    hidden = target.get_decoder()(input_ids=x[None]).last_hidden_state[0]
    pred, _ = drafter(shifted(hidden[None]), target.get_input_embeddings()(x[None]))
    return target.get_output_embeddings()(pred[0]).float(), hidden


def test_replay_drafts_what_the_decode_drafted_first(tiny):
    """At every round's position t (the last token before the draft) the replay's argmax at t is
    the decode's first draft: the decode path hands the drafter the target's features of every
    token it accepted, nothing else. Rounds start at reply positions only (t >= prompt length)."""
    target, drafter = tiny
    compared = skipped = accepted = 0
    for seed in range(3):
        prompt = torch.randint(0, 64, (6 + 2 * seed,), generator=torch.Generator().manual_seed(seed))
        x, first = decode_first_drafts(target, drafter, prompt, 40, 4)
        assert first and min(first) == len(prompt)  # the first drafting round: right after the prefill's token
        logits, _ = replay(target, drafter, x)
        for t, draft in sorted(first.items()):
            top2 = logits[t].topk(2).values
            if float(top2[0] - top2[1]) < TIE:
                skipped += 1
                continue
            assert int(logits[t].argmax()) == draft, (seed, t)
            compared += 1
            accepted += t + 1 < len(x) and draft == int(x[t + 1])
    assert compared >= 20 and skipped <= compared // 10, (compared, skipped)
    assert 0 < accepted < compared  # some first drafts accepted, some not: both kinds were compared


def test_reply_agreement_counts_reply_and_prompt_positions_apart(tiny):
    """reply_agreement on a decode's own text (the target's greedy reply): positions p >= P are
    "reply" (each a round start's first draft), p < P "prompt"; the agreement is the replay's."""
    target, drafter = tiny
    prompt = torch.randint(0, 64, (9,), generator=torch.Generator().manual_seed(7))
    x, _ = decode_first_drafts(target, drafter, prompt, 30, 4)
    logits, hidden = replay(target, drafter, x)
    top1 = target.get_output_embeddings()(hidden).argmax(-1)
    read = {"ids": x, "prompt_tokens": len(prompt), "top_ids": top1[:, None], "hidden": hidden, "source": "code"}
    out = reply_agreement(drafter, target.get_input_embeddings(), target.get_output_embeddings(), [read])
    ok = (logits.argmax(-1) == top1).long()
    assert out["reply"]["positions"] == len(x) - len(prompt) and out["prompt"]["positions"] == len(prompt)
    assert out["reply"]["agreement"] == round(int(ok[len(prompt):].sum()) / (len(x) - len(prompt)), 4)
    assert out["prompt"]["agreement"] == round(int(ok[: len(prompt)].sum()) / len(prompt), 4)
    assert out["reply"]["by_source"] == {"code": {"agreement": out["reply"]["agreement"],
                                                  "positions": out["reply"]["positions"]}}


# --------------------------------------------------------------------------------- the split
def fake_reads(n: int) -> list[dict]:
    """`n` replies whose token ids tell which reply they are (reply i: ids 1000 i + position)."""
    out = []
    for i in range(n):
        length = 5 + i % 7
        ids = 1000 * i + torch.arange(length)
        out.append({"ids": ids, "prompt_tokens": 3, "top_ids": ids[:, None].int().repeat(1, 2),
                    "top_probs": torch.full((length, 2), 0.5).half(), "hidden": torch.zeros(length, 4).half(),
                    "index": i, "source": "gsm8k"})
    return out


def test_heldout_replies_reach_no_training_window():
    """Whole replies are held out before windowing: no window position comes from a held-out reply
    (by the ids, which name their reply), `reply_of` names each position's reply, and the leak
    check records it."""
    reads = fake_reads(40)
    corpus = {"windows": torch.arange(5 * 8).view(5, 8) + 10 ** 6, "ids": torch.zeros(5, 8, 2, dtype=torch.int),
              "probs": torch.zeros(5, 8, 2).half(), "hidden": torch.zeros(5, 8, 4).half()}
    p = {"heldout": 0.1, "seq_len": 8, "seed": 0}
    data, held, train = training_windows({"replies": reads, "corpus": corpus}, p)
    assert len(held) == 4 and len(train) == 36
    assert {r["index"] for r in held}.isdisjoint(r["index"] for r in train)
    from_replies = data["reply_of"] >= 0
    assert torch.equal(data["windows"][from_replies] // 1000, data["reply_of"][from_replies])
    assert (data["windows"][~from_replies] >= 10 ** 6).all()  # the rest: the corpus windows
    in_windows = set((data["windows"][from_replies] // 1000).tolist())
    assert in_windows.isdisjoint(r["index"] for r in held)
    assert len(in_windows) >= 30  # most training replies are in (a tail that fills no window is dropped)
    assert leak_check(held, train, data["reply_of"]) == {
        "heldout_replies": 4, "training_replies": 36, "heldout_replies_in_training_windows": 0,
        "heldout_reply_texts_also_in_training": 0}
    held_rows, rows, _, _, _ = heldout_split(data, 0.2, 8, 2)  # held-out windows: corpus ones only
    assert len(held_rows) == 1 and (data["reply_of"][held_rows] < 0).all()
    assert sorted(held_rows.tolist() + rows.tolist()) == list(range(len(data["windows"])))


def test_leak_check_catches_a_shared_reply():
    reads = fake_reads(6)
    data, held, train = training_windows({"replies": reads, "corpus": None}, {"heldout": 0.2, "seq_len": 4,
                                                                              "seed": 1})
    with pytest.raises(RuntimeError, match="leaked"):  # a held-out reply's positions in a training window
        leak_check(held, train, torch.cat([data["reply_of"].flatten(), torch.tensor([held[0]["index"]])]))
    twin = {**held[0], "ids": torch.cat([torch.tensor([7, 7, 7]), held[0]["ids"][3:]]), "index": 99}
    assert leak_check(held, [*train, twin], data["reply_of"])["heldout_reply_texts_also_in_training"] == 1


def test_build_records_reply_positions_and_the_leak_check(random_pair_dir, tmp_path):
    """A build on the target's replies to stdlib stubs: build.json's held-out measures are on whole
    held-out replies, reply and prompt positions apart, with the leak check."""
    _, _, spec = chat_target(random_pair_dir, tmp_path)
    out = Path(build_feature_drafter(spec, str(tmp_path / "eagle"), replies=12, reply_mix={"code": 1},
                                     reply_tokens=8, reply_batch=6, seq_len=16, topk=4, subset=64, epochs=1.0,
                                     batch=4, heldout=0.25, progress=False))
    info = json.loads((out / "build.json").read_text())
    leaks = info["heldout_leak_check"]
    assert leaks["heldout_replies"] == 3 and leaks["training_replies"] == 9
    assert leaks["heldout_replies_in_training_windows"] == 0
    reply, prompt = info["heldout_reply_top1_agreement"], info["heldout_prompt_top1_agreement"]
    assert 0 < reply["positions"] <= 3 * 8 and prompt["positions"] > 0
    assert set(reply) == {"untrained", "trained", "positions", "by_source"} and set(reply["by_source"]) == {"code"}
    chain = info["heldout_reply_chain_acceptance"]
    assert chain["gamma"] == 4 and 0 < chain["rounds"] <= reply["positions"]  # from reply positions only
    assert info["windows"]["heldout"] == 0 and "heldout_corpus_top1_agreement" not in info  # no corpus text
