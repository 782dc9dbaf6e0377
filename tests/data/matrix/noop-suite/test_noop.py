"""A suite that asks nothing of the guest: what a cell costs beyond its boot (benchmarks)."""


def test_noop():
    pass
