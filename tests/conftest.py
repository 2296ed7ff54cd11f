"""Shared fixtures: a scratch folder that hypothesis tests may reuse, and the real corpus path."""

from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
CORPUS_DIR = REPO_ROOT.parent / "shared" / "data" / "midi"


@pytest.fixture(scope="module")
def scratch_dir(tmp_path_factory) -> Path:
    """A folder kept for the whole module (hypothesis refuses function-scoped fixtures)."""
    return tmp_path_factory.mktemp("scratch")
