"""scripts/gpu_check.py, the prepared check of the CUDA paths, run on the CPU: every check passes
and its JSON says so (slow: seven `specexp` runs and a SmolLM2-shaped random model)."""
from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_gpu_check_passes_on_the_cpu(tmp_path, trained_pair_dir):
    sys.path.insert(0, str(ROOT / "scripts"))
    import gpu_check

    assert gpu_check.main(["--device", "cpu", "--limit", "1", "--out", str(tmp_path)]) == 0
    result = json.loads((tmp_path / "gpu_check.json").read_text())
    assert result["failed"] == [] and len(result["checks"]) == 30
    assert len(result["info"]["verify_cost"]["widths_1_to_9"]) == 9
