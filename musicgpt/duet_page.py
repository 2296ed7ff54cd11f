"""The app's Duet page (Streamlit only): the browser component (duet_component/index.html: piano,
keyboard, Web MIDI, sound, live roll), one `duet_web.DuetSession` per browser session in
st.session_state, its status, the whole duet's roll and its `.mid`.

Each message of the component reruns the script; the page feeds it to the session before it
draws the component, so the answer's first notes go out with this run's component and the rest
follows in one more run (`DuetSession.draw`, then st.rerun). The model is the app's shared
sampler (read only: a duet keeps its KV cache itself); its drawing waits for `turn` (app.py's
per-checkpoint `sampling_turn`), like generate and infill.
"""

from __future__ import annotations

import statistics
from collections.abc import Callable
from contextlib import AbstractContextManager
from dataclasses import replace

import numpy as np
import streamlit as st
import streamlit.components.v1 as components

from . import duet_sound, duet_web, plots
from .duet import MODEL, PLAYER, Duet, TurnSettings
from .duet_live import duet_to_midi_bytes
from .events import NoteArrays
from .sampling import SamplingSettings

KEY = "duet_component"  # session_state: the component's latest message
SESSION = "duet_session"  # session_state: (recipe, DuetSession)
NEW = "duet_new"  # session_state: a new duet was asked for
STREAM_S = 0.4  # while you play, your keys reach Python at most this often (prefilled then)
TURNS = TurnSettings()


@st.cache_resource(show_spinner=False)
def _component():
    folder, problem = duet_sound.component_dir()
    return components.declare_component("musicgpt_duet", path=str(folder)), problem


def show(path: str, opts: dict, settings: SamplingSettings, load: Callable,
         turn: Callable[[], AbstractContextManager]) -> None:
    """The page. `opts`: the sidebar's values (style, seed, dtype); `settings`: its sampling
    settings; `load()`: the sampler model; `turn()`: holds the checkpoint's sampling turn."""
    st.subheader("Duet: play a phrase, pause, hear the answer")
    st.caption("Click the roll below once, then play with the mouse, your computer keyboard (a "
               "s d f ... white keys, w e t y u black keys, z / x octave) or a MIDI keyboard "
               "(Chrome and Edge, Web MIDI). When you pause for "
               f"{TURNS.pause_s:g} s (or after {TURNS.max_phrase_s:g} s) the model answers for "
               "about as long; play again to cut it short. The sidebar's style, temperature and "
               "controls apply.")
    recipe = (path, opts["dtype"], opts["style"], int(opts["seed"]), settings)
    session = _session(recipe, load, turn)
    problem = None
    try:
        message = duet_web.parse_message(st.session_state.get(KEY))
    except duet_web.MessageError as exc:
        message, problem = None, str(exc)
    if message is not None:
        with turn():
            session.handle(message)
    component, sound_problem = _component()
    component(key=KEY, default=None, turns=dict(pause_s=TURNS.pause_s,
                                                max_phrase_s=TURNS.max_phrase_s),
              stream_s=STREAM_S, sound=None if sound_problem else duet_sound.manifest(),
              sound_problem=sound_problem,
              colours=dict(player=plots.PRIMER_COLOUR, model=plots.GENERATED_COLOUR),
              **session.reply())
    if problem is not None:
        st.error(f"The duet page sent a message that cannot be read ({problem}). It was "
                 "ignored; your duet so far is kept.")
    _summary(session, recipe)
    if session.pending():  # the answer's first notes are out: draw the rest, send it
        with turn():
            session.draw()
        st.rerun()


def _session(recipe: tuple, load: Callable, turn) -> duet_web.DuetSession:
    """This browser session's duet: kept while the sidebar's settings stay, made afresh (with
    them) when it is empty or a new duet is asked for."""
    kept = st.session_state.get(SESSION)
    if kept is not None and not st.session_state.pop(NEW, False):
        old_recipe, session = kept
        if old_recipe == recipe or any(session.counts()) or session.duet.turns:
            return session
    ident = 1 if kept is None else kept[1].id + 1
    path, dtype, style, seed, settings = recipe
    with turn():
        duet = Duet(load(), replace(settings, candidates=1), duet_web.page_turns(TURNS),
                    style=style, seed=seed)
    session = duet_web.DuetSession(duet, ident)
    st.session_state[SESSION] = (recipe, session)
    return session


def _summary(session: duet_web.DuetSession, recipe: tuple) -> None:
    duet = session.duet
    played, answered = session.counts()
    latencies = [t.latency_ms for t in duet.turns if t.latency_ms is not None]
    median = (f"; the model's first note took {statistics.median(latencies):.0f} ms to compute "
              "(median)" if latencies else "")
    st.caption(f"{len(duet.turns)} turns: {played} notes of yours, {answered} of musicgpt's"
               f"{median}.")
    if st.session_state[SESSION][0] != recipe:
        st.info("The sidebar's settings changed: they apply to a new duet.")
    left, right = st.columns(2)
    left.download_button("Download the duet (.mid)", duet_to_midi_bytes(duet), "duet.mid",
                         "audio/midi", key="duet_mid", disabled=not (played or answered),
                         help="Your notes on track 'player', the model's on track 'musicgpt'")
    right.button("New duet", key="duet_new_button",
                 on_click=st.session_state.__setitem__, args=(NEW, True),
                 help="Start again (with the sidebar's current settings)")
    if played or answered:
        with st.expander("The whole duet (zoom, hover)"):
            notes, mine = duet_notes(duet)
            st.plotly_chart(plots.piano_roll(notes, mine, "The duet so far",
                                             ("you", "musicgpt")), key="duet_roll")


def duet_notes(duet: Duet) -> tuple[NoteArrays, np.ndarray]:
    """Both players' notes by onset, and which are the player's."""
    yours, its = duet.notes(PLAYER), duet.notes(MODEL)
    cols = [np.concatenate([getattr(yours, f), getattr(its, f)])
            for f in ("pitch", "velocity", "start_step", "end_step")]
    mine = np.concatenate([np.ones(len(yours), bool), np.zeros(len(its), bool)])
    order = np.argsort(cols[2], kind="stable")
    return NoteArrays(*(c[order] for c in cols)), mine[order]
