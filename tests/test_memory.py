"""``recognizers.memory.PeakRSS``: the rise of the resident set's peak while a block runs."""

from __future__ import annotations

import sys

import pytest
import torch

from recognizers.memory import PeakRSS


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc/self (Linux)")
def test_peak_counts_the_block_only():
    big = torch.ones(32 * 2**20)  # 128 MiB before the block: freed, and must not count
    del big
    with PeakRSS() as peak:
        block = torch.ones(16 * 2**20)  # 64 MiB, touched by the fill
        del block
    assert peak.mib is not None
    assert 56 <= peak.mib < 100
    with PeakRSS() as small:
        torch.ones(16)
    assert small.mib is not None
    assert small.mib < 8


def test_peak_is_none_where_it_cannot_be_measured(monkeypatch, tmp_path):
    import recognizers.memory as memory

    monkeypatch.setattr(memory, "_STATUS", tmp_path / "missing")
    with PeakRSS() as peak:
        torch.ones(16)
    assert peak.mib is None
