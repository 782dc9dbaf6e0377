"""A console suite that keeps its VM busy for a while (the lost-worker and resume tests)."""

import os


def test_takes_a_while(host):
    seconds = int(os.environ.get("ACL_TINY_SLEEP", "12"))
    assert host.run(f"sleep {seconds}; echo slept").stdout.strip() == "slept"
