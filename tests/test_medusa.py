"""Medusa heads (specexp/proposers/medusa.py) and their build (specexp/builds/train_medusa_heads.py):
greedy output equals the target's own with untrained and with trained heads on the trained tiny
pair, training raises the heads' held-out agreement, the drafts read the right position, and
the heads reach a run as a strategy, a pair's drafter and a checkpoint folder."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from conftest import ModelsByRole, compose, random_model

from specexp.builds.train_medusa_heads import build_medusa_heads, heldout_measures, init_heads
from specexp.core.decode import generate
from specexp.core.stopping import Stopper
from specexp.experiment import instantiate
from specexp.length import Fixed
from specexp.models.cached_lm import CachedLM
from specexp.models.loading import ModelSpec, load_model
from specexp.models.sampling import Sampling
from specexp.proposers import DraftModel, Medusa
from specexp.proposers.medusa import MedusaHeads

CHAT = ("{% for m in messages %}<|{{ m['role'] }}|>{{ m['content'] }}\n{% endfor %}"
        "{% if add_generation_prompt %}<|assistant|>{% endif %}")
GREEDY = Sampling()


@pytest.fixture(scope="module")
def tiny(trained_pair_dir, tmp_path_factory):
    """The trained tiny target (with a chat template, for its replies), Medusa heads built for it in
    seconds on its replies to stdlib stubs, and three other stubs as chat prompts."""
    from transformers import AutoTokenizer

    root = tmp_path_factory.mktemp("medusa")
    tok = AutoTokenizer.from_pretrained(trained_pair_dir / "target")
    tok.chat_template = CHAT
    target = load_model(ModelSpec(name=str(trained_pair_dir / "target")), torch.float32, torch.device("cpu"))
    target.save_pretrained(root / "target")
    tok.save_pretrained(root / "target")
    heads = build_medusa_heads(ModelSpec(name=str(root / "target")), str(root / "heads"), replies=24,
                               reply_mix={"code": 1}, reply_tokens=40, reply_batch=8, topk=4, subset=512, epochs=8.0,
                               batch=128, lr=3e-3, heldout=0.25, progress=False)
    from specexp.builds.corpus import code_stubs
    from specexp.builds.target_replies import chat_ids

    stubs = [s[:300] for s in code_stubs()[-3:]]  # requests of the kind the heads learnt on, none of the 24 built on
    prompts = [torch.tensor(ids) for ids in chat_ids(tok, stubs)]
    return target, Path(heads), prompts


def decode(target, proposer, prompts, n=32, sampling=GREEDY):
    outs = []
    for i, p in enumerate(prompts):
        outs.append(generate(CachedLM(target), p, n, sampling, Stopper(), proposer, Fixed(4),
                             torch.Generator().manual_seed(i)))
    return outs


def autoregressive(target, prompts, n=32):
    return [generate(CachedLM(target), p, n, GREEDY, Stopper()).tokens for p in prompts]


def test_greedy_output_equals_the_targets_with_untrained_heads(tiny):
    target, _, prompts = tiny
    medusa = Medusa().bind(ModelsByRole(target))
    outs = decode(target, medusa, prompts)
    assert [o.tokens for o in outs] == autoregressive(target, prompts)
    assert sum(sum(o.drafted) for o in outs) > 0
    assert outs[0].drafted[0] == 0  # the first round is the target's read of the prompt: nothing to draft from


def test_greedy_output_equals_the_targets_with_trained_heads(tiny):
    target, heads, prompts = tiny
    medusa = Medusa(checkpoint=str(heads)).bind(ModelsByRole(target))
    outs = decode(target, medusa, prompts)
    assert [o.tokens for o in outs] == autoregressive(target, prompts)
    drafted, accepted = sum(sum(o.drafted) for o in outs), sum(sum(o.accepted) for o in outs)
    assert drafted > 0 and accepted > 0
    assert sum(o.drafter_forwards for o in outs) == sum(sum(1 for k in o.drafted if k) for o in outs)


def test_training_raises_held_out_agreement_and_lowers_the_loss(tiny):
    _, heads, _ = tiny
    info = json.loads((heads / "build.json").read_text())
    agree = info["heldout_top1_agreement_per_head"]
    assert min(agree["positions"]) >= 50
    assert agree["trained"][0] > agree["untrained"][0] + 0.2  # head 1: the first draft's acceptance
    chain = info["heldout_chain_acceptance"]
    assert chain["trained"]["mean_accepted_length"] > chain["untrained"]["mean_accepted_length"] + 0.3
    curve = info["training_curve"]
    assert curve[-1]["loss"] < 0.8 * curve[0]["loss"]


def test_trained_heads_draft_what_the_target_writes_two_ahead(tiny):
    """Alignment: head 0 on h_t (the state at x_t) predicts x_{t+2}, not x_{t+1}. Teacher-forced on
    the target's own greedy continuation, trained head 0 agrees with x_{t+2} far more often than
    with x_{t+1}."""
    target, heads, prompts = tiny
    loaded = MedusaHeads.from_pretrained(heads)
    lm_head = target.get_output_embeddings()
    two = one = n = 0
    for p, out in zip(prompts, autoregressive(target, prompts, 40)):
        x = torch.cat([p, torch.tensor(out)])
        with torch.no_grad():
            h = target.get_decoder()(input_ids=x[None]).last_hidden_state[0]
            guess = loaded.head_logits(0, h, lm_head).argmax(-1)
        pos = torch.arange(len(p) - 1, len(x) - 2)
        two += int((guess[pos] == x[pos + 2]).sum())
        one += int((guess[pos] == x[pos + 1]).sum())
        n += len(pos)
    assert two > one + 0.2 * n


def test_head_topk_holds_each_heads_candidates(tiny):
    target, heads, prompts = tiny
    medusa = Medusa(checkpoint=str(heads), topk=5).bind(ModelsByRole(target))
    assert medusa.head_topk()[0].shape == (0, 5)  # nothing read yet
    medusa.reset(prompts[0])
    cached = CachedLM(target)
    cached.keep_hidden = True
    cached.forward(prompts[0])
    medusa.observe_features(cached.hidden)
    ids, logp = medusa.head_topk()
    assert ids.shape == logp.shape == (4, 5)
    assert bool((logp[:, :-1] >= logp[:, 1:]).all())  # best first
    draft = medusa.propose(torch.cat([prompts[0], torch.tensor([1])]), 4, Fixed(4), GREEDY, None)
    assert draft.tokens.tolist() == ids[:, 0].tolist()  # the chain is every head's top-1


def test_a_heads_folder_as_the_pairs_drafter_hands_over_to_medusa(tiny):
    target, heads, prompts = tiny
    drafter = MedusaHeads.from_pretrained(heads)
    proposer = DraftModel().bind(ModelsByRole(target, drafter))
    assert isinstance(proposer, Medusa) and proposer.heads is drafter
    outs = decode(target, proposer, prompts[:1])
    assert outs[0].tokens == autoregressive(target, prompts[:1])[0]


def test_strategy_file_builds_medusa():
    cfg = compose(["strategy=medusa", "strategy.gamma=3", "strategy.num_heads=3"]).strategy
    proposer, policy = instantiate.strategy_objects(cfg)
    assert isinstance(proposer, Medusa) and proposer.num_heads == 3 and proposer.checkpoint is None
    assert policy.gamma == 3


def test_sampling_keeps_the_targets_first_tokens_distribution():
    """Under sampling each draft is drawn from its head's distribution and verified against the
    target's: the first two emitted tokens follow the target's exact joint (chi-square)."""
    from conftest import exact_joint, pooled_chisquare

    target = random_model("llama", 16, 32, 1, seed=0)
    with torch.no_grad():
        target.lm_head.weight.mul_(3)
    medusa = Medusa(num_heads=2).bind(ModelsByRole(target))
    sampling = Sampling(temperature=1.0)
    prompt = torch.tensor([3, 5, 7])
    exact = exact_joint(target, prompt, sampling, 16)
    counts = torch.zeros(16, 16)
    accepted = 0
    for i in range(1500):
        out = generate(CachedLM(target), prompt, 3, sampling, Stopper(), medusa, Fixed(2),
                       torch.Generator().manual_seed(i))
        counts[out.tokens[0], out.tokens[1]] += 1
        accepted += sum(out.accepted)
    assert accepted > 0
    assert pooled_chisquare(counts, exact, 1500) > 1e-3


def test_medusa_refuses_an_encoder_decoder_target():
    from transformers import T5Config, T5ForConditionalGeneration

    t5 = T5ForConditionalGeneration(T5Config(vocab_size=8, d_model=16, d_kv=4, d_ff=32, num_layers=1, num_heads=2,
                                             decoder_start_token_id=0, pad_token_id=0))
    with pytest.raises(ValueError, match="decoder-only"):
        Medusa().bind(ModelsByRole(t5))


def test_heads_of_another_size_are_refused(tiny, tmp_path):
    target, _, _ = tiny
    other = init_heads(random_model("llama", 64, 32, 1, seed=0), 2, 1)
    other.save_pretrained(tmp_path / "other")
    with pytest.raises(ValueError, match="hidden states of size 32"):
        Medusa(checkpoint=str(tmp_path / "other")).bind(ModelsByRole(target))


def test_build_is_reused_with_the_same_parameters(tiny, trained_pair_dir):
    _, heads, _ = tiny
    info = json.loads((heads / "build.json").read_text())
    before = (heads / "build.json").stat().st_mtime_ns
    kw = {k: info["params"][k] for k in ("num_heads", "num_layers", "replies", "reply_mix", "reply_tokens",
                                         "reply_batch", "topk", "subset", "epochs", "batch", "lr", "heldout")}
    again = build_medusa_heads(ModelSpec(name=str(heads.parent / "target")), str(heads), progress=False, **kw)
    assert again == str(heads.resolve()) and (heads / "build.json").stat().st_mtime_ns == before


def test_measures_count_untrained_heads_as_repeating_the_next_token():
    """Untrained heads are the identity before the target's head: each predicts the target's argmax at
    p again, and is scored against the argmax at p+1+i (head i's label), counted by hand here."""
    target = random_model("llama", 16, 32, 1, seed=0)
    heads = init_heads(target, 3, 1)
    lm_head = target.get_output_embeddings()
    h = torch.randn(12, 32)
    top = lm_head(h).argmax(-1)
    seq = {"hidden": h, "top_ids": top[:, None].expand(12, 2).contiguous(), "start": 0}
    got = heldout_measures(heads, lm_head, [seq])
    for i, n in enumerate((11, 10, 9)):  # head i at p = 0..10 has a label while p + 1 + i < 12
        hits = sum(int(top[p] == top[p + 1 + i]) for p in range(n))
        assert got["top1_agreement_per_head"][i] == round(hits / n, 4)
    assert got["positions_per_head"] == [11, 10, 9]


# ============================================================ Medusa's token tree ================
# (specexp/proposers/medusa_tree.py: the heads' top-k combined into one tree, verified in one forward)

def test_a_tree_forward_keeps_each_paths_hidden_states():
    """With keep_hidden, a tree forward's hidden state at each node is the one its path gives as a
    chain (what Medusa's next round reads after the loop gathers the accepted path)."""
    target = random_model("llama", 40, 32, 2, seed=1)
    prompt, nodes, parents = torch.tensor([3, 7, 11, 2]), [5, 9, 6, 8, 4], [-1, -1, 0, 0, 1]
    lm = CachedLM(target)
    lm.keep_hidden = True
    lm.start(prompt)
    lm.forward(prompt[:-1])
    lm.forward(torch.tensor([int(prompt[-1])] + nodes), keep=len(nodes) + 1, tree=torch.tensor(parents))
    tree_hidden = lm.hidden[1:]
    for i in range(len(nodes)):
        path, j = [], i
        while j >= 0:
            path.insert(0, nodes[j])
            j = parents[j]
        chain = CachedLM(target)
        chain.keep_hidden = True
        chain.start(prompt)
        chain.forward(torch.cat([prompt, torch.tensor(path)]))
        torch.testing.assert_close(tree_hidden[i], chain.hidden[-1], atol=1e-4, rtol=1e-4)


def test_medusa_tree_greedy_output_equals_the_targets(tiny):
    from specexp.proposers.medusa_tree import MedusaTree

    target, heads, prompts = tiny
    tree = MedusaTree(checkpoint=str(heads), topk=4, max_nodes=12).bind(ModelsByRole(target))
    outs = decode(target, tree, prompts)
    assert [o.tokens for o in outs] == autoregressive(target, prompts)
    assert max(max(o.drafted) for o in outs) > 4  # trees: more nodes than heads
    assert sum(sum(o.accepted) for o in outs) > 0
    assert all(max(o.drafted) <= 12 for o in outs)
    counts = tree.sizer.acceptance.counts  # the last sample's rounds taught the estimates (reset per sample)
    assert counts[0].sum() > 0 and counts[0, 0] > counts[0, 1]  # trained heads: rank 0 the likeliest
    assert all(ranks is None or all(0 <= r < 4 for r in ranks) for o in outs for ranks in o.tree_ranks)


def test_medusa_tree_sized_for_a_prohibitive_verification_drafts_nothing(tiny):
    from specexp.proposers.medusa_tree import MedusaTree

    target, heads, prompts = tiny
    widths = [1, 2, 4, 8, 13]
    tree = MedusaTree(checkpoint=str(heads), topk=4, max_nodes=12, size="machine",
                      verify_cost=[1 + 3.0 * (w - 1) for w in widths], draft_cost=0.0).bind(ModelsByRole(target))
    outs = decode(target, tree, prompts[:1])
    assert outs[0].tokens == autoregressive(target, prompts[:1])[0]
    assert max(outs[0].drafted) == 0
    assert tree.measured()["replay"]["proposer.cost_widths"] == widths
    measured = MedusaTree(checkpoint=str(heads), topk=4, max_nodes=12, size="machine",
                          verify_cost=[1.0] * 5).bind(ModelsByRole(target)).measured()
    assert measured["sources"]["draft_cost"] == "measured" and measured["replay"]["proposer.draft_cost"] > 0


def test_medusa_tree_sampling_keeps_the_targets_distribution(monkeypatch):
    from conftest import check_pairs_follow, exact_joint

    from specexp.proposers.medusa_tree import MedusaTree

    target = random_model("llama", 6, 32, 1, seed=0)
    with torch.no_grad():
        target.lm_head.weight.mul_(4)
    sampling, prompt = Sampling(temperature=1.0, top_k=4), torch.tensor([1, 2, 3])
    tree = MedusaTree(num_heads=2, topk=3, max_nodes=5).bind(ModelsByRole(target))
    lm, exact = CachedLM(target), exact_joint(target, prompt, sampling, 6)

    def emit(i):
        # the first round reads the prompt (no draft); the second token is verified through a tree
        out = generate(lm, prompt, 3, sampling, Stopper(), tree, Fixed(2), torch.Generator().manual_seed(i))
        return tuple(out.tokens[:2]), sum(out.accepted)

    check_pairs_follow(exact, emit, monkeypatch)


def test_strategy_file_builds_a_medusa_tree():
    from specexp.proposers.medusa_tree import MedusaTree

    cfg = compose(["strategy=medusa_tree", "strategy.proposer.max_nodes=6"]).strategy
    proposer, policy = instantiate.strategy_objects(cfg)
    assert isinstance(proposer, MedusaTree) and proposer.sizer.max_nodes == 6 and proposer.topk == 10
    assert policy.gamma == 4


def test_after_a_tree_round_the_heads_read_the_accepted_paths_last_state(tiny):
    """The decode loop gathers the tree's hidden states like its logits: at every round Medusa's
    h_t is the target's state at the last token it kept (what a chain forward over the text gives),
    not a rejected sibling's. Drafting stays lossless either way, so only this test sees it."""
    from specexp.proposers.medusa_tree import MedusaTree

    target, heads, prompts = tiny
    checked = []

    class Checked(MedusaTree):
        def propose(self, tokens, max_len, policy, sampling, generator):
            if self.hidden is not None:  # h_t: the state at tokens[-2], whose LM head gave tokens[-1]
                lm = CachedLM(target)
                lm.keep_hidden = True
                lm.start(tokens[:-1])
                lm.forward(tokens[:-1])
                torch.testing.assert_close(self.hidden, lm.hidden[-1], atol=1e-4, rtol=1e-4)
                checked.append(tokens.shape[0])
            return super().propose(tokens, max_len, policy, sampling, generator)

    tree = Checked(checkpoint=str(heads), topk=4, max_nodes=12).bind(ModelsByRole(target))
    outs = decode(target, tree, prompts[:2], n=24)
    assert len(checked) >= 10 and sum(sum(o.accepted) for o in outs) > 0
    assert any(n > a + 1 for o in outs for n, a in zip(o.drafted, o.accepted))  # rejected siblings were fed
