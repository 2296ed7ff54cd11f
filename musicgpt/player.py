"""A self-contained HTML player: the piano roll on a canvas with a cursor that follows the audio.

`player_html` returns one HTML page (no network: the WAV is a data: URI, the script is inline)
for the app to embed in an iframe (`st.iframe`). While the audio plays, a red line moves across
the roll at `audio.currentTime` and the notes sounding under it light up; clicking the roll
seeks there. The canvas carries the cursor's time in `data-cursor` (seconds, two decimals), which
the browser test reads. Only numbers computed here go into the page, never user text.
"""

from __future__ import annotations

import base64
import json

import numpy as np

from .events import NoteArrays
from .plots import GENERATED_COLOUR, PRIMER_COLOUR
from .vocab import pitch_to_name, steps_to_seconds

ROLL_HEIGHT_PX = 240
AUDIO_HEIGHT_PX = 54
SPAN_COLOUR = "rgba(31,119,180,0.15)"


def roll_data(notes: NoteArrays, is_primer, spans=(), preview=None) -> dict:
    """What the script draws: notes as [start_s, end_s, pitch, is_primer], the pitch range,
    the length in seconds, C-note labels, shaded `spans` and a framed `preview` span."""
    start = steps_to_seconds(np.asarray(notes.start_step, dtype=np.float64))
    end = steps_to_seconds(np.asarray(notes.end_step, dtype=np.float64))
    primer = np.asarray(is_primer, dtype=bool)
    rows = [[round(float(s), 3), round(float(e), 3), int(p), int(k)]
            for s, e, p, k in zip(start, end, notes.pitch, primer, strict=True)]
    low, high = (int(notes.pitch.min()), int(notes.pitch.max())) if len(notes) else (48, 72)
    low, high = max(0, low - 2), min(127, high + 2)
    return dict(
        notes=rows, low=low, high=high,
        seconds=round(max(float(end.max()) if len(end) else 0.0, 1.0), 3),
        labels={str(p): pitch_to_name(p) for p in range(low, high + 1) if p % 12 == 0},
        spans=[[float(a), float(b)] for a, b in spans],
        preview=[float(x) for x in preview] if preview else None,
    )


def player_html(notes: NoteArrays, is_primer, wav: bytes | None, spans=(), preview=None,
                names: tuple[str, str] = ("primer", "generated")) -> str:
    """The player page: roll with a playback cursor, audio controls below (none without `wav`)."""
    data = roll_data(notes, is_primer, spans, preview)
    data["names"] = [str(n) for n in names]
    audio = ("" if wav is None else
             '<audio id="audio" controls preload="auto" src="data:audio/wav;base64,'
             + base64.b64encode(wav).decode("ascii") + '"></audio>')
    return _PAGE.replace("__DATA__", json.dumps(data)).replace("__AUDIO__", audio).replace(
        "__HEIGHT__", str(ROLL_HEIGHT_PX)).replace("__PRIMER__", PRIMER_COLOUR).replace(
        "__GENERATED__", GENERATED_COLOUR).replace("__SPAN__", SPAN_COLOUR)


def player_height(wav: bytes | None) -> int:
    """The iframe height the page needs."""
    return ROLL_HEIGHT_PX + (AUDIO_HEIGHT_PX if wav is not None else 0) + 28


_PAGE = """<!DOCTYPE html>
<html><head><meta charset="utf-8"><style>
body { margin: 0; font: 12px sans-serif; color: #444; }
#roll { width: 100%; height: __HEIGHT__px; display: block; cursor: pointer; }
#bar { display: flex; align-items: center; gap: 12px; margin-top: 4px; }
audio { flex: 1; height: 40px; }
.key { display: inline-block; width: 10px; height: 10px; margin-right: 4px; }
</style></head><body>
<canvas id="roll" data-cursor="0.00" title="Click to play from here"></canvas>
<div id="bar">__AUDIO__<span id="k0"><span class="key" style="background:__PRIMER__"></span><span
 id="n0"></span></span><span id="k1"><span class="key" style="background:__GENERATED__"></span><span
 id="n1"></span></span></div>
<script>
const D = __DATA__;
const cv = document.getElementById("roll"), au = document.getElementById("audio");
D.names.forEach((name, i) => {
  document.getElementById("n" + i).textContent = name;
  if (!name) document.getElementById("k" + i).style.display = "none";
});
const L = 36, R = 6, T = 6, B = 18;
function geometry() {
  const w = cv.clientWidth, h = cv.clientHeight;
  return {w, h, x: s => L + s / D.seconds * (w - L - R),
          y: p => T + (D.high - p) / (D.high - D.low + 1) * (h - T - B),
          rowH: (h - T - B) / (D.high - D.low + 1)};
}
function fit(g) {
  const r = window.devicePixelRatio || 1;
  if (cv.width !== Math.round(g.w * r)) {
    cv.width = Math.round(g.w * r); cv.height = Math.round(g.h * r);
  }
  const c = cv.getContext("2d");
  c.setTransform(r, 0, 0, r, 0, 0);
  return c;
}
function draw(t) {
  const g = geometry(), c = fit(g), plotW = g.w - L - R, plotH = g.h - T - B;
  c.clearRect(0, 0, g.w, g.h);
  c.fillStyle = "#fafafa"; c.fillRect(L, T, plotW, plotH);
  for (const [a, b] of D.spans) {
    c.fillStyle = "__SPAN__"; c.fillRect(g.x(a), T, g.x(b) - g.x(a), plotH);
  }
  if (D.preview) {
    const [a, b] = D.preview;
    c.setLineDash([5, 4]); c.strokeStyle = "#1f77b4"; c.lineWidth = 1.5;
    c.strokeRect(g.x(a), T, g.x(b) - g.x(a), plotH); c.setLineDash([]);
  }
  c.textAlign = "right"; c.textBaseline = "middle";
  for (const p in D.labels) {
    const y = g.y(+p) + g.rowH / 2;
    c.fillStyle = "#e3e3e3"; c.fillRect(L, y, plotW, 1);
    c.fillStyle = "#666"; c.fillText(D.labels[p], L - 4, y);
  }
  const step = [1, 2, 5, 10, 15, 30, 60].find(s => D.seconds / s <= 12) || 120;
  c.textAlign = "center"; c.textBaseline = "top";
  for (let s = 0; s <= D.seconds + 1e-9; s += step) c.fillText(s + " s", g.x(s), g.h - B + 3);
  for (const [s, e, p, k] of D.notes) {
    const on = t !== null && s <= t && t < e;
    const x = g.x(s), y = g.y(p), w = Math.max(1.5, g.x(e) - x), h = Math.max(1.5, g.rowH * 0.9);
    c.fillStyle = k ? "__PRIMER__" : "__GENERATED__";
    c.globalAlpha = on ? 1.0 : 0.85;
    c.fillRect(x, y, w, h);
    if (on) { c.strokeStyle = "#d62728"; c.lineWidth = 1.5; c.strokeRect(x, y, w, h); }
  }
  c.globalAlpha = 1.0;
  if (t !== null) {
    c.fillStyle = "#d62728"; c.fillRect(g.x(Math.min(t, D.seconds)) - 1, T, 2, plotH);
  }
  cv.dataset.cursor = (t || 0).toFixed(2);
}
function now() { return au ? au.currentTime : 0; }
function loop() { draw(now()); if (au && !au.paused) requestAnimationFrame(loop); }
if (au) {
  for (const e of ["play", "seeked", "timeupdate", "pause", "ended"]) au.addEventListener(e, loop);
  cv.addEventListener("click", ev => {
    const s = (ev.offsetX - L) / (cv.clientWidth - L - R) * D.seconds;
    au.currentTime = Math.max(0, Math.min(s, au.duration || D.seconds));
    au.play().catch(() => {}); loop();
  });
}
window.addEventListener("resize", () => draw(now()));
draw(0);
</script></body></html>
"""
