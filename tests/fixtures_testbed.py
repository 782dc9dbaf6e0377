"""Session fixtures for the testbed stage (filled in by its issue)."""
