"""musicgpt: a Music-Transformer-style piano music generator.

Data flows one way: MIDI file -> notes (midi_io) -> events/ids (events, vocab) -> model (model,
sampling) -> ids -> notes -> MIDI file (pipeline). Importing this package loads nothing heavy.
"""

__version__ = "0.1.0"
