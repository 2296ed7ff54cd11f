"""The analysis views of one result in the app: attention arcs, attention heatmap, surprisal.

Streamlit only, like app.py (which calls these); the maths lives in musicgpt.arcs and
musicgpt.studio, the figures in musicgpt.plots.
"""

from __future__ import annotations

import streamlit as st

from musicgpt import arcs, plots, studio
from musicgpt.vocab import id_to_name


def _clicked_note(chart_key: str) -> int | None:
    """Note index of the bar last clicked on a plotly chart (customdata[4]), once per click."""
    event = st.session_state.get(chart_key)
    points = (event or {}).get("selection", {}).get("points", [])
    custom = points[0].get("customdata") if points else None
    if not custom or len(custom) < 5 or custom == st.session_state.get(chart_key + "_seen"):
        return None
    st.session_state[chart_key + "_seen"] = custom
    return int(custom[4])


def show_arcs(result: dict, number: int | str) -> None:
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
    a, b, c = st.columns(3)
    layer = a.slider("Layer", 0, n_layer - 1, n_layer - 1, key="arc_layer")
    head = b.selectbox("Heads", ["all"] + list(range(n_head)), key="arc_head")
    top_n = c.slider("Arcs per head (strongest)", 1, 10, 4, key="arc_top")
    if not low <= st.session_state.get(query_key, -1) <= high:
        st.session_state[query_key] = arcs.default_query(maps, offset, tokens, layer, queries)
    query = st.select_slider("Query note (or click a note in the chart below)",
                             list(range(low, high + 1)), key=query_key,
                             format_func=lambda i: plots.note_label(tokens.notes, i))
    heads = list(range(n_head)) if head == "all" else [int(head)]
    drawn = arcs.query_arcs(maps, offset, tokens, layer, query, heads, top_n)
    fig = plots.piano_roll(tokens.notes, result["piece"].is_primer, f"Layer {layer} attention "
                           f"from {plots.note_label(tokens.notes, query)}",
                           colours=plots.MUTED_COLOURS)
    st.plotly_chart(plots.add_arcs(fig, tokens.notes, query, drawn), key=f"arcs_{number}",
                    on_select="rerun", selection_mode="points")
    if not drawn:
        st.info("No earlier note gets a noticeable share of this note's attention.")
    st.caption(f"{arcs.ATTRIBUTION_RULE} The query is the note's NOTE_ON token; only the last "
               f"{window_len} tokens (the model's context) are analysed, so earlier notes "
               "cannot be queries.")


def with_surprisal(model, result: dict) -> dict:
    """`result` with each note's surprisal under the float32 `model`, made once."""
    if "surprisal" not in result:
        result["surprisal"] = studio.note_surprisal(model, result["piece"].ids)
    return result


def show_surprisal(model, result: dict, tag: str) -> None:
    """The roll coloured by how unexpected the model found each note (its NOTE_ON's NLL)."""
    piece: studio.Piece = with_surprisal(model, result)["piece"]
    surprisal = result["surprisal"]
    fig = plots.surprisal_roll(piece.notes, surprisal, piece.is_primer,
                               "Surprisal: how unexpected the model found each note")
    st.plotly_chart(fig, key=f"surprisal_{tag}")
    st.caption(f"{studio.surprisal_summary(surprisal, piece.is_primer)}. Surprisal is the "
               "negative log-probability (nats) of the note's note-on event given everything "
               "before it, from the float32 model; primer notes are outlined.")


def show_heatmap(result: dict, number: int | str) -> None:
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
