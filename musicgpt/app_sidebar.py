"""The app's sidebar: the checkpoint picker (and the models it loads, cached for every
session), the primer controls, the sampling controls, and the piano sound's caption.

Streamlit only, like app.py (which lays these out and runs the page); the checkpoints and primers
come from musicgpt.studio, the sampling settings and their widgets from musicgpt.settings.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import streamlit as st

from . import audio, settings, studio
from .checkpoint import load_model_from_checkpoint, load_sampling_model
from .config import Config
from .quantize import sampling_dtype
from .sampling import SamplingSettings


@st.cache_resource(show_spinner="Loading the model...")
def load_model(path: str):
    from .device import pick_device

    return load_model_from_checkpoint(path, pick_device("auto"))


@st.cache_resource(show_spinner="Preparing the sampling weights (the first time after an install "
                               "also compiles the decode step, 10-20 s)...")
def load_sampler(path: str, dtype: str):
    """The model `generate` samples from, made once per checkpoint and dtype, not per click.

    float32 is the loaded model itself; int8 is a second model, loaded and quantised in place.
    Attention arcs always come from the float32 model (`load_model`). The compiled decode step
    is readied here (`engine.warm_up`), so a first generation does not sit at 0 while it compiles.
    """
    from .engine import warm_up

    model = load_model(path)
    device = model.device
    if sampling_dtype(dtype, device) != "float32":
        model = load_sampling_model(path, device, dtype)
    warm_up(model)
    return model


EXTRA_FOLDERS = "extra_folders"  # session_state key: folders typed into the sidebar, kept
ADD_FOLDER = "add_folder"  # the sidebar text box's key
FOLDER_WARNING = "add_folder_warning"  # session_state key: why a typed folder was not added


def add_typed_folder() -> None:
    """The text box's callback: remember a folder that holds checkpoints and select its first,
    or say (once) why not; nothing else on the page changes."""
    text = st.session_state.get(ADD_FOLDER, "").strip()
    if not text:
        return
    folder = Path(text).expanduser()
    found = studio.checkpoints_in(folder)
    if not found:
        where = "there is no such folder" if not folder.exists() else "it holds no checkpoint"
        st.session_state[FOLDER_WARNING] = (
            f"No checkpoint in {text}: {where} (looked for config.json and model.safetensors "
            f"in it, in its checkpoint/ and in the run folders inside it).")
        return
    folders = st.session_state.setdefault(EXTRA_FOLDERS, [])
    if text not in folders:
        folders.append(text)
    listed = {path.resolve(): str(path) for path in
              studio.find_checkpoints(extra=folders).values()}
    st.session_state["checkpoint"] = listed.get(found[0].resolve())


def pick_model():
    """Sidebar checkpoint picker: (the loaded model, its folder), or (None, None) after saying
    why. It lists the shipped model, the runs under runs/ and $MUSICGPT_CHECKPOINTS, and the
    folders typed into its text box (kept for the session)."""
    found = studio.find_checkpoints(extra=st.session_state.get(EXTRA_FOLDERS, []))
    warning = st.session_state.pop(FOLDER_WARNING, None)
    if warning:
        st.sidebar.warning(warning)
    if not found:
        st.error("No model found. The shipped default model is missing and no checkpoint was "
                 "found in runs/. Train one (`python train.py --out runs/mine`), type its "
                 f"folder in the sidebar, or set ${studio.ENV_CHECKPOINTS} to a folder of runs.")
        _folder_box()
        return None, None
    # the options are the folders, so a label that changes (a run still training) keeps its place
    labels = {str(path): label for label, path in found.items()}
    if st.session_state.get("checkpoint") not in labels:
        st.session_state.pop("checkpoint", None)
    path = st.sidebar.selectbox("Checkpoint", list(labels), format_func=labels.get,
                                key="checkpoint")
    _folder_box()
    try:
        model = load_model(path)
    except (OSError, ValueError, RuntimeError) as exc:
        st.error(f"Cannot load checkpoint {path}: {exc}")
        return None, None
    st.sidebar.caption(f"{path}: {model.config.short()}, "
                       f"{model.num_params() / 1e6:.2f} M parameters")
    return model, path


def _folder_box() -> None:
    st.sidebar.text_input("Add a run folder", key=ADD_FOLDER, on_change=add_typed_folder,
                          placeholder="runs/mine, or a folder of runs",
                          help="A checkpoint folder, a run folder (holding checkpoint/) or a "
                               "folder of runs; kept in the list for this session.")


def pick_primer() -> tuple[np.ndarray | None, bool, bytes | None]:
    """Sidebar primer controls -> (primer ids or None, ok, the primer's .mid bytes where it is a
    file: the pieces written keep its tempo map, meter and tracks). A bad upload's error shows
    beside the uploader and at the top of the page."""
    kind = st.sidebar.radio("Primer", ["none", "built-in", "upload"], index=1, horizontal=True,
                            key="primer")
    if kind == "none":
        return None, True, None
    seconds = st.sidebar.slider("Primer: first N seconds", 1, 30, 8, key="primer_s")
    if kind == "built-in":
        label = st.sidebar.selectbox("Built-in primer", list(studio.example_choices()),
                                     key="example", help="Openings of POP909 songs (MIT), "
                                     "pieces written by code, and the model's own examples")
        return studio.example_primer(label, seconds), True, studio.example_midi_bytes(label)
    # the size limit is the uploader's own (server.maxUploadSize in .streamlit/config.toml)
    upload = st.sidebar.file_uploader("Upload a .mid (at most 10 minutes of music)",
                                      type=["mid", "midi"], key="upload")
    if upload is None:
        st.sidebar.info("Upload a MIDI file to use as the primer.")
        return None, False, None
    try:
        data = upload.getvalue()
        return studio.primer_from_ids(studio.upload_to_ids(data, upload.name), seconds), True, data
    except studio.UploadError as exc:
        message = f"Cannot use the upload: {exc} Pick another file or another primer."
        st.error(message)
        st.sidebar.error(message)
        return None, False, None


WEIGHTS = {"auto (int8 on a CPU: faster)": "auto", "float32 (exact)": "float32"}


GENERATE_ONLY = {"seconds": 20, "num_samples": 1, "candidates": None}  # widget key -> default


def pick_sampling(config: Config, duet: bool = False) -> dict:
    """Sidebar sampling controls: the run's own (length, seed, samples, style, weights), then one
    widget per setting that has one (settings.py), starting from the checkpoint's values. On the
    Duet page (`duet`) the widgets that only Generate reads are not shown (their values are
    kept for the Generate page)."""
    bar = st.sidebar
    bar.subheader("Sampling")
    if duet:
        for key in GENERATE_ONLY:
            if key in st.session_state:
                st.session_state[key] = st.session_state[key]
    opts = dict(
        seconds=None if duet else bar.slider("Length of new music (s)", 2, 120, 20,
                                             key="seconds"),
        seed=bar.number_input("Seed", 0, 2**31 - 1, 1234, key="seed"),
        num_samples=None if duet else bar.slider("Number of samples", 1, 4, 1,
                                                 key="num_samples"),
        style=pick_style(config),
        dtype=WEIGHTS[bar.selectbox("Weights", list(WEIGHTS), key="dtype",
                                    help="int8 samples with the same NLL within 0.01%")],
    )
    defaults = SamplingSettings.from_config(config)
    for setting in settings.widget_options():
        default = getattr(defaults, setting.name)
        if duet and setting.name in GENERATE_ONLY:
            opts[setting.name] = st.session_state.get(setting.name, default)
            continue
        opts[setting.name] = setting_widget(bar, setting, default,
                                            disabled=setting.option.widget.needs_styles
                                            and not config.styles)
    return opts


def setting_widget(bar, setting, default, disabled: bool = False):
    """One sampling setting's widget (its `settings.Widget`), keyed by the setting's name; returns
    the setting's value (None where the widget shows "off")."""
    w, name, help = setting.option.widget, setting.name, setting.option.help
    shown = w.off if default is None else default
    if w.kind in ("slider", "number"):
        shown = min(max(shown, w.low), w.high)
    if w.kind == "select":
        value = bar.selectbox(w.label, w.choices, w.choices.index(shown), key=name, help=help,
                              format_func=w.format or str, disabled=disabled)
    elif w.kind == "number":
        value = bar.number_input(w.label, int(w.low), int(w.high), int(shown), int(w.step),
                                 key=name, help=help, disabled=disabled)
    elif w.kind == "range":
        low, high = (int(v) for v in shown)
        value = bar.slider(w.label, int(w.low), int(w.high), (low, high), int(w.step), key=name,
                           help=help, disabled=disabled)
        value = tuple(int(v) for v in value)
    else:
        kind = int if isinstance(w.step, int) else float
        value = bar.slider(w.label, kind(w.low), kind(w.high), kind(shown), kind(w.step),
                           key=name, help=help, disabled=disabled)
    return None if w.off is not None and value == w.off else value


def pick_style(config: Config) -> int | None:
    """The STYLE slot to condition on (None: no style), offered only when the checkpoint has
    styles."""
    if not config.styles:
        st.sidebar.caption("Style: this checkpoint was trained without style tokens.")
        return None
    name = st.sidebar.selectbox("Style", ["none", *config.styles], key="style")
    return None if name == "none" else config.style_slot(name)


def sampling_settings(opts: dict) -> SamplingSettings:
    """The settings the sidebar's widgets ask for."""
    return SamplingSettings(**{s.name: opts[s.name] for s in settings.widget_options()})


def show_soundfont() -> None:
    font = audio.choose_soundfont()
    st.sidebar.caption(f"Piano sound: {font.label}."
                       + (f" ({font.note}.)" if font.note else "")
                       + ("" if "system" in font.label or audio.ENV_SOUNDFONT in font.label else
                          f" A better piano: `apt-get install fluid-soundfont-gm`, or set "
                          f"${audio.ENV_SOUNDFONT} to a .sf2 file."))
