"""One loaded model serves concurrent generations and infills: the KV cache is a value of each
decode loop, so threads sharing the model's weights get exactly what they get one at a time."""

from concurrent.futures import ThreadPoolExecutor

import numpy as np
import torch

from musicgpt.events import Note, notes_to_ids
from musicgpt.infilling import infill
from musicgpt.sampling import SamplingSettings, generate
from musicgpt.vocab import START_ID

N_THREADS = 4


def _jobs(model):
    """Eight calls: plain, guided (the twin decode on the same weights), sliding, infill."""
    notes = [Note(60 + i % 12, 80, i * 0.25, i * 0.25 + 0.4) for i in range(16)]
    piece = np.concatenate([[START_ID], notes_to_ids(notes)]).astype(np.int64)
    guided = SamplingSettings(style_guidance=1.0)
    return [
        lambda: generate(model, None, max_new_tokens=40, num_samples=2, seed=1),
        lambda: generate(model, None, max_new_tokens=90, settings=guided, style=1, seed=2),
        lambda: generate(model, [START_ID], max_new_tokens=300, seed=3),  # slides past 256
        lambda: infill(model, piece, 1.0, 2.5, num_samples=2, seed=4).pieces,
        lambda: generate(model, None, max_new_tokens=60, settings=guided, style=0, seed=5),
        lambda: infill(model, piece, 0.5, 3.0, seed=6).pieces,
        lambda: generate(model, None, max_new_tokens=30, num_samples=3, seed=7),
        lambda: generate(model, None, max_seconds=2.0, seed=8),
    ]


def _same(a, b) -> bool:
    return len(a) == len(b) and all(np.array_equal(x, y) for x, y in zip(a, b, strict=True))


def test_threads_sharing_one_model_get_the_serial_results(make_tiny_model):
    model = make_tiny_model(styles=["a", "b"], block_size=256)
    weights = {name: t.clone() for name, t in model.state_dict().items()}
    serial = [job() for job in _jobs(model)]
    threads = torch.get_num_threads()
    with ThreadPoolExecutor(N_THREADS) as pool:
        futures = [pool.submit(job) for job in _jobs(model) * 2]
        concurrent = [f.result() for f in futures]
    torch.set_num_threads(threads)  # generate sets the count per call; keep the test's own
    assert all(_same(got, want) for got, want in zip(concurrent, serial * 2, strict=True))
    assert all(torch.equal(t, weights[name]) for name, t in model.state_dict().items())
