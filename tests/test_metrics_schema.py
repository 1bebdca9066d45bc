"""metrics.json's schema: a real run writes exactly the top-level fields that
specexp/experiment/metrics_json.py documents (FIELDS), with their types, and docs/metrics.md
names every one of them."""
from __future__ import annotations

import json

from conftest import ROOT, pair_overrides

from specexp.experiment.metrics_json import FIELDS


def test_a_run_writes_exactly_the_documented_fields(run_specexp, random_pair_dir):
    """A run with a baseline and records=true at batch 1 holds the fields documented as always
    there, there when ok, with a baseline and with records; none other (a new field must be
    documented in FIELDS first), each of its documented JSON type."""
    _, run_dir = run_specexp(*pair_overrides(random_pair_dir), "dataset.limit=2", "dataset.max_new_tokens=8",
                             "warmup=0", "strategy.gamma=2", "records=true")
    m = json.loads((run_dir / "metrics.json").read_text())
    assert m["status"] == "ok"
    here = {"always", "ok", "baseline", "records"}  # the conditions this run meets
    expected = {name for name, (_, when, _) in FIELDS.items() if when in here}
    assert set(m) - set(FIELDS) == set(), "fields metrics_json.FIELDS does not document"
    assert set(m) == expected
    for name, value in m.items():
        types = FIELDS[name][0]
        assert isinstance(value, types) and (bool in types or not isinstance(value, bool)), (name, value)
    assert m["schema_version"] == 1 and m["n_samples"] == 2 == len(m["samples"])
    # the user's reference names every field too
    docs = (ROOT / "docs" / "metrics.md").read_text()
    assert [name for name in FIELDS if f"`{name}`" not in docs] == []


def test_a_tree_run_adds_the_tree_block(run_specexp, random_pair_dir):
    """strategy=tree: the fields of a run like the one above without records, plus `tree` (there
    only when the proposer drafted token trees), its per-depth counts consistent with its rounds."""
    _, run_dir = run_specexp(*pair_overrides(random_pair_dir), "strategy=tree", "dataset.limit=1",
                             "dataset.max_new_tokens=8", "warmup=0")
    m = json.loads((run_dir / "metrics.json").read_text())
    assert m["status"] == "ok"
    expected = {name for name, (_, when, _) in FIELDS.items() if when in {"always", "ok", "baseline", "tree"}}
    assert set(m) == expected
    tree = m["tree"]
    assert isinstance(tree, FIELDS["tree"][0])
    assert tree["rounds"] == sum(1 for s in m["samples"] for k in s["draft_lengths"] if k)
    assert tree["nodes_max"] <= 4 * 4 and tree["depth_max"] <= 4
    first = tree["acceptance_by_depth"][0]
    assert first["depth"] == 1 and first["rounds"] == tree["rounds"] and first["accepted"] <= first["rounds"]
    assert sum(tree["accepted_by_rank"]) == sum(d["accepted"] for d in tree["acceptance_by_depth"])


def test_tree_block_by_hand():
    """tree_block on two hand-made rounds: a 3-node tree of depth 2 whose path took the second
    child then its child, and a chain of 2 that accepted nothing."""
    from specexp.core.decode import Generation
    from specexp.experiment.metrics_json import tree_block

    g = Generation()
    g.log_tree([-1, -1, 1], [1, 2], ranked=True)  # root children 0, 1; node 2 under node 1
    g.log_tree([-1, 0], [], ranked=True)
    b = tree_block([g])
    assert (b["rounds"], b["nodes_max"], b["depth_max"], b["depth_mean"]) == (2, 3, 2, 2)
    assert [(d["rounds"], d["accepted"]) for d in b["acceptance_by_depth"]] == [(2, 1), (2, 1)]
    assert b["accepted_by_rank"] == [1, 1]  # node 1: rank 1 among the context's children; node 2: an only child
    g.drafted, g.round_times = [0, 3, 2, 1, 9], [0.01, 0.05, 0.03, 0.02, 0.2]  # widths 1, 4, 3, 2, 10
    assert tree_block([g])["round_seconds_by_width"] == [
        {"widths": [1, 1], "rounds": 1, "median_seconds": 0.01},
        {"widths": [2, 3], "rounds": 2, "median_seconds": 0.025},
        {"widths": [4, 7], "rounds": 1, "median_seconds": 0.05},
        {"widths": [8, 15], "rounds": 1, "median_seconds": 0.2}]
    assert tree_block([Generation()]) is None
