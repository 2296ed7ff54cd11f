"""Plotly figures for the app: piano roll, attention arcs over it, attention heatmap.

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
HEAD_COLOURS = ("#1f77b4", "#2ca02c", "#9467bd", "#17becf", "#e377c2", "#bcbd22", "#8c564b",
                "#ff7f0e", "#7f7f7f", "#393b79", "#637939", "#843c39")
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


def piano_roll(notes: NoteArrays, is_primer: np.ndarray, title: str = "",
               names: tuple[str, str] = ("primer", "generated")) -> go.Figure:
    """Notes as horizontal bars (time in s by MIDI pitch); primer and generated in two colours
    (`names`: their legend entries, e.g. kept and regenerated)."""
    is_primer = np.asarray(is_primer, dtype=bool)
    fig = go.Figure()
    for name, mask, colour in ((names[0], is_primer, PRIMER_COLOUR),
                               (names[1], ~is_primer, GENERATED_COLOUR)):
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
            x=x, y=y, mode="lines", line=dict(color=colour, width=1 + 5 * share),
            opacity=0.25 + 0.7 * share, name=f"head {arc.head}", legendgroup=f"head{arc.head}",
            showlegend=arc.head not in shown,
            hovertemplate=(f"head {arc.head}: {arc.weight:.2f} on "
                           f"{pitch_to_name(int(notes.pitch[arc.key_note]))} "
                           f"(note {arc.key_note})<extra></extra>"),
        ))
        shown.add(arc.head)
    fig.add_trace(go.Scatter(
        x=[qx], y=[qy], mode="markers", name="query note",
        marker=dict(color=QUERY_COLOUR, size=13, symbol="star", line=dict(color="white", width=1)),
        hovertemplate=f"query: {pitch_to_name(int(qy))} (note {query_note})<extra></extra>",
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
