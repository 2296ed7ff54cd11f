"""Every sampling setting in one place: `SamplingSettings`, whose fields carry their default,
their rule, their help, their CLI flag and their app widget (`Option`). The CLI's flags
(`add_flags`, `from_flags`), the app's sidebar (app.py walks `widget_options`) and the
checkpoint's sampling fields (`Config`, `CHECKPOINT_FIELDS`) are derived from here, so a new
setting is one field here plus the logic that reads it. No torch import: the CLI builds its
parser from this module before it knows whether it needs a model.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import numbers
from collections.abc import Callable
from dataclasses import dataclass, field, fields
from typing import Any

from .controls import KEY_NAMES, parse_key, parse_pitch_range, parse_velocity_range, pitch_name

MAX_CANDIDATES = 16
MAX_DENSITY = 40.0  # notes per second; real piano music's busiest passages reach ~25


@dataclass(frozen=True)
class Widget:
    """How the app shows a setting: a `kind` of "slider", "number", "select" or "range" over
    `low`..`high` (by `step`) or `choices`; the widget's `off` value means None."""

    label: str
    kind: str
    low: float | None = None
    high: float | None = None
    step: float | None = None
    choices: tuple = ()
    off: Any = None
    needs_styles: bool = False  # shown disabled for a checkpoint without styles
    format: Callable[[Any], str] | None = None  # how a select or range shows its values


@dataclass(frozen=True)
class Option:
    """One setting's rule (`ok`, said as `want`), help and, where it has them, its CLI flag and
    app widget. `checkpoint`: its default is the checkpoint's own (config.json). `parse`: the
    flag's text -> value (raising ValueError); `off`: the flag value meaning None ("0 = off");
    `invert`: a store-true flag setting a boolean to False; `switch`: one setting it to True;
    `commands`: where the flag is."""

    help: str
    ok: Callable[[Any], bool] = lambda value: True
    want: str = ""
    flag: str | None = None
    parse: Callable[[str], Any] | None = None
    off: Any = None
    invert: bool = False
    switch: bool = False
    checkpoint: bool = False
    commands: tuple[str, ...] = ("generate", "infill", "duet")
    widget: Widget | None = None


def setting(default, help: str, **option) -> Any:
    return field(default=default, metadata={"option": Option(help, **option)})


def _finite(low: float, high: float = math.inf, low_open: bool = False,
            high_open: bool = False) -> Callable[[Any], bool]:
    def ok(value) -> bool:
        if isinstance(value, bool) or not isinstance(value, numbers.Real):
            return False
        above = value > low if low_open else value >= low
        below = value < high if high_open else value <= high
        return math.isfinite(value) and above and below
    return ok


def _integer(value) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def _seconds_or_none(value) -> bool:
    return value is None or _finite(0, low_open=True)(value)


def _range_within(low: int, high: int) -> Callable[[Any], bool]:
    def ok(value) -> bool:
        return value is None or (isinstance(value, tuple) and len(value) == 2
                                 and all(_integer(v) for v in value)
                                 and low <= value[0] <= value[1] <= high)
    return ok


@dataclass(frozen=True)
class SamplingSettings:
    temperature: float = setting(
        1.0, "default: the checkpoint's (1.0 for the shipped model)", ok=_finite(0, low_open=True),
        want="a finite number > 0", flag="--temperature", parse=float, checkpoint=True,
        widget=Widget("Temperature", "slider", 0.1, 2.0, 0.05))
    top_k: int = setting(
        0, "0 = off; default: the checkpoint's (off for the shipped model)",
        ok=lambda v: _integer(v) and v >= 0, want=">= 0 (0 = off)", flag="--top-k",
        parse=int, checkpoint=True, widget=Widget("Top-k (0 = off)", "number", 0, 512, 1))
    top_p: float = setting(
        1.0, "1 = off; default: the checkpoint's", ok=_finite(0, 1, low_open=True),
        want="in (0, 1] (1 = off)", flag="--top-p", parse=float, checkpoint=True,
        widget=Widget("Top-p (1 = off)", "slider", 0.05, 1.0, 0.01))
    min_p: float = setting(
        0.0, "keep the values of an event type at least MIN_P times as likely as its likeliest; "
        "0 = off; default: the checkpoint's", ok=_finite(0, 1, high_open=True),
        want="in [0, 1) (0 = off)", flag="--min-p", parse=float, checkpoint=True,
        widget=Widget("Min-p (0 = off)", "slider", 0.0, 0.5, 0.01))
    # top-k/top-p/min-p cut only pitches and velocities (`scoring.truncate`)
    within_type: bool = setting(True, "cut within event types")
    # With a style: logits = unstyled + (1 + style_guidance) * (styled - unstyled), the
    # unstyled ones from the same model without the style token (classifier-free guidance; the
    # model learnt both, style_drop in training). 0 = off; it costs a second decode per step.
    style_guidance: float = setting(
        0.0, "with --style: how much further than the style token alone to push towards the "
        "style (classifier-free guidance; 0 = off, costs a second decode per step; default: the "
        "checkpoint's)", ok=_finite(0, 10), want="in [0, 10] (0 = off)", flag="--style-guidance",
        parse=float, checkpoint=True,
        widget=Widget("Style guidance (0 = off)", "slider", 0.0, 4.0, 0.25, needs_styles=True))
    grammar: bool = setting(True, "do not mask impossible events", flag="--no-grammar",
                            invert=True, commands=("generate",))
    # Release a note that has sounded this long (None = never). The default model forgets to end
    # notes (12% of its notes reach 6 s, even before the window first slides), and past the
    # context it cannot see old NOTE_ONs at all: without this guard it left ~13 notes per 30 s
    # sample sounding for 10 s. Real piano music holds 0.36% of its notes this long (ASAP +
    # POP909 validation split).
    max_note_s: float | None = setting(
        6.0, "release a note held this long (default 6; 0 = never)", ok=_seconds_or_none,
        want="> 0, or None (off)", flag="--max-note-seconds", parse=float, off=0.0,
        commands=("generate",))
    # Time shifts that would leave nothing sounding for longer than this, once the music has
    # started, are masked (None = never): the model then strikes a note (or ends the piece).
    # Samples had 3 s or more of dead air in 5% of pieces; real music has none that long.
    max_silence_s: float | None = setting(
        2.0, "once the music has started, never let nothing sound for longer (default 2; "
        "0 = off)", ok=_seconds_or_none, want="> 0, or None (off)", flag="--max-silence-seconds",
        parse=float, off=0.0)
    # The same before the first new note: at most this long before the music starts (None =
    # never). A third of the training files open with a lead-in (MIDI files' count-in
    # silence), and the model learnt to open with up to 20 s of nothing.
    max_lead_in_s: float | None = setting(
        0.5, "the first new note comes within this long (default 0.5; 0 = off)",
        ok=_seconds_or_none, want="> 0, or None (off)", flag="--max-lead-in-seconds", parse=float,
        off=0.0)
    # A note that has sounded this long gets RELEASE_RAMP_PER_S more log-odds of its NOTE_OFF
    # per second held past it (None = never), so a long note ends on its own before the
    # max_note_s guard has to end it: the mean share of a piece's notes held to the guard went
    # from 1.8% to 1.0% (real music: 0.6%; 1% of its notes last 3 s or more).
    release_ramp_s: float | None = setting(3.0, "push a note held this long to end",
                                           ok=_seconds_or_none, want="> 0, or None (off)")
    # Write this many candidates per piece (in one batch) and keep the best (candidates.py): a
    # piece that fails the per-piece checks is kept only when every candidate does. Best of 3
    # took pieces that fail from 8% to 0% and costs 2.6-4x the time at batch 1 on a CPU.
    candidates: int = setting(
        1, "write N candidates per piece (or span) in one batch and keep the best by the "
        "per-piece checks (no dead air, drone or wall; the controls asked for); default: the "
        "checkpoint's", ok=lambda v: _integer(v) and 1 <= v <= MAX_CANDIDATES,
        want=f"in 1..{MAX_CANDIDATES}", flag="--candidates", parse=int, checkpoint=True,
        commands=("generate", "infill"),
        widget=Widget("Candidates per sample", "slider", 1, 4, 1))
    # With the grammar mask, keep the mass the model gives to a release: a NOTE_OFF of a silent
    # pitch counts for the sounding pitches' NOTE_OFFs (in proportion), a NOTE_ON of a sounding
    # pitch for that pitch's NOTE_OFF (a re-strike starts with the release). Plain masking hands
    # that mass (~5% per step for the default model) to every other event, so samples under-
    # release and pile up notes.
    keep_release_mass: bool = setting(
        True, "mask impossible events without handing their release mass to the sounding notes "
        "(the sampler before 2026-12; samples hold more notes)", flag="--plain-mask",
        invert=True, commands=("generate",))
    # When the window slides past the context (or an infill keeps only the prefix's tail),
    # restate the notes still sounding at its new start (restate.py), so the model sees every
    # note it may have to release. Off: measured, it did not help (generate: notes held to the
    # guard 1.9% vs 2.0% of a piece's notes; infill: drones 37% vs 13% of spans).
    restate_sounding: bool = setting(False, "restate sounding notes when the window slides")
    # Past the context, roll the KV cache (decode.py; the compiled step, relative attention)
    # instead of re-prefilling a window: every token's keys and values are computed once. Off:
    # its validation NLL past the context is 0.2% higher (+0.004 nats/token on 88 pieces).
    rolling_cache: bool = setting(
        False, "past the context, roll the KV cache instead of re-prefilling a window (faster "
        "for long pieces and best of N; +0.2%% NLL past the context)", flag="--rolling-cache",
        switch=True, commands=("generate",))
    # -- controls (controls.py) --
    key: str | None = setting(
        None, "write in this key, e.g. 'E minor', 'Bb major', 'F#m' (any of the 24)",
        ok=lambda v: v is None or v in KEY_NAMES, want="one of the 24 keys, e.g. 'E minor'",
        flag="--key", parse=parse_key,
        widget=Widget("Key", "select", choices=(None, *KEY_NAMES),
                      format=lambda v: "any" if v is None else v))
    density: float | None = setting(
        None, "about this many notes per second (e.g. 3 sparse, 10 busy)",
        ok=lambda v: v is None or _finite(0, MAX_DENSITY, low_open=True)(v),
        want=f"in (0, {MAX_DENSITY:g}] notes per second", flag="--density", parse=float,
        widget=Widget("Density (notes/s, 0 = free)", "slider", 0.0, 20.0, 0.5, off=0.0))
    pitch_range: tuple[int, int] | None = setting(
        None, "every new note within LOW-HIGH, MIDI numbers or names (C4 = 60), e.g. C3-C6",
        ok=_range_within(0, 127), want="LOW <= HIGH within 0..127", flag="--pitch-range",
        parse=parse_pitch_range,
        widget=Widget("Pitch range", "range", 21, 108, 1, off=(21, 108), format=pitch_name))
    dynamics: tuple[int, int] | None = setting(
        None, "every new note's velocity within LOW-HIGH (1-127), e.g. 30-70 for soft",
        ok=_range_within(1, 127), want="LOW <= HIGH within 1..127", flag="--dynamics",
        parse=parse_velocity_range,
        widget=Widget("Dynamics (velocity)", "range", 1, 127, 1, off=(1, 127)))

    def __post_init__(self) -> None:
        for f in fields(self):
            value = getattr(self, f.name)
            if isinstance(value, list):  # JSON has no tuples
                object.__setattr__(self, f.name, value := tuple(value))
            option = f.metadata["option"]
            if not option.ok(value):
                raise ValueError(f"{f.name} must be {option.want}, got {value!r}")

    @classmethod
    def from_config(cls, config, **overrides) -> SamplingSettings:
        """The checkpoint's own defaults (CHECKPOINT_FIELDS) and any field from `overrides`;
        one of the checkpoint's given as None keeps the checkpoint's."""
        own = {name: getattr(config, name, OPTIONS[name].default) for name in CHECKPOINT_FIELDS}
        given = {k: v for k, v in overrides.items() if v is not None or k not in own}
        return cls(**{**own, **given})

    @property
    def truncates(self) -> bool:
        """Whether top-k, top-p or min-p is on."""
        return self.top_k > 0 or self.top_p < 1 or self.min_p > 0

    @property
    def controls(self) -> bool:
        """Whether a control (key, density, pitch range, dynamics) is set."""
        return any(getattr(self, name) is not None for name in CONTROL_FIELDS)

    def replace(self, **changes) -> SamplingSettings:
        return dataclasses.replace(self, **changes)


@dataclass(frozen=True)
class _Field:
    name: str
    default: Any
    option: Option


OPTIONS = {f.name: _Field(f.name, f.default, f.metadata["option"])
           for f in fields(SamplingSettings)}
# the fields a checkpoint's config.json sets the defaults of (Config has a field for each)
CHECKPOINT_FIELDS = tuple(name for name, f in OPTIONS.items() if f.option.checkpoint)
CONTROL_FIELDS = ("key", "density", "pitch_range", "dynamics")


def rule(name: str, value) -> tuple[bool, str]:
    """(whether `value` is valid for setting `name`, the rule in words), for Config's checks."""
    option = OPTIONS[name].option
    return option.ok(value), option.want


def widget_options() -> list[_Field]:
    """The settings the app shows, in order."""
    return [f for f in OPTIONS.values() if f.option.widget is not None]


def add_flags(parser: argparse.ArgumentParser, command: str) -> None:
    """One flag per setting that has one for `command` (default None: the setting's, or the
    checkpoint's, default)."""
    for f in OPTIONS.values():
        option = f.option
        if option.flag is None or command not in option.commands:
            continue
        if option.invert or option.switch:
            parser.add_argument(option.flag, dest=f.name, default=None, help=option.help,
                                action="store_true" if option.switch else "store_false")
        else:
            parser.add_argument(option.flag, dest=f.name, default=None, help=option.help,
                                metavar=option.flag.lstrip("-").upper().replace("-", "_"))


def from_flags(args: argparse.Namespace, config) -> SamplingSettings:
    """The settings the flags in `args` ask for, the checkpoint's (`config`) or the library's
    defaults for the rest; ValueError naming the flag for a bad value."""
    given = {}
    for f in OPTIONS.values():
        value = getattr(args, f.name, None)
        if value is None or f.option.flag is None:
            continue
        text, option = value, f.option
        if isinstance(value, str) and option.parse is not None:
            try:
                value = option.parse(value)
            except ValueError as exc:
                reason = str(exc) if option.parse not in (int, float) else f"want {option.want}"
                raise ValueError(f"{option.flag} {text}: {reason}") from None
        value = None if option.off is not None and value == option.off else value
        if not option.ok(value):
            raise ValueError(f"{option.flag} {text}: {f.name} must be {option.want}")
        given[f.name] = value
    return SamplingSettings.from_config(config, **given)
