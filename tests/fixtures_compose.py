"""Session fixtures for the compose stage (filled in by its issue)."""
