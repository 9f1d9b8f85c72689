"""The sensor stream (148): the frame format, what a link can carry, and the incremental parser.

The :class:`StreamParser` turns whatever the serial port delivered (stream frames, the robot's own ASCII
chatter, line noise) into frozen events; it never raises on bad input, it counts it (the peer sent something
illegal: count it, recover). Time is passed in (``now``), never read, so the parser is deterministic under
test.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Literal

from hal.codec.decode import FrameValues, Layout, reply_length
from hal.errors import StreamBudgetError
from hal.packets import PACKETS, members, pack

_HEADER = 19  # stream frame header byte


def stream_frame_size(packet_ids: Sequence[int]) -> int:
    """Bytes on the wire per stream frame: header, n-bytes, ids, data, checksum."""
    return 3 + len(packet_ids) + reply_length(packet_ids)


def stream_budget(baud_rate: int) -> int:
    """Bytes the link carries in one 15 ms stream slot (10 bits per byte): 172 at 115200."""
    return baud_rate * 15 // 10_000


def check_stream_budget(packet_ids: Sequence[int], baud_rate: int) -> None:
    size, budget = stream_frame_size(packet_ids), stream_budget(baud_rate)
    if size > budget:
        raise StreamBudgetError(
            f"a stream of {list(packet_ids)} is {size} bytes per frame but {baud_rate} baud carries only "
            f"{budget} bytes per 15 ms; request fewer packets (frames would be corrupted)"
        )


def frame_from_body(body: bytes | bytearray) -> bytes:
    """Wrap ``[id1][data1]…[idN][dataN]`` as a stream frame: header 19, n-bytes, body, and the checksum that
    makes the sum of every byte, header included, 0 mod 256 (the simulator sends exactly this). n-bytes is one
    byte: an oversized body wraps it, as a robot asked for too much would."""
    frame = bytearray((_HEADER, len(body) & 0xFF))
    frame += body
    frame.append(-sum(frame) & 0xFF)
    return bytes(frame)


def encode_frame(packet_ids: Sequence[int], values: Mapping[str, int]) -> bytes:
    """Build a stream frame, as the robot would. For tests, benchmarks and simulators."""
    body = bytearray()
    for pid in packet_ids:
        body.append(pid)
        for member in members(pid):
            body += pack(member, values.get(PACKETS[member].key, 0))
    if len(body) > 255:
        raise ValueError(
            f"a stream frame body holds at most 255 bytes (n-bytes is one byte), got {len(body)}"
        )
    return frame_from_body(body)


@dataclass(frozen=True, slots=True)
class SensorFrame:
    """A stream frame whose checksum held. ``values`` maps ``PacketSpec.key`` to the decoded integer."""

    values: FrameValues
    ids: tuple[int, ...]
    at: float


@dataclass(frozen=True, slots=True)
class CorruptFrame:
    """A frame-shaped run of bytes whose checksum failed; the parser resynchronised after its header."""

    ids: tuple[int, ...]
    length: int
    at: float


@dataclass(frozen=True, slots=True)
class TextLine:
    """A line of the robot's own ASCII output (boot banner, status text) that no other event covers."""

    text: str
    at: float


@dataclass(frozen=True, slots=True)
class BatteryLine:
    """The once-a-second ``bat:`` line a docked robot prints, parsed."""

    minutes: int
    seconds: int
    millivolts: int
    milliamps: int
    tenths_deg_c: int
    mah: int
    state: int
    mode: int
    text: str
    at: float


@dataclass(frozen=True, slots=True)
class FirmwareBanner:
    """The firmware release line of the boot banner, e.g. ``r3-robot/tags/release-stm32-3.7.1:6174 CLEAN``."""

    version: str
    text: str
    at: float


@dataclass(frozen=True, slots=True)
class BootMarker:
    """A 0xFE byte: the robot (re)booted, or is stuck in its bootloader if these keep coming."""

    at: float


StreamEvent = SensorFrame | CorruptFrame | TextLine | BatteryLine | FirmwareBanner | BootMarker


@dataclass(frozen=True, slots=True)
class ParserStats:
    frames_ok: int
    frames_corrupt: int
    bytes_discarded: int
    resyncs: int
    text_lines: int
    overflows: int


_BOOT = 0xFE
_TEXT_RUN = re.compile(rb"[\t\n\r\x20-\x7e]+")
_BAT = re.compile(
    r"bat:\s+min\s+(-?\d+)\s+sec\s+(-?\d+)\s+mV\s+(-?\d+)\s+mA\s+(-?\d+)\s+tenths-deg-C\s+(-?\d+)"
    r"\s+mAH\s+(-?\d+)\s+state\s+(-?\d+)\s+mode\s+(-?\d+)"
)
_FIRMWARE = re.compile(r"r3[-_]robot/tags/.*?(\d+\.\d+\.\d+)(?=[:\s]|$)")


def parse_text_line(text: str, at: float) -> TextLine | BatteryLine | FirmwareBanner:
    """Classify one line of the robot's ASCII output."""
    bat = _BAT.search(text)
    if bat:
        m, s, mv, ma, temp, mah, state, mode = (int(g) for g in bat.groups())
        return BatteryLine(m, s, mv, ma, temp, mah, state, mode, text, at)
    fw = _FIRMWARE.search(text)
    if fw:
        return FirmwareBanner(fw.group(1), text, at)
    return TextLine(text, at)


class StreamParser:
    """Incremental parser for everything the robot sends while a Stream (148) runs.

    Frames are found by header (19) and checked with the header-inclusive checksum; a frame matching the
    expected layout is decoded with one precompiled struct. Anything between frames is either the robot's
    ASCII text (collected into lines and classified) or noise (counted and skipped). After a bad checksum the
    search restarts one byte after the bad header, so a real frame hidden inside the bad one is not lost.
    The buffer is capped: if a peer floods it without ever completing a frame, the oldest bytes are dropped.
    """

    def __init__(
        self, ids: Sequence[int] | None = None, *, max_buffer: int = 4096, max_line: int = 256
    ) -> None:
        self._buf = bytearray()
        self._text = bytearray()
        self._layouts: dict[tuple[int, ...], Layout] = {}
        self._layout: Layout | None = None
        self._max_buffer = max(max_buffer, 512)
        self._max_line = max_line
        self.frames_ok = 0
        self.frames_corrupt = 0
        self.bytes_discarded = 0
        self.resyncs = 0
        self.text_lines = 0
        self.overflows = 0
        if ids:
            self.expect(ids)

    def expect(self, ids: Sequence[int]) -> None:
        """Declare the stream list just requested, so its frames take the fast path."""
        key = tuple(ids)
        layout = self._layouts.get(key)
        if layout is None:
            layout = self._layouts[key] = Layout(key)
        self._layout = layout

    def reset(self) -> None:
        """Forget buffered bytes (after a reconnect: a half frame from the old link is meaningless)."""
        self._buf.clear()
        self._text.clear()

    @property
    def stats(self) -> ParserStats:
        return ParserStats(
            self.frames_ok,
            self.frames_corrupt,
            self.bytes_discarded,
            self.resyncs,
            self.text_lines,
            self.overflows,
        )

    @property
    def buffered(self) -> int:
        return len(self._buf)

    def feed(self, data: bytes | bytearray | memoryview, now: float = 0.0) -> list[StreamEvent]:
        """Add received bytes; return the events they complete, in wire order. Never raises on content."""
        buf = self._buf
        buf += data
        events: list[StreamEvent] = []
        if len(buf) > self._max_buffer:
            excess = len(buf) - self._max_buffer
            del buf[:excess]
            self.bytes_discarded += excess
            self.overflows += 1
        end = len(buf)
        pos = 0
        layout = self._layout
        if layout is not None:
            l_nbytes, l_first, l_size = layout.nbytes, layout.ids[0], layout.frame_size
            l_multi = len(layout.ids) > 1
        else:
            l_nbytes = l_first = l_size = -1
            l_multi = False
        append = events.append
        ok = 0
        view = memoryview(buf)
        try:
            while pos < end:
                h = pos if buf[pos] == _HEADER else buf.find(_HEADER, pos)
                if h < 0:
                    self._junk(buf, pos, end, events, now)
                    pos = end
                    break
                if h > pos:
                    self._junk(buf, pos, h, events, now)
                    pos = h
                if end - h < 3:
                    break
                nbytes = buf[h + 1]
                candidate: Layout | None = None
                if nbytes == l_nbytes and buf[h + 2] == l_first:
                    assert layout is not None
                    candidate = layout
                    if l_multi:
                        for off, pid in layout.id_checks:
                            if buf[h + off] != pid:
                                candidate = None
                                break
                    if candidate is not None and h + l_size > end:
                        break
                if candidate is None:
                    walked = self._walk(buf, h, end, nbytes)
                    if walked is None:
                        break
                    if walked is False:
                        self.bytes_discarded += 1
                        self.resyncs += 1
                        self._text.clear()
                        pos = h + 1
                        continue
                    candidate = walked
                size = candidate.frame_size
                if sum(view[h : h + size]) & 0xFF:
                    self.frames_corrupt += 1
                    self.bytes_discarded += 1
                    append(CorruptFrame(candidate.ids, size, now))
                    pos = h + 1
                    continue
                ok += 1
                append(
                    SensorFrame(
                        FrameValues(
                            candidate.keys, candidate.index, candidate.frame_struct.unpack_from(buf, h)
                        ),
                        candidate.ids,
                        now,
                    )
                )
                pos = h + size
        finally:
            view.release()
        self.frames_ok += ok
        if pos:
            del buf[:pos]
        return events

    def _walk(self, buf: bytearray, h: int, end: int, nbytes: int) -> Layout | Literal[False] | None:
        """Read a frame's id list using the packet table: a Layout, None (need more bytes) or False (not a
        frame: unknown id, or the sizes do not add up to n-bytes)."""
        if nbytes == 0:
            return False
        stop = h + 2 + nbytes
        off = h + 2
        ids: list[int] = []
        while off < stop:
            if off >= end:
                return None
            spec = PACKETS.get(buf[off])
            if spec is None:
                return False
            ids.append(spec.id)
            off += 1 + spec.size
        if off != stop:
            return False
        if stop + 1 > end:
            return None
        key = tuple(ids)
        layout = self._layouts.get(key)
        if layout is None:
            if len(self._layouts) > 64:
                self._layouts.clear()
            layout = self._layouts[key] = Layout(key)
        return layout

    def _junk(self, buf: bytearray, start: int, stop: int, events: list[StreamEvent], now: float) -> None:
        segment = bytes(buf[start:stop])
        last = 0
        for match in _TEXT_RUN.finditer(segment):
            if match.start() > last:
                self._noise(segment[last : match.start()], events, now)
            self._add_text(match.group(), events, now)
            last = match.end()
        if last < len(segment):
            self._noise(segment[last:], events, now)

    def _noise(self, chunk: bytes, events: list[StreamEvent], now: float) -> None:
        if chunk.count(_BOOT) == len(chunk):
            events.extend(BootMarker(now) for _ in chunk)
            return
        self.bytes_discarded += len(chunk)
        self.resyncs += 1
        self._text.clear()

    def _add_text(self, chunk: bytes, events: list[StreamEvent], now: float) -> None:
        text = self._text
        text += chunk
        while True:
            nl = text.find(b"\n")
            if nl < 0:
                break
            line = text[:nl].decode("ascii").strip()
            del text[: nl + 1]
            if line:
                self.text_lines += 1
                events.append(parse_text_line(line, now))
        if len(text) > self._max_line:
            self.text_lines += 1
            events.append(TextLine(text.decode("ascii").strip(), now))
            text.clear()
