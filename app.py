"""musicgpt in the browser: `streamlit run app.py`.

Streamlit only: widgets, layout, session state. The maths lives in musicgpt.arcs, the
figures in musicgpt.plots, audio in musicgpt.audio, and the page's plain logic in musicgpt.studio.
Results are kept in st.session_state, so moving an attention control never regenerates.
"""

from __future__ import annotations

import numpy as np
import streamlit as st

from musicgpt import arcs, audio, plots, studio
from musicgpt.checkpoint import load_model_from_checkpoint, load_sampling_model
from musicgpt.config import Config
from musicgpt.quantize import sampling_dtype
from musicgpt.sampling import SamplingSettings, generate
from musicgpt.vocab import id_to_name

RESULTS = "results"  # session_state key: list of per-sample dicts from the last generation
RESULT_WIDGET_PREFIXES = ("arc_", "arcs_", "heat_", "sample")


@st.cache_resource(show_spinner="Loading the model...")
def load_model(path: str):
    from musicgpt.device import pick_device

    return load_model_from_checkpoint(path, pick_device("auto"))


@st.cache_resource(show_spinner="Preparing the sampling weights...")
def load_sampler(path: str, dtype: str):
    """The model `generate` samples from, made once per checkpoint and dtype, not per click.

    float32 is the loaded model itself; int8 is a second model, loaded and quantised in place.
    Attention arcs always come from the float32 model (`load_model`).
    """
    model = load_model(path)
    device = model.wte.weight.device
    if sampling_dtype(dtype, device) == "float32":
        return model
    return load_sampling_model(path, device, dtype)


def pick_model():
    """Sidebar checkpoint picker: (the loaded model, its folder), or (None, None) after saying
    why."""
    found = studio.find_checkpoints()
    if not found:
        st.error("No model found. The shipped default model is missing and no checkpoint was "
                 "found in runs/*/checkpoint. Train one (`python train.py --out runs/mine`) or "
                 f"set ${studio.ENV_CHECKPOINTS} to a folder holding checkpoints.")
        return None, None
    label = st.sidebar.selectbox("Checkpoint", list(found), key="checkpoint")
    try:
        model = load_model(str(found[label]))
    except (OSError, ValueError, RuntimeError) as exc:
        st.error(f"Cannot load checkpoint {found[label]}: {exc}")
        return None, None
    st.sidebar.caption(f"{model.config.short()}, {model.num_params() / 1e6:.2f} M parameters")
    return model, str(found[label])


def pick_primer() -> tuple[np.ndarray | None, bool]:
    """Sidebar primer controls -> (primer ids or None, ok). Bad uploads are reported in the page."""
    kind = st.sidebar.radio("Primer", ["none", "example", "upload"], index=1, horizontal=True,
                            key="primer")
    if kind == "none":
        return None, True
    seconds = st.sidebar.slider("Primer: first N seconds", 1, 30, 8, key="primer_s")
    if kind == "example":
        label = st.sidebar.selectbox("Example", list(studio.example_choices()), key="example")
        return studio.example_primer(label, seconds), True
    upload = st.sidebar.file_uploader("Upload a .mid (max 5 MB, 10 min)", type=["mid", "midi"],
                                      key="upload")
    if upload is None:
        st.sidebar.info("Upload a MIDI file to use as the primer.")
        return None, False
    try:
        return studio.primer_from_ids(studio.upload_to_ids(upload.getvalue(), upload.name),
                                      seconds), True
    except studio.UploadError as exc:
        st.error(f"Cannot use the upload: {exc} Pick another file or another primer.")
        return None, False


WEIGHTS = {"auto (int8 on CPU: faster, same NLL within 0.01%)": "auto",
           "float32 (exact)": "float32"}


def pick_sampling(config: Config) -> dict:
    """Sidebar sampling controls, starting from the checkpoint's own settings."""
    bar = st.sidebar
    bar.subheader("Sampling")
    return dict(
        seconds=bar.slider("Length of new music (s)", 2, 120, 20, key="seconds"),
        temperature=bar.slider("Temperature", 0.1, 2.0, float(config.temperature), 0.05,
                               key="temperature"),
        top_k=bar.number_input("Top-k (0 = off)", 0, 391, int(config.top_k), key="top_k"),
        top_p=bar.slider("Top-p (1 = off)", 0.05, 1.0, float(config.top_p), 0.01, key="top_p"),
        seed=bar.number_input("Seed", 0, 2**31 - 1, 1234, key="seed"),
        num_samples=bar.slider("Number of samples", 1, 4, 1, key="num_samples"),
        dtype=WEIGHTS[bar.selectbox("Weights", list(WEIGHTS), key="dtype")],
    )


def run_generation(model, sampler, primer: np.ndarray | None, opts: dict) -> list[dict]:
    """Sample with `sampler`, then decode, render and analyse (attention of the float32 `model`)
    each piece once, for every later rerun."""
    bar = st.progress(0.0, text="Generating...")
    shown, expected = [-1], studio.expected_tokens(opts["seconds"])

    def progress(done: int, total: int) -> None:
        # The sampler stops at the asked length, usually long before the token cap `total`.
        percent = min(99, int(100 * done / min(total, expected)))
        if percent != shown[0]:
            shown[0] = percent
            bar.progress(percent / 100, text=f"Generating... {done} tokens")

    settings = SamplingSettings(float(opts["temperature"]), int(opts["top_k"]),
                                float(opts["top_p"]))
    rows = generate(sampler, primer, max_new_tokens=studio.token_budget(opts["seconds"]),
                    max_seconds=float(opts["seconds"]), num_samples=int(opts["num_samples"]),
                    settings=settings, seed=int(opts["seed"]), progress=progress)
    primer_len = 1 if primer is None else len(primer)
    bar.progress(1.0, text="Rendering audio...")
    results = [analyse(model, row, primer_len) for row in rows]
    bar.empty()
    return results


def analyse(model, ids: np.ndarray, primer_len: int) -> dict:
    tokens = arcs.ids_to_note_tokens(ids)
    piece = studio.ids_to_piece(ids, primer_len, tokens.note_pos)
    maps, offset = arcs.attention_maps(model, ids)
    wav, problem = None, audio.synth_problem()
    if problem is None and len(piece.notes):
        wav = audio.notes_to_wav_bytes(piece.notes)
    return dict(piece=piece, tokens=tokens, maps=maps, offset=offset, wav=wav,
                audio_problem=problem, midi=studio.ids_to_midi_bytes(ids))


def show_piece(result: dict, number: int) -> None:
    piece: studio.Piece = result["piece"]
    n_new = int((~piece.is_primer).sum())
    st.caption(f"{piece.seconds:.1f} s, {len(piece.notes)} notes ({n_new} generated), "
               f"{len(piece.ids)} tokens")
    if len(piece.notes) == 0:
        st.warning("This sample has no notes (the model ended the piece at once). Try another "
                   "seed or a higher temperature.")
    roll = plots.piano_roll(piece.notes, piece.is_primer, "Piano roll")
    st.plotly_chart(roll, key=f"roll_{number}")
    if result["wav"] is not None:
        st.audio(result["wav"], format="audio/wav")
    elif result["audio_problem"]:
        st.info(result["audio_problem"])
    left, right = st.columns(2)
    left.download_button("Download .mid", result["midi"], f"musicgpt_{number + 1}.mid",
                         "audio/midi", key=f"mid_{number}")
    if result["wav"] is not None:
        right.download_button("Download .wav", result["wav"], f"musicgpt_{number + 1}.wav",
                              "audio/wav", key=f"wav_{number}")


def _clicked_note(chart_key: str) -> int | None:
    """Note index of the bar last clicked on a plotly chart (customdata[4]), once per click."""
    event = st.session_state.get(chart_key)
    points = (event or {}).get("selection", {}).get("points", [])
    custom = points[0].get("customdata") if points else None
    if not custom or len(custom) < 5 or custom == st.session_state.get(chart_key + "_seen"):
        return None
    st.session_state[chart_key + "_seen"] = custom
    return int(custom[4])


def show_arcs(result: dict, number: int) -> None:
    maps, offset, tokens = result["maps"], result["offset"], result["tokens"]
    n_layer, n_head, window_len = maps.shape[0], maps.shape[1], maps.shape[-1]
    queries = arcs.notes_in_window(tokens, offset, window_len)
    if len(queries) < 2:
        st.info("Too few notes in the attention window to draw arcs.")
        return
    query_key, low, high = f"arc_query_{number}", int(queries[1]), int(queries[-1])
    clicked = _clicked_note(f"arcs_{number}")
    if clicked is not None and low <= clicked <= high:
        st.session_state[query_key] = clicked
    elif clicked is not None:
        st.info(f"Note {clicked} cannot be a query: only notes {low} to {high} have their "
                "note-on inside the analysed window (and an earlier note to look back at).")
    if not low <= st.session_state.get(query_key, -1) <= high:
        st.session_state[query_key] = high
    a, b, c = st.columns(3)
    layer = a.slider("Layer", 0, n_layer - 1, n_layer - 1, key="arc_layer")
    head = b.selectbox("Heads", ["all"] + list(range(n_head)), key="arc_head")
    top_n = c.slider("Arcs per head (strongest)", 1, 10, 4, key="arc_top")
    query = st.slider("Query note (or click a note in the chart below)", low, high,
                      key=query_key)
    heads = list(range(n_head)) if head == "all" else [int(head)]
    drawn = arcs.query_arcs(maps, offset, tokens, layer, query, heads, top_n)
    fig = plots.piano_roll(tokens.notes, result["piece"].is_primer, f"Layer {layer} attention "
                           f"from note {query}")
    st.plotly_chart(plots.add_arcs(fig, tokens.notes, query, drawn), key=f"arcs_{number}",
                    on_select="rerun", selection_mode="points")
    if not drawn:
        st.info("No earlier note gets a noticeable share of this note's attention.")
    st.caption(f"{arcs.ATTRIBUTION_RULE} The query is the note's NOTE_ON token; only the last "
               f"{window_len} tokens (the model's context) are analysed, so earlier notes "
               "cannot be queries.")


def show_heatmap(result: dict, number: int) -> None:
    maps, offset = result["maps"], result["offset"]
    end = offset + maps.shape[-1]
    a, b = st.columns([1, 3])
    layer = a.slider("Heatmap layer", 0, maps.shape[0] - 1, 0, key="heat_layer")
    start, stop = b.slider("Token window (positions in the piece)", offset, end,
                           (max(offset, end - 48), end), key=f"heat_window_{number}")
    if stop - start < 2:
        st.info("Pick a window of at least two tokens.")
        return
    ids = result["piece"].ids
    labels = [f"{pos}:{id_to_name(int(ids[pos]))}" for pos in range(start, stop)]
    matrix = arcs.layer_heatmap(maps, layer, start - offset, stop - offset)
    title = f"Layer {layer}, heads averaged"
    st.plotly_chart(plots.attention_heatmap(matrix, labels, title), key=f"heatmap_{number}")


def main() -> None:
    st.set_page_config(page_title="musicgpt", layout="wide")
    st.title("musicgpt")
    st.write("Piano continuation with a Music-Transformer-style GPT over MIDI performance events.")
    model, path = pick_model()
    primer, primer_ok = pick_primer()
    opts = pick_sampling(model.config if model is not None else Config())
    clicked = st.sidebar.button("Generate", type="primary", disabled=model is None or not primer_ok,
                                key="generate")
    if clicked:
        for key in [k for k in st.session_state if k.startswith(RESULT_WIDGET_PREFIXES)]:
            del st.session_state[key]  # their ranges belong to the previous results
        sampler = load_sampler(path, opts["dtype"])
        st.session_state[RESULTS] = run_generation(model, sampler, primer, opts)
    results = st.session_state.get(RESULTS)
    if not results:
        st.info("Choose a primer and settings in the sidebar, then press Generate.")
        return
    number = 0
    if len(results) > 1:
        number = st.radio("Sample", range(len(results)), horizontal=True, key="sample",
                          format_func=lambda i: f"#{i + 1}")
    show_piece(results[number], number)
    st.header("Attention arcs")
    show_arcs(results[number], number)
    st.header("Attention heatmap")
    show_heatmap(results[number], number)


if __name__ == "__main__":
    main()
