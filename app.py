"""musicgpt in the browser: `streamlit run app.py`.

Streamlit only: widgets, layout, session state; the sidebar's pickers (checkpoint, primer,
sampling) are in musicgpt/app_sidebar.py, the analysis views of a result (arcs, heatmap,
surprisal) in app_views.py. The maths lives in musicgpt.arcs, the figures in musicgpt.plots,
audio in musicgpt.audio, and the page's plain logic in musicgpt.studio.
Results are kept in st.session_state, so moving an attention control never regenerates.
Each piece on the page (a generated sample, or the primer while "Edit the primer" is on) has a
studio.History of versions: regenerate a span (infilling.infill), keep or undo, compare.
Every Generate and "Continue this piece" is kept in a studio.ResultLog, so earlier results can be
recalled. Pieces play in musicgpt.player (a roll with a cursor that follows the audio).
The Duet page (the switch under the title) is musicgpt/duet_page.py.
"""

from __future__ import annotations

import contextlib
import threading

import numpy as np
import streamlit as st

from app_views import show_arcs, show_heatmap, show_surprisal
from musicgpt import arcs, audio, duet_page, player, plots, studio
from musicgpt.app_sidebar import (
    load_sampler,
    pick_model,
    pick_primer,
    pick_sampling,
    sampling_settings,
    show_soundfont,
)
from musicgpt.config import Config
from musicgpt.infilling import InfillError, infill
from musicgpt.pipeline import continuation_to_midi_bytes, infill_to_midi_bytes
from musicgpt.sampling import generate_pieces

RESULTS = "results"  # session_state key: list of per-sample dicts from the last generation
HISTORIES = "histories"  # session_state key: piece key -> studio.History (its versions)
LOG = "result_log"  # session_state key: studio.ResultLog of every result made on the page
CONTINUE = "continue_from"  # session_state key: the sample whose Continue was pressed
PRIMER_VIEWS = "primer_views"  # session_state key: primer piece key -> its rendered preview
RESULT_WIDGET_PREFIXES = ("arc_", "arcs_", "heat_", "sample", "edit_", "surprisal_")


@st.cache_resource
def model_lock(path: str) -> threading.Lock:
    """One generation or infill at a time on a checkpoint's shared models (every session uses
    the same cached ones): their KV cache lives on the model, so two sessions decoding at once
    would write into each other's. Analysis passes use no cache and need no lock."""
    return threading.Lock()


@contextlib.contextmanager
def sampling_turn(path: str):
    """Hold `model_lock(path)` for the block, saying so while another session has it."""
    lock = model_lock(path)
    if lock.acquire(blocking=False):
        waiting = None
    else:
        waiting = st.info("Another session is generating with this model; yours starts when "
                          "it is done...")
        lock.acquire()
    try:
        yield
    finally:
        lock.release()
        if waiting is not None:
            waiting.empty()


def primer_history(primer: np.ndarray | None) -> tuple[str, studio.History] | None:
    """The primer's versions while the sidebar's "Edit the primer" is on (Generate continues the
    current one), else None."""
    if primer is None or not st.sidebar.toggle("Edit the primer (regenerate spans of it)",
                                               key="primer_edit"):
        return None
    key = "p" + studio.piece_key(primer)
    return key, history_for(key, primer, "primer")


def history_for(key: str, ids: np.ndarray, label: str, view: dict | None = None,
                ) -> studio.History:
    """The versions of the piece `key` (made on first use, `view`: its rendered original)."""
    histories = st.session_state.setdefault(HISTORIES, {})
    if key not in histories:
        histories[key] = studio.History(ids, label)
        histories[key].versions[0].view = {} if view is None else view
    return histories[key]


def run_generation(path: str, primer: np.ndarray | None, opts: dict,
                   source: bytes | None = None, slot=None) -> list[dict]:
    """Sample with the checkpoint's sampler (one session at a time), then decode and render
    each piece once, for every later rerun (the attention analysis follows when a piece is
    first shown, `with_attention`). `source`: the primer's .mid, whose own events the written
    pieces keep; `slot`: where the progress bar goes (default: here)."""
    bar = (slot or st).progress(0.0, text="Generating...")
    shown = [-1]

    def progress(done_s: float, total_s: float | None) -> None:
        percent = min(99, int(100 * done_s / total_s)) if total_s else 99
        if percent != shown[0]:
            shown[0] = percent
            bar.progress(percent / 100, text=f"Generating... {done_s:.1f} of {total_s or 0:g} s "
                                             "of music")

    with sampling_turn(path):
        made = generate_pieces(load_sampler(path, opts["dtype"]), primer,
                               max_seconds=float(opts["seconds"]),
                               num_samples=int(opts["num_samples"]),
                               settings=sampling_settings(opts), seed=int(opts["seed"]),
                               progress=progress, style=opts["style"])
    primer_len = made.primer_len
    bar.progress(1.0, text="Rendering audio...")
    results = [dict(render(studio.ids_to_piece(row, primer_len),
                           continuation_to_midi_bytes(row, primer_len, source)),
                    stop=stop.message())
               for row, stop in zip(made.rows, made.stops, strict=True)]
    bar.empty()
    return results


def render(piece: studio.Piece, midi: bytes | None = None) -> dict:
    """What the page shows of a piece: the piece, its audio (or why none) and its .mid bytes
    (`midi`, else the piece's own one-track file)."""
    wav, problem = None, audio.synth_problem()
    if problem is None and len(piece.notes):
        wav = audio.notes_to_wav_bytes(piece.notes)
    return dict(piece=piece, wav=wav, audio_problem=problem,
                midi=studio.ids_to_midi_bytes(piece.ids) if midi is None else midi)


def with_attention(model, result: dict) -> dict:
    """`result` with its attention analysis (float32 `model`), made the first time it is asked."""
    if "maps" not in result:
        ids = result["piece"].ids
        result["tokens"] = arcs.ids_to_note_tokens(ids)
        result["maps"], result["offset"] = arcs.attention_maps(model, ids)
    return result


def version_view(version: studio.Version) -> dict:
    """The rendered version, made once and kept with it."""
    if not version.view:
        piece = (studio.ids_to_piece(version.ids, len(version.ids)) if version.span is None
                 else studio.span_piece(version.ids, version.span))
        version.view.update(render(piece))
    return version.view


def show_piece(result: dict, tag: str, filename: str, span=None, preview=None) -> None:
    """Caption, piano roll (`span`: the regenerated span, shaded; `preview`: the span selected
    for regenerating, framed), audio and downloads. `tag` makes the widget keys unique."""
    piece: studio.Piece = result["piece"]
    names = ("kept", "regenerated") if span else ("primer", "generated")
    n_new = int((~piece.is_primer).sum())
    st.caption(f"{piece.seconds:.1f} s, {len(piece.notes)} notes ({n_new} {names[1]}), "
               f"{len(piece.ids)} tokens")
    if len(piece.notes) == 0:
        st.warning("This piece has no notes (the model ended it at once). Try another "
                   "seed or a higher temperature.")
    show_player(result, tag, span, preview, names)
    if preview:
        st.caption("The dashed box on the roll marks the span chosen under *Regenerate a span* "
                   "below; a shaded band marks a span already regenerated.")
    with st.expander("Piano roll with note details (hover, zoom)"):
        roll = plots.piano_roll(piece.notes, piece.is_primer, "Piano roll", names)
        if span:
            plots.mark_span(roll, *span)
        if preview:
            plots.mark_span(roll, *preview, "span to regenerate", outline_only=True)
        st.plotly_chart(roll, key=f"roll_{tag}")
    left, right = st.columns(2)
    left.download_button("Download .mid", result["midi"], f"{filename}.mid", "audio/midi",
                         key=f"mid_{tag}")
    if result["wav"] is not None:
        right.download_button("Download .wav", result["wav"], f"{filename}.wav", "audio/wav",
                              key=f"wav_{tag}")


def show_player(result: dict, tag: str, span=None, preview=None,
                names: tuple[str, str] = ("primer", "generated")) -> None:
    """The piano roll with a playback cursor over the audio (click the roll to play from there),
    or the roll and why there is no audio."""
    piece: studio.Piece = result["piece"]
    if "player_wav" not in result:  # made once: long pieces play a smaller WAV
        result["player_wav"] = (None if result["wav"] is None else
                                audio.wav_for_player(result["wav"]))
    html = player.player_html(piece.notes, piece.is_primer, result["player_wav"],
                              [span] if span else [], preview, names)
    st.iframe(html, height=player.player_height(result["player_wav"]))
    if result["wav"] is None and result["audio_problem"]:
        st.info(result["audio_problem"])


def show_versions(history: studio.History, key: str, model, path: str, opts: dict,
                  filename: str) -> dict:
    """The current version of a piece with its span editor, a new version waiting to be kept or
    undone, and the comparison of versions. Returns the current version's rendered result."""
    current = history.versions[history.current]
    seconds, span_key = studio.editable_seconds(current.ids), f"edit_span_{key}"
    default = preview = None
    if seconds >= 2 * studio.SPAN_STEP_S:
        longest = studio.longest_span_s(current.ids, model.config.block_size)
        default = studio.default_span(seconds, longest)
        preview = studio.clamp_span(st.session_state.get(span_key, default), seconds)
    st.markdown(f"**Current piece: {current.label}**")
    show_piece(version_view(current), f"{key}_v{history.current + 1}",
               f"{filename}_v{history.current + 1}", current.span, preview)
    st.subheader("Regenerate a span")
    if default is None:
        st.info("This piece is too short to regenerate a span of it.")
    else:
        span = st.slider(f"Span of v{history.current + 1} to regenerate (seconds)", 0.0, seconds,
                         default, studio.SPAN_STEP_S, format="%.1f", key=span_key)
        if st.button("Regenerate this span", key=f"edit_go_{key}"):
            regenerate(history, path, span, opts)
    show_pending(history, key, filename)
    compare_versions(history, key, filename)
    return version_view(history.versions[history.current])


def regenerate(history: studio.History, path: str, span, opts: dict) -> None:
    """Infill `span` of the current version with the checkpoint's sampler (one session at a
    time); the result becomes the pending version."""
    start, end = studio.clamp_span(span, float("inf"))
    bar, shown = st.progress(0.0, text="Regenerating the span..."), [-1]

    def progress(done_s: float, total_s: float) -> None:
        percent = min(99, int(100 * done_s / total_s)) if total_s > 0 else 99
        if percent != shown[0]:
            shown[0] = percent
            bar.progress(percent / 100, text=f"Regenerating... {done_s:.1f} of {total_s:.1f} s")

    parent = history.versions[history.current]
    try:
        with sampling_turn(path):
            result = infill(load_sampler(path, opts["dtype"]), parent.ids, start, end,
                            settings=sampling_settings(opts),
                            seed=history.next_seed(opts["seed"]), style=opts["style"],
                            progress=progress)
    except InfillError as exc:
        st.error(f"Cannot regenerate this span: {exc}.")
        return
    finally:
        bar.empty()
    span = (result.start_s, result.end_s)
    index = history.push(result.pieces[0], span, result.note)
    # its .mid is the parent's file edited in place: tracks, tempo map and meter stay
    midi = infill_to_midi_bytes(version_view(parent)["midi"], parent.ids, result.middles[0],
                                *span)
    history.versions[index].view.update(render(studio.span_piece(result.pieces[0], span), midi))


def show_pending(history: studio.History, key: str, filename: str) -> None:
    """The new version with Keep / Undo, or (nothing new) Undo back to the previous version."""
    if history.pending is None:
        if history.can_undo:
            parent = history.versions[history.current].parent
            st.button(f"Undo: back to v{parent + 1}", key=f"edit_undo_{key}",
                      on_click=history.undo)
        return
    version = history.versions[history.pending]
    st.markdown(f"**New version: {version.label}** (not kept yet)")
    if version.note:
        st.info(f"Note: {version.note}.")
    show_piece(version_view(version), f"{key}_v{history.pending + 1}",
               f"{filename}_v{history.pending + 1}", version.span)
    left, right = st.columns(2)
    left.button("Keep this version", type="primary", key=f"edit_keep_{key}",
                on_click=history.keep)
    right.button(f"Undo: back to v{history.current + 1}", key=f"edit_undo_{key}",
                 on_click=history.undo)


def compare_versions(history: studio.History, key: str, filename: str) -> None:
    """Two versions side by side, each with its roll, audio and "Make current"."""
    if len(history) < 2:
        return
    st.subheader("Compare versions")
    shown = history.versions[history.shown]
    other = shown.parent if shown.parent is not None else 0
    for column, default, side in zip(st.columns(2), (history.shown, other), "ab", strict=True):
        with column:
            index = st.selectbox("Version", range(len(history)), default,
                                 format_func=lambda i: history.versions[i].label,
                                 key=f"edit_cmp_{side}_{key}_{len(history)}_{history.made}")
            version = history.versions[index]
            show_piece(version_view(version), f"cmp{side}_{key}_v{index + 1}",
                       f"{filename}_v{index + 1}", version.span)
            st.button("Make this the current version", key=f"edit_restore_{side}_{key}",
                      on_click=history.restore, args=(index,),
                      disabled=index == history.current and history.pending is None)


def main() -> None:
    st.set_page_config(page_title="musicgpt", layout="wide")
    st.title("musicgpt")
    st.write("Piano continuation with a Music-Transformer-style GPT over MIDI performance events.")
    hint = st.empty()  # "press Generate" while it can be pressed; the progress bar while it runs
    if st.radio("Page", ["Generate", "Duet"], horizontal=True, key="page",
                label_visibility="collapsed") == "Duet":
        return duet()
    generate_slot = st.sidebar.container()  # filled last, shown first: visible without scrolling
    model, path = pick_model()
    primer, primer_ok, source = pick_primer()
    edited = primer_history(primer) if model is not None and primer_ok else None
    if edited is not None:
        primer = edited[1].versions[edited[1].current].ids
        source = source if edited[1].current == 0 else None  # an edited primer is its tokens
        st.sidebar.caption(f"Generate continues the primer's current version, v"
                           f"{edited[1].current + 1}.")
    opts = pick_sampling(model.config if model is not None else Config())
    show_soundfont()
    ready = model is not None and primer_ok
    if generate_slot.button("Generate", type="primary", key="generate", disabled=not ready,
                            width="stretch"):
        results = run_generation(path, primer, opts, source, hint)
        new_results(results, f"{opts['seconds']} s, seed {opts['seed']}")
    results = st.session_state.get(RESULTS)
    if edited is not None:
        with st.expander("Primer: regenerate spans before generating", expanded=not results):
            show_versions(edited[1], edited[0], model, path, opts, "primer")
    elif primer is not None and model is not None:
        show_primer_preview(model, primer, expanded=not results)
    if not results:
        if ready:
            hint.info("Choose a primer and settings in the sidebar, then press Generate.")
        return
    recall_results()
    number = 0
    if len(results) > 1:
        number = st.radio("Sample", range(len(results)), horizontal=True, key="sample",
                          format_func=lambda i: f"#{i + 1}")
    show_result(model, path, opts, results[number], number)


def duet() -> None:
    """The Duet page (musicgpt/duet_page.py) with the sidebar's checkpoint and settings."""
    for key in ("primer", "primer_s", "example", "primer_edit"):  # kept for the Generate page
        if key in st.session_state:
            st.session_state[key] = st.session_state[key]
    model, path = pick_model()
    opts = pick_sampling(model.config if model is not None else Config(), duet=True)
    show_soundfont()
    if model is not None:
        duet_page.show(path, opts, sampling_settings(opts),
                       lambda: load_sampler(path, opts["dtype"]), lambda: sampling_turn(path))


def continue_piece(path: str, opts: dict, number: int) -> None:
    """After sample `number`'s Continue was pressed: generate, the progress bar beside it."""
    continued = st.session_state.get(CONTINUE)
    if continued is None or continued[0] != number:
        return
    del st.session_state[CONTINUE]
    _, ids, midi = continued
    results = run_generation(path, studio.continuation_primer(ids), opts, midi, st.empty())
    new_results(results, f"{result_log().labels[result_log().shown].split(':')[0]} "
                         f"sample {number + 1} continued by {opts['seconds']} s")
    st.rerun()


def result_log() -> studio.ResultLog:
    return st.session_state.setdefault(LOG, studio.ResultLog())


def _forget_result_widgets() -> None:
    for key in [k for k in st.session_state if k.startswith(RESULT_WIDGET_PREFIXES)]:
        del st.session_state[key]  # their ranges belong to the results shown before


def new_results(results: list[dict], label: str) -> None:
    """Show new results; the ones shown before stay in the log, with their versions."""
    _forget_result_widgets()
    result_log().add(label, results, st.session_state.setdefault(HISTORIES, {}))
    st.session_state[RESULTS] = results


def recall(index: int) -> None:
    _forget_result_widgets()
    histories = st.session_state.setdefault(HISTORIES, {})
    st.session_state[RESULTS] = result_log().recall(index, histories)


def recall_results() -> None:
    """A picker of every result made on this page (the newest is shown after each Generate)."""
    log = result_log()
    if len(log) < 2:
        return
    st.selectbox("Result (earlier ones can be recalled)", range(len(log)), log.shown,
                 format_func=lambda i: log.labels[i], key=f"recall_{len(log)}_{log.shown}",
                 on_change=lambda: recall(st.session_state[f"recall_{len(log)}_{log.shown}"]))


def show_primer_preview(model, primer: np.ndarray, expanded: bool) -> None:
    """The primer before generating: length, notes, the player, and the model's surprisal."""
    views = st.session_state.setdefault(PRIMER_VIEWS, {})
    key = studio.piece_key(primer)
    if key not in views:
        if len(views) >= 8:
            views.clear()
        views[key] = render(studio.ids_to_piece(primer, len(primer)))
    view = views[key]
    piece = view["piece"]
    with st.expander(f"Primer: {piece.seconds:.1f} s, {len(piece.notes)} notes "
                     f"({len(piece.ids)} tokens)", expanded=expanded):
        show_player(view, f"primer_{key}", names=("primer", ""))
        show_surprisal(model, view, f"primer_{key}")


def show_result(model, path: str, opts: dict, result: dict, number: int) -> None:
    """A generated sample (its current version) with its span editor, arcs and heatmap."""
    history = history_for(f"s{number}", result["piece"].ids, f"generated sample #{number + 1}",
                          result)
    if result.get("stop"):  # the model drew END (or the token budget ran out) before the length
        st.info(f"Sample #{number + 1} is shorter than asked: it {result['stop']} s.")
    current = show_versions(history, f"s{number}", model, path, opts, f"musicgpt_{number + 1}")
    tag = number if history.current == 0 else f"{number}v{history.current + 1}"
    ids = history.versions[history.current].ids
    st.button(f"Continue this piece (+{opts['seconds']} s)", key=f"continue_{number}",
              type="primary", on_click=st.session_state.__setitem__,
              args=(CONTINUE, (number, ids, current["midi"])),
              help="Generate more music after the current version; this result stays listed")
    continue_piece(path, opts, number)
    st.header("Surprisal")
    show_surprisal(model, current, tag)
    st.header("Attention arcs")
    show_arcs(with_attention(model, current), tag)
    st.header("Attention heatmap")
    show_heatmap(with_attention(model, current), tag)


if __name__ == "__main__":
    main()
