"""Plotly figures for the app: piano roll, attention arcs over it, attention heatmap, surprisal.

No Streamlit and no model: figures are built from NoteArrays, arcs and plain arrays.
"""

from __future__ import annotations

import numpy as np
import plotly.graph_objects as go

from .arcs import Arc
from .events import NoteArrays
from .vocab import pitch_to_name, steps_to_seconds

PRIMER_COLOUR = "#7f8c9a"
GENERATED_COLOUR = "#e8871e"
QUERY_COLOUR = "#d62728"
SPAN_COLOUR = "#1f77b4"
# Arcs are drawn over notes in these greys, so every head colour stands out from the notes.
MUTED_COLOURS = ("#c9ced4", "#9ba4ae")
# One colour per head: a qualitative palette (Okabe-Ito's colour-blind-safe hues, then tab10's),
# none of them the query's red.
HEAD_COLOURS = ("#0072b2", "#e69f00", "#009e73", "#cc79a7", "#56b4e9", "#8c564b", "#6a3d9a",
                "#000000", "#bcbd22", "#17becf", "#f0e442", "#7f7f7f")
SURPRISAL_SCALE = "YlOrRd"
ARC_POINTS = 24


def _seconds(steps: np.ndarray) -> np.ndarray:
    return steps_to_seconds(np.asarray(steps, dtype=np.float64))


def _note_trace(notes: NoteArrays, index: np.ndarray, name: str, colour: str) -> go.Bar:
    start_s, end_s = _seconds(notes.start_step[index]), _seconds(notes.end_step[index])
    pitch = notes.pitch[index]
    names = [pitch_to_name(int(p)) for p in pitch]
    custom = np.stack([names, notes.velocity[index], start_s.round(2),
                       (end_s - start_s).round(2), index], axis=1) if len(index) else None
    return go.Bar(
        orientation="h", base=start_s, x=end_s - start_s, y=pitch, width=0.85, name=name,
        marker=dict(color=colour, line=dict(width=0)), customdata=custom,
        unselected=dict(marker=dict(opacity=1.0)),  # a click picks a query; don't dim the rest
        hovertemplate=("<b>%{customdata[0]}</b> (note %{customdata[4]})<br>velocity "
                       "%{customdata[1]}<br>start %{customdata[2]} s<br>length %{customdata[3]} s"
                       "<extra>" + name + "</extra>"),
    )


def note_label(notes: NoteArrays, note: int) -> str:
    """A note named as a musician reads it: pitch and onset time ("E4 at 3.25 s, note 12")."""
    start = float(_seconds(notes.start_step[note]))
    return f"{pitch_to_name(int(notes.pitch[note]))} at {start:.2f} s (note {note})"


def piano_roll(notes: NoteArrays, is_primer: np.ndarray, title: str = "",
               names: tuple[str, str] = ("primer", "generated"),
               colours: tuple[str, str] = (PRIMER_COLOUR, GENERATED_COLOUR)) -> go.Figure:
    """Notes as horizontal bars (time in s by MIDI pitch); primer and generated in two colours
    (`names`: their legend entries, e.g. kept and regenerated)."""
    is_primer = np.asarray(is_primer, dtype=bool)
    fig = go.Figure()
    for name, mask, colour in ((names[0], is_primer, colours[0]),
                               (names[1], ~is_primer, colours[1])):
        fig.add_trace(_note_trace(notes, np.flatnonzero(mask), name, colour))
    low, high = (int(notes.pitch.min()), int(notes.pitch.max())) if len(notes) else (48, 72)
    low, high = max(0, low - 3), min(127, high + 3)
    c_pitches = [p for p in range(low, high + 1) if p % 12 == 0]
    fig.update_layout(
        title=title, barmode="overlay", height=420, margin=dict(l=50, r=10, t=40, b=40),
        xaxis_title="time (s)", yaxis_title="pitch", legend=dict(orientation="h", y=1.08),
        plot_bgcolor="#fafafa", bargap=0,
    )
    fig.update_yaxes(range=[low - 0.5, high + 0.5], tickvals=c_pitches,
                     ticktext=[pitch_to_name(p) for p in c_pitches], gridcolor="#e6e6e6")
    fig.update_xaxes(gridcolor="#e6e6e6", rangemode="tozero")
    return fig


def mark_span(fig: go.Figure, start_s: float, end_s: float, label: str = "regenerated",
              outline_only: bool = False) -> go.Figure:
    """Shade the time span start_s..end_s of a piano roll (behind the notes), labelled at the top;
    `outline_only` draws a dashed frame instead (a span about to be regenerated)."""
    style = (dict(fillcolor="rgba(0,0,0,0)", line=dict(color=SPAN_COLOUR, width=1.5, dash="dash"))
             if outline_only else dict(fillcolor=SPAN_COLOUR, opacity=0.15, line_width=0))
    fig.add_vrect(x0=start_s, x1=end_s, layer="below", annotation_text=label,
                  annotation_position="top left", **style)
    return fig


def _arc_path(x0: float, y0: float, x1: float, y1: float) -> tuple[np.ndarray, np.ndarray]:
    """A quadratic Bezier bulging upwards between two notes, higher for longer spans."""
    t = np.linspace(0.0, 1.0, ARC_POINTS)
    cx, cy = (x0 + x1) / 2, max(y0, y1) + 2.0 + 1.5 * min(abs(x1 - x0), 8.0)
    x = (1 - t) ** 2 * x0 + 2 * (1 - t) * t * cx + t**2 * x1
    y = (1 - t) ** 2 * y0 + 2 * (1 - t) * t * cy + t**2 * y1
    return x, y


def _note_centre(notes: NoteArrays, note: int) -> tuple[float, float]:
    start_s, end_s = _seconds(notes.start_step[note]), _seconds(notes.end_step[note])
    return float(start_s + min(end_s - start_s, 0.25) / 2), float(notes.pitch[note])


def add_arcs(fig: go.Figure, notes: NoteArrays, query_note: int, arcs: list[Arc]) -> go.Figure:
    """Draw arcs from the query note back to attended notes: colour = head, width/opacity = weight.

    Returns the same figure (arcs added as line traces, the query note marked).
    """
    strongest = max((arc.weight for arc in arcs), default=1.0)
    qx, qy = _note_centre(notes, query_note)
    arc_top = qy
    shown: set[int] = set()
    for arc in sorted(arcs, key=lambda a: a.weight):  # strongest drawn last, on top
        kx, ky = _note_centre(notes, arc.key_note)
        x, y = _arc_path(kx, ky, qx, qy)
        arc_top = max(arc_top, float(y.max()))
        share = arc.weight / strongest
        colour = HEAD_COLOURS[arc.head % len(HEAD_COLOURS)]
        fig.add_trace(go.Scatter(
            x=x, y=y, mode="lines", line=dict(color=colour, width=1.5 + 4.5 * share),
            opacity=0.45 + 0.55 * share, name=f"head {arc.head}", legendgroup=f"head{arc.head}",
            showlegend=arc.head not in shown,
            hovertemplate=(f"head {arc.head}: {arc.weight:.2f} on "
                           f"{pitch_to_name(int(notes.pitch[arc.key_note]))} "
                           f"(note {arc.key_note})<extra></extra>"),
        ))
        shown.add(arc.head)
    fig.add_trace(go.Scatter(
        x=[qx], y=[qy], mode="markers", name="query note",
        marker=dict(color=QUERY_COLOUR, size=13, symbol="star", line=dict(color="white", width=1)),
        hovertemplate=f"query: {note_label(notes, query_note)}<extra></extra>",
    ))
    y_range = fig.layout.yaxis.range
    if y_range is not None and arc_top + 1 > y_range[1]:
        fig.update_yaxes(range=[y_range[0], arc_top + 1])
    return fig


def attention_heatmap(matrix: np.ndarray, labels: list[str], title: str = "") -> go.Figure:
    """Queries (rows) x keys (columns) heatmap with token names on both axes.

    The colour scale tops out at the largest weight below the first row: the context's first
    token can only attend to itself (weight 1), which would wash out everything else.
    """
    positions = list(range(len(labels)))
    zmax = float(np.max(matrix[1:])) if len(matrix) > 1 else None
    hover = [[f"{labels[q]} -> {labels[k]}" for k in positions] for q in positions]
    fig = go.Figure(go.Heatmap(
        z=matrix, x=positions, y=positions, colorscale="Viridis", zmin=0.0, zmax=zmax,
        customdata=hover, hovertemplate="%{customdata}<br>weight %{z:.3f}<extra></extra>",
        colorbar=dict(title="weight"),
    ))
    step = max(1, -(-len(labels) // 24))  # at most ~24 readable tick labels
    ticks = positions[::step]
    fig.update_layout(title=title, height=560, margin=dict(l=130, r=10, t=40, b=130))
    fig.update_xaxes(tickvals=ticks, ticktext=[labels[i] for i in ticks], title="key (attended)",
                     tickangle=-60)
    fig.update_yaxes(tickvals=ticks, ticktext=[labels[i] for i in ticks], title="query",
                     autorange="reversed")
    return fig


def surprisal_roll(notes: NoteArrays, surprisal: np.ndarray, is_primer: np.ndarray,
                   title: str = "") -> go.Figure:
    """The piano roll with each note coloured by its surprisal (nats; NaN: not scored, grey),
    primer notes outlined, and a line where the primer ends."""
    surprisal = np.asarray(surprisal, dtype=np.float64)
    is_primer = np.asarray(is_primer, dtype=bool)
    fig = piano_roll(notes, is_primer, title)
    fig.data = ()
    start_s, end_s = _seconds(notes.start_step), _seconds(notes.end_step)
    scored = np.isfinite(surprisal)
    top = float(np.nanpercentile(surprisal, 98)) if scored.any() else 1.0
    names = [pitch_to_name(int(p)) for p in notes.pitch]
    part = np.where(is_primer, "primer", "new")
    shown = np.where(scored, np.round(surprisal, 2).astype(str), "not scored")
    custom = np.stack([names, start_s.round(2), shown, part, np.arange(len(notes))], axis=1) \
        if len(notes) else None
    fig.add_trace(go.Bar(
        orientation="h", base=start_s, x=end_s - start_s, y=notes.pitch, width=0.85,
        name="notes", showlegend=False, customdata=custom,
        marker=dict(color=np.where(scored, surprisal, 0.0), colorscale=SURPRISAL_SCALE, cmin=0.0,
                    cmax=max(top, 1e-6), colorbar=dict(title="nats"),
                    line=dict(color=np.where(is_primer, "#333333", "rgba(0,0,0,0)"), width=1)),
        hovertemplate=("<b>%{customdata[0]}</b> at %{customdata[1]} s (note %{customdata[4]}, "
                       "%{customdata[3]})<br>surprisal %{customdata[2]} nats<extra></extra>"),
    ))
    if is_primer.any() and (~is_primer).any():
        fig.add_vline(x=float(start_s[~is_primer].min()), line=dict(color="#555", dash="dot"),
                      annotation_text="primer | new", annotation_position="top left")
    return fig
