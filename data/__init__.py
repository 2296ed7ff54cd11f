"""Files shipped with musicgpt: the default model (`default_model/`) and example MIDI (`examples/`).

Installed as the package `musicgpt_data`, so package code finds them without a path, editable
install or not.
"""
