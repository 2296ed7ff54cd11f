"""Write the app's built-in primers: the opening seconds of a few POP909 songs (MIT licence).

    python data/primers/make_primers.py [--corpus ../shared/data/midi/pop909]

Each song is read with the project's own reader (every track merged into one piano, sustain
folded into note lengths), shifted so its first note starts at 0, cut to the notes that start in
the first SECONDS (notes still sounding are released at SECONDS), and written by
`pipeline.ids_to_midi_file`, so the files hold exactly what the model's vocabulary can say.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from musicgpt.events import NoteArrays, arrays_to_ids
from musicgpt.midi_io import midi_file_to_arrays
from musicgpt.pipeline import ids_to_midi_file
from musicgpt.vocab import seconds_to_steps

HERE = Path(__file__).resolve().parent
SECONDS = 12.0
# POP909 song number -> file stem (title and artist are in README.txt)
SONGS = {"019": "pop909_019_opening", "024": "pop909_024_opening", "035": "pop909_035_opening",
         "055": "pop909_055_opening"}


def opening(notes: NoteArrays, seconds: float) -> NoteArrays:
    """The notes starting in the first `seconds` after the first onset, shifted to start at 0."""
    first = int(notes.start_step.min())
    limit = int(seconds_to_steps(seconds))
    start = notes.start_step - first
    keep = start < limit
    end = np.minimum(notes.end_step[keep] - first, limit)
    return NoteArrays(notes.pitch[keep], notes.velocity[keep], start[keep],
                      np.maximum(end, start[keep] + 1))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--corpus", type=Path,
                        default=HERE.parents[2] / "shared" / "data" / "midi" / "pop909")
    args = parser.parse_args()
    for number, stem in SONGS.items():
        notes = opening(midi_file_to_arrays(args.corpus / f"{number}.mid"), SECONDS)
        path = ids_to_midi_file(arrays_to_ids(notes), HERE / f"{stem}.mid")
        print(f"{path.name}: {len(notes)} notes")


if __name__ == "__main__":
    main()
