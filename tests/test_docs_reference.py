"""The shell commands of the reference and results pages of docs/ (tests/test_docs.py runs the
README's and the guides'; the machinery, the directives and SPECEXP_OVERRIDES are described there)."""
from __future__ import annotations

import pytest

from test_docs import GUIDES, PAGES, params, run_block

REFERENCE = [p for p in PAGES if p not in GUIDES]


@pytest.mark.parametrize("page,line,source,env", list(params(REFERENCE)))
def test_documented_command_runs(page, line, source, env, tmp_path_factory):
    run_block(page, line, source, env, tmp_path_factory)
