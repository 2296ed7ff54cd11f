"""Shared fixtures: one torch thread per test, a scratch folder for hypothesis, the corpus path,
and the tiny seeded model most model tests use."""

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


@pytest.fixture(scope="session")
def make_tiny_model():
    """`make(seed=0, **overrides)`: a GPT on preset "tiny" (2 layers, 2 heads, 32 wide,
    block_size 64; plus overrides), seeded, in eval mode.

    Session-scoped so module-scoped fixtures (saved checkpoints) can use it too.
    """
    import torch

    from musicgpt.config import preset
    from musicgpt.model import GPT

    def make(seed: int = 0, **overrides):
        torch.manual_seed(seed)
        return GPT(preset("tiny", **overrides)).eval()
    return make


@pytest.fixture
def tiny_model(make_tiny_model):
    """A fresh tiny model from seed 0, in eval mode."""
    return make_tiny_model()


@pytest.fixture(scope="session")
def tiny_checkpoint(make_tiny_model, tmp_path_factory) -> Path:
    """The seed-0 tiny model saved as a checkpoint folder, shared by the session: read only."""
    from musicgpt.checkpoint import save_checkpoint

    return save_checkpoint(make_tiny_model(), tmp_path_factory.mktemp("tiny") / "checkpoint")
