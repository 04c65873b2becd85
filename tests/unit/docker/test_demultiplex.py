"""An exec's multiplexed output read back (shardctl.docker.engine.demultiplex)."""

from __future__ import annotations

from shardctl.docker.engine import demultiplex


def _frame(stream: int, payload: bytes) -> bytes:
    return bytes([stream, 0, 0, 0]) + len(payload).to_bytes(4, "big") + payload


def test_payloads_in_order_stdout_and_stderr_together() -> None:
    stream = _frame(1, b"f\t3\t1.5\tb1/x\n") + _frame(2, b"find: gone\n") + _frame(1, b"\x1fend")
    assert demultiplex(stream) == b"f\t3\t1.5\tb1/x\nfind: gone\n\x1fend"
    assert demultiplex(b"") == b""


def test_a_stream_cut_inside_a_frame_keeps_what_arrived() -> None:
    whole = _frame(1, b"abc") + _frame(1, b"defgh")
    assert demultiplex(whole[:-2]) == b"abcdef"
    assert demultiplex(whole[:5]) == b""  # not even a whole header
