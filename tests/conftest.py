"""Shared fixtures: one torch thread per test, a scratch folder for hypothesis, the corpus path."""

from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
CORPUS_DIR = REPO_ROOT.parent / "shared" / "data" / "midi"


@pytest.fixture(scope="module")
def scratch_dir(tmp_path_factory) -> Path:
    """A folder kept for the whole module (hypothesis refuses function-scoped fixtures)."""
    return tmp_path_factory.mktemp("scratch")


@pytest.fixture(autouse=True)
def _one_torch_thread(request):
    """Model tests run on one thread: steady on a 2-core CI machine, and results do not depend
    on the thread count. Tests that never import torch are left alone."""
    import sys

    torch = sys.modules.get("torch")
    if torch is None:
        yield
        return
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)
