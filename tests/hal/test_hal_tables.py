"""The packet and opcode tables against the reference TSVs (copied beside this file) and the spec's rules."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from hal import packets
from hal.opcodes import OPCODES, OIMode, Op, data_length
from hal.packets import PACKETS, pack, unpack

DATA = Path(__file__).with_name("hal_data")


def _rows(name: str) -> list[dict[str, str]]:
    with (DATA / name).open(newline="") as f:
        return list(csv.DictReader(f, delimiter="\t"))


PACKET_ROWS = {int(r["id"]): r for r in _rows("oi_packets.tsv")}
OPCODE_ROWS = {int(r["opcode"]): r for r in _rows("oi_opcodes.tsv")}


def test_table_covers_every_reference_packet() -> None:
    """The packet table holds every packet and group of the spec, no more, no less."""
    assert set(PACKETS) == set(PACKET_ROWS)
    assert set(range(7, 59)) <= set(PACKETS)
    assert set(packets.GROUP_IDS) == {0, 1, 2, 3, 4, 5, 6, 100, 101, 106, 107}


@pytest.mark.parametrize("pid", sorted(PACKET_ROWS))
def test_packet_matches_reference(pid: int) -> None:
    """Each packet's size, signedness, range and group members match the spec's table."""
    row, spec = PACKET_ROWS[pid], PACKETS[pid]
    assert spec.id == pid
    assert spec.size == int(row["data_bytes"])
    if row["kind"] == "group":
        assert spec.members == tuple(int(m) for m in row["members"].split(","))
        assert spec.size == sum(PACKETS[m].size for m in spec.members)
    else:
        assert spec.members == ()
        assert spec.signed == (row["signed"] == "yes")
        assert spec.units == row["units"]
        assert (spec.min, spec.max) == (int(row["range_min"]), int(row["range_max"]))


def test_keys_are_unique_snake_case() -> None:
    """Packet keys name RobotState.sensors entries: unique and snake_case."""
    keys = [p.key for p in PACKETS.values()]
    assert len(keys) == len(set(keys))
    assert all(k.replace("_", "").isalnum() and k == k.lower() for k in keys)


def test_group_sizes_from_spec_table() -> None:
    """Group reply sizes as the spec lists them (p.37): 100 is 80 bytes, 6 is 52..."""
    sizes = {0: 26, 1: 10, 2: 6, 3: 10, 4: 14, 5: 12, 6: 52, 100: 80, 101: 28, 106: 12, 107: 9}
    assert {g: PACKETS[g].size for g in sizes} == sizes


@pytest.mark.parametrize("pid", packets.SINGLE_IDS)
def test_pack_unpack_extremes(pid: int) -> None:
    """Every packet packs and unpacks its extremes, and refuses a value one past them."""
    spec = PACKETS[pid]
    bits = 8 * spec.size
    lo, hi = (-(1 << (bits - 1)), (1 << (bits - 1)) - 1) if spec.signed else (0, (1 << bits) - 1)
    for value in (lo, hi, 0):
        raw = pack(pid, value)
        assert len(raw) == spec.size
        assert unpack(pid, raw) == value
    with pytest.raises(ValueError, match=spec.key):
        pack(pid, hi + 1)
    with pytest.raises(ValueError, match=spec.key):
        pack(pid, lo - 1)


def test_big_endian_and_signedness() -> None:
    """Multi-byte packets are big-endian; signed ones are two's complement."""
    assert pack(29, 549) == bytes([2, 37])
    assert unpack(23, b"\xff\x38") == -200
    assert unpack(22, b"\xff\x38") == 0xFF38
    assert unpack(24, b"\xff") == -1
    assert unpack(43, b"\x80\x00") == -32768


def test_pack_wraps_counters_when_asked() -> None:
    assert pack(43, 32768, wrap=True) == b"\x80\x00"
    assert pack(43, -32769, wrap=True) == b"\x7f\xff"
    assert pack(22, 65536 + 5, wrap=True) == b"\x00\x05"


@given(st.integers(-32768, 32767))
def test_signed_roundtrip(value: int) -> None:
    """Any signed 16-bit encoder count survives pack and unpack."""
    assert unpack(43, pack(43, value)) == value


def test_bad_ids_and_sizes_are_clear() -> None:
    """An unknown id, packing a group or a short buffer fails with a message naming the mistake."""
    with pytest.raises(KeyError, match="unknown OI sensor packet id 59"):
        pack(59, 0)
    with pytest.raises(ValueError, match="group"):
        pack(100, 0)
    with pytest.raises(ValueError, match="2 byte"):
        unpack(19, b"\x00")
    assert packets.members(6) == tuple(range(7, 43))
    assert packets.members(35) == (35,)


def _mode_set(text: str) -> frozenset[OIMode]:
    if text.startswith("always"):
        return frozenset(OIMode)
    if text.startswith("n/a"):
        return frozenset()
    names = text.split(" (")[0].split(",")
    modes = frozenset(OIMode[n.strip().upper()] for n in names)
    return modes | ({OIMode.OFF} if "Off" in text else frozenset())


@pytest.mark.parametrize("opcode", sorted(OPCODE_ROWS))
def test_opcode_matches_reference(opcode: int) -> None:
    """Each opcode's data size, allowed modes and resulting mode match the spec's table."""
    row, spec = OPCODE_ROWS[opcode], OPCODES[opcode]
    size_text = row["data_bytes"]
    head = size_text.split(":")[0].split(" ")[0]
    if head.isdigit():
        assert spec.data_bytes == int(head)
    elif "removed" not in row["name"]:
        assert spec.data_bytes is None
    assert spec.allowed_modes == _mode_set(row["allowed_modes"])
    after = row["mode_after"]
    expected_after = None if after in ("No change", "n/a") else OIMode[after.upper()]
    assert spec.mode_after == expected_after
    assert spec.removed == ("removed" in row["name"])


def test_every_reference_opcode_is_in_the_table() -> None:
    """The opcode table and the Op enum hold every command of the spec."""
    assert set(OPCODES) == set(OPCODE_ROWS)
    assert {int(o) for o in Op} == set(OPCODES)


def test_data_length_variable_commands() -> None:
    """The data size of variable-length commands (Song, Stream, Query List, Script) from their first bytes."""
    assert data_length(Op.SONG, b"") is None
    assert data_length(Op.SONG, b"\x00") is None
    assert data_length(Op.SONG, b"\x00\x09") == 20
    assert data_length(Op.STREAM, b"") is None
    assert data_length(Op.STREAM, b"\x02") == 3
    assert data_length(Op.QUERY_LIST, [0]) == 1
    assert data_length(Op.SCRIPT, b"\x05") == 6
    assert data_length(Op.DRIVE, b"") == 4
    assert data_length(Op.SCHEDULE, b"") == 15
    with pytest.raises(KeyError, match="not an OI opcode"):
        data_length(200, b"")
