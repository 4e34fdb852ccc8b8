"""The DIY line protocol: format/parse round trip, checksums, corrupt lines, counters."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from sensors.protocols import line as lp
from sensors.protocols.counters import SequenceTracker, Unwrapper, count_gaps, unwrap_counter


def test_documented_example_line_parses() -> None:
    body = "Q,0,17,123456789,0.70711,0.00000,0.70711,0.00000,0.10,-0.20,9.00"
    msg = lp.parse_line(body + "*" + lp.nmea_checksum(body))
    assert msg == lp.LineSample(0, 17, 123456789, (0.70711, 0.0, 0.70711, 0.0), (0.1, -0.2, 9.0))
    assert lp.parse_line("Q,3,,42,1,0,0,0") == lp.LineSample(3, None, 42, (1.0, 0.0, 0.0, 0.0), None)
    assert lp.parse_line("I,rate_hz,100") == lp.LineInfo("rate_hz", "100")
    assert lp.parse_line("# BNO085 ready") is None


@pytest.mark.parametrize("bad, reason", [
    ("Q,0,1,100,1,0,0", "8 or 11 fields"),
    ("Q,0,1,100,2,0,0,0", "norm"),
    ("Q,0,1,100,nan,0,0,0", "non-finite"),
    ("Q,0,1,-5,1,0,0,0", "non-negative"),
    ("Q,0,1,100,1,0,0,0*00", "checksum"),
    ("X,1,2", "unknown line type"),
])
def test_corrupt_lines_are_rejected_with_a_reason(bad: str, reason: str) -> None:
    with pytest.raises(ValueError, match=reason):
        lp.parse_line(bad)


def test_parser_counts_corrupt_lines_and_handles_split_reads() -> None:
    lines = [lp.format_sample(lp.LineSample(1, i, 1000 * i, (1.0, 0.0, 0.0, 0.0), None)) for i in range(10)]
    damaged = bytearray(lines[4])
    damaged[12] = ord("9") if damaged[12] != ord("9") else ord("8")  # one digit changed: checksum fails
    stream = b"#boot\r\n" + b"".join(lines[:4]) + bytes(damaged) + b"garbage\n" + b"".join(lines[5:])
    p = lp.LineParser()
    out = []
    for i in range(0, len(stream), 5):
        out += p.feed(stream[i:i + 5])
    assert [m.seq for m in out] == [0, 1, 2, 3, 5, 6, 7, 8, 9]
    assert p.corrupt == 2 and p.lines == 9


def test_overlong_line_is_dropped_and_parsing_resumes() -> None:
    p = lp.LineParser(max_line_bytes=64)
    out = p.feed(b"Q" * 200) + p.feed(b"more junk\nQ,0,1,5,1,0,0,0\n")
    assert len(out) == 1 and out[0].time_us == 5
    assert p.corrupt == 1


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=500), st.integers(1, 50))
def test_random_bytes_never_raise(data: bytes, chunk: int) -> None:
    p = lp.LineParser()
    for i in range(0, len(data), chunk):
        p.feed(data[i:i + chunk])


@settings(max_examples=100, deadline=None)
@given(st.lists(st.tuples(st.binary(max_size=40), st.integers(0, 65535)), min_size=1, max_size=15))
def test_valid_lines_between_random_junk_lines_are_all_recovered(items) -> None:
    stream = b""
    for junk, seq in items:
        stream += junk.replace(b"\n", b"") + b"\n" + lp.format_sample(lp.LineSample(2, seq, seq * 10, (0.0, 1.0, 0.0, 0.0), (1.0, 2.0, 3.0)))
    out = [m for m in lp.LineParser().feed(stream) if isinstance(m, lp.LineSample)]
    # junk could be a valid line by chance only if it starts with Q/I and parses; it never does with a checksum
    seqs = [m.seq for m in out if m.sensor == 2 and m.time_us == m.seq * 10]
    assert seqs == [s for _, s in items]


def test_sequence_tracker_counts_gaps_across_the_wrap() -> None:
    t = SequenceTracker(65536)
    lost = [t.update(s) for s in (65533, 65534, 65535, 0, 3, 4, 4, 10)]
    assert lost == [0, 0, 0, 0, 2, 0, 0, 5]
    assert (t.dropped, t.duplicates) == (7, 1)
    assert t.update(2) == 0 and t.restarts == 1  # a jump backwards is a device restart, not 65k losses


def test_clock_unwrapping() -> None:
    u = Unwrapper(1 << 32)
    vals = [u.update(v) for v in (2**32 - 2000, 2**32 - 1000, 500, 1500)]
    assert np.diff(vals).tolist() == [1000, 1500, 1000]
    arr = unwrap_counter(np.array([65534, 65535, 0, 1, 4]), 65536)
    assert arr.tolist() == [65534, 65535, 65536, 65537, 65540]
    assert count_gaps(arr) == 2


def test_the_documented_example_in_the_firmware_readme_parses() -> None:
    from pathlib import Path

    readme = (Path(__file__).resolve().parents[2] / "resources" / "firmware" / "README.md").read_text()
    examples = [ln for ln in readme.splitlines() if ln.startswith("Q,0,17,")]
    assert len(examples) == 1
    assert lp.parse_line(examples[0]) == lp.LineSample(0, 17, 123456789, (0.70711, 0.0, 0.70711, 0.0), (0.1, -0.2, 9.0))
