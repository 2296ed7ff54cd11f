"""Live MIDI ports: list them, open an input and an output, and turn port messages into key
events and back. The only module that opens ports (midi_io reads and writes files).

Ports go through mido's port API over python-rtmidi, an optional extra (`pip install -e
".[live]"`): it is imported when a port is first used, and its absence is one clear line.
"""

from __future__ import annotations

LIVE_HINT = ('MIDI ports need python-rtmidi, which is not installed: pip install -e ".[live]" '
             '(or pip install python-rtmidi)')


class PortError(RuntimeError):
    """A port that cannot be used; str() is one line saying why and what to do."""


def _ports_backend():
    """mido, with its rtmidi backend checked to be there."""
    try:
        import rtmidi  # noqa: F401  (mido's default port backend)
    except ImportError as exc:
        raise PortError(LIVE_HINT) from exc
    import mido

    return mido


def port_names() -> tuple[list[str], list[str]]:
    """(input port names, output port names) of this machine."""
    mido = _ports_backend()
    try:
        return list(mido.get_input_names()), list(mido.get_output_names())
    except Exception as exc:  # rtmidi raises its own errors where no MIDI system runs
        raise PortError(f"cannot list MIDI ports: {exc}") from exc


def pick_port(asked: str, names: list[str], what: str) -> str:
    """The port `asked` names: exactly, else the one name it is part of (case-insensitive)."""
    if asked in names:
        return asked
    found = [name for name in names if asked.lower() in name.lower()]
    if len(found) == 1:
        return found[0]
    known = ", ".join(repr(n) for n in names) or "none"
    why = "several match" if found else "none matches"
    raise PortError(f"no MIDI {what} port {asked!r} ({why}; {what} ports: {known}; "
                    f"musicgpt duet --list-ports lists them)")


def open_ports(in_name: str | None, out_name: str | None):
    """(input port or None, output port or None), opened by name (see `pick_port`)."""
    mido = _ports_backend()
    inputs, outputs = port_names()
    try:
        inport = mido.open_input(pick_port(in_name, inputs, "input")) if in_name else None
        outport = mido.open_output(pick_port(out_name, outputs, "output")) if out_name else None
    except PortError:
        raise
    except Exception as exc:
        raise PortError(f"cannot open MIDI port: {exc}") from exc
    return inport, outport


def message_to_key(message) -> tuple[str, int, int] | None:
    """A port message as (kind, pitch, value), kinds as midi_io.midi_file_to_performance names
    them; None for anything else (drums on channel 10 included)."""
    if getattr(message, "channel", 9) == 9:
        return None
    if message.type == "note_on" and message.velocity > 0:
        return ("note_on", message.note, message.velocity)
    if message.type in ("note_on", "note_off"):
        return ("note_off", message.note, 0)
    if message.type == "control_change" and message.control == 64:
        return ("pedal", 0, message.value)
    return None


def key_to_message(kind: str, pitch: int, value: int, channel: int = 0):
    """A key event as a mido message on `channel` (0-15)."""
    import mido

    if kind == "note_on":
        return mido.Message("note_on", note=pitch, velocity=value, channel=channel)
    if kind == "note_off":
        return mido.Message("note_off", note=pitch, velocity=0, channel=channel)
    return mido.Message("control_change", control=64, value=value, channel=channel)
