"""Dated record (2026-12-02) of the drafter-input ablation in 2026-12-02-eagle-inputs-ablation.json:
how its numbers were produced, kept to be read and rerun, not maintained as a tool.

    python docs/results/bench/2026-12-02-eagle-inputs-ablation.py [base,fused,prev] [epochs]

Needs the default feature-drafter build's cached target reads (`specexp-eagle` leaves them next to
its folder as .smollm2-135m-eagle-teacher-<key>.pt) and the SmolLM2 GGUF (`specexp-fetch`)."""
import glob
import json
import os
import sys
import time
from pathlib import Path

import torch

from specexp import eagle as E
from specexp.lm import cache_arg, cache_of
from specexp.models import ModelSpec, load_model, resolve_source
from specexp.proposers.eagle import FeatureLM

torch.set_num_threads(2)
ARMS = sys.argv[1].split(",") if len(sys.argv) > 1 else ["base", "fused", "prev"]
EPOCHS = float(sys.argv[2]) if len(sys.argv) > 2 else 4.0
LOW, MID, H = 3, 16, 576  # hidden_states indices fused (outputs of layers 2 and 15 of 30)
CACHE = Path(os.environ.get("SPECEXP_CACHE", Path.home() / ".cache/specexp"))
data = torch.load(sorted(glob.glob(str(CACHE / ".smollm2-135m-eagle-teacher-*.pt")), key=os.path.getsize)[-1])
spec = resolve_source(ModelSpec(name="HuggingFaceTB/SmolLM2-135M-Instruct",
                                local=str(CACHE / "smollm2/SmolLM2-135M-Instruct.Q4_1.gguf")))
target = load_model(spec, torch.float32, torch.device("cpu"))
embed, head = target.get_input_embeddings(), target.get_output_embeddings()
head_w = head.weight.detach()
for q in (*embed.parameters(), *head.parameters()):
    q.requires_grad_(False)

# 1. Re-read every window teacher-forced: the last hidden state and two intermediate layers.
layers = {"last": [], LOW: [], MID: []}
with torch.inference_mode():
    for i in range(0, len(data["windows"]), 8):
        out = target.model(input_ids=data["windows"][i:i + 8], output_hidden_states=True)
        layers["last"].append(out.last_hidden_state.half())
        for k in (LOW, MID):
            layers[k].append(out.hidden_states[k].half())
layers = {k: torch.cat(v) for k, v in layers.items()}
data["hidden"] = layers["last"]
rms = lambda x: x.float() * torch.rsqrt(x.float().pow(2).mean(-1, keepdim=True) + 1e-6)  # noqa: E731
multi = torch.cat([rms(layers[LOW]), rms(layers[MID]), layers["last"].float()], -1).half()

# 2. The build's split and subset (specexp.eagle._build).
held, rows, _, _, subset = E.heldout_split(data, 0.05, 2048, head_w.shape[0])
p = dict(lr=3e-3, epochs=EPOCHS, batch=8, unroll=2, feature_weight=0.1, token_weight=1.0, seed=0)


class Variant(torch.nn.Module):
    """The default drafter with a different input: `fuse` maps the fused layers to H (fused arm);
    `prev` widens fc to read e(x_{p-1}) as well (prev arm). Both start as the default path."""

    def __init__(self, d, arm):
        super().__init__()
        self.d, self.arm, self.config = d, arm, d.config
        self.fc = torch.nn.Linear((3 if arm == "prev" else 2) * H, H)
        with torch.no_grad():
            self.fc.weight.zero_()
            self.fc.weight[:, :2 * H] = d.fc.weight
            self.fc.bias.copy_(d.fc.bias)
        self.fuse = torch.nn.Linear(3 * H, H)
        with torch.no_grad():
            self.fuse.weight.zero_()
            self.fuse.bias.zero_()
            self.fuse.weight[:, -H:] = torch.eye(H)

    def forward(self, feats, embeds, past_key_values=None, use_cache=False, **_):
        if feats.shape[-1] != H:  # fused real features; the drafter's own predictions are H wide
            feats = self.fuse(feats)
        x = self.fc(torch.cat([feats, embeds], -1))
        out = self.d.layers(inputs_embeds=x, **cache_arg(self.d.layers, past_key_values), use_cache=use_cache)
        return out.last_hidden_state, cache_of(out)


def embeds_of(arm, x):
    e = embed(x)
    if arm != "prev":
        return e
    return torch.cat([e, torch.cat([torch.zeros_like(e[:, :1]), e[:, :-1]], 1)], -1)  # e(x_p), e(x_{p-1})


def loss_for(arm):
    def loss(m, _embed, hw, x, t_ids, t_probs, t_hidden, sub, unroll, fw, tw):
        f_in = t_hidden.float()
        f = f_in[..., -H:]  # the regression target: the last hidden state
        e = embeds_of(arm, x)
        u = torch.unique(torch.cat([sub, t_ids.flatten().long()]))
        w_u, cols = hw[u], torch.searchsorted(u, t_ids.long())
        feats, total, parts = E.shifted(f_in), 0.0, {}
        for step in range(unroll):
            pred, _ = m(feats, e)
            logq = (pred @ w_u.T).float().log_softmax(-1)
            ce = -(t_probs.float() * logq.gather(-1, cols)).sum(-1).mean()
            total = total + fw * torch.nn.functional.smooth_l1_loss(pred, f) + tw * ce
            parts[f"step{step + 1}"] = {"token_ce": ce.item()}
            feats = E.shifted(pred)
        return total / unroll, parts
    return loss


class PrevLM(FeatureLM):
    """FeatureLM for the prev arm: remembers the fed ids to give each token its predecessor's embedding."""

    def reset(self):
        super().reset()
        self.fed = []

    def crop(self, length):
        super().crop(length)
        self.fed = self.fed[:length]

    def _step(self, ids, keep):
        e = self.embed(torch.cat([torch.tensor(self.fed[-1:] or [0]), ids]))
        if not self.fed:
            e[0] = 0
        both, own = torch.cat([e[1:], e[:-1]], -1), self.embed
        self.fed = self.fed + ids.tolist()
        self.embed = lambda _ids: both
        try:
            return super()._step(ids, keep)
        finally:
            self.embed = own


results = {}
for arm in ARMS:
    torch.manual_seed(0)
    drafter = E.init_feature_drafter(target, 0)
    model = drafter if arm == "base" else Variant(drafter, arm)
    train_data = dict(data, hidden=multi) if arm == "fused" else data
    E.loss_terms = loss_for(arm)
    t0 = time.time()
    E.train(model, embed, head_w, train_data, rows, subset, p, True)
    seconds = time.time() - t0
    model.eval()
    held_data = dict(data)
    if arm == "fused":  # evaluate on the fused inputs, mapped once
        with torch.no_grad():
            held_data["hidden"] = data["hidden"].clone()
            held_data["hidden"][held] = model.fuse(multi[held].float()).half()
    with torch.inference_mode():
        hits = total = 0
        for i in range(0, len(held), 8):
            r = held[i:i + 8]
            pred, _ = model(E.shifted(held_data["hidden"][r].float()), embeds_of(arm, held_data["windows"][r]))
            hits += (head(pred).argmax(-1) == data["ids"][r, :, 0]).sum().item()
            total += pred.numel() // H
    E.FeatureLM = PrevLM if arm == "prev" else FeatureLM
    chain = E.chain_acceptance(model, embed, head, held_data, held)
    results[arm] = {"train_s": round(seconds), "top1": round(hits / total, 4), "tau": chain["mean_accepted_length"],
                    "per_pos": chain["acceptance_per_position"]}
    print(arm, results[arm], flush=True)
print(json.dumps({"epochs": EPOCHS, "arms": results}))
