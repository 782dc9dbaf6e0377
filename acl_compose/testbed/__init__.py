"""A Flatcar-shaped testbed release built locally from Debian packages (see build.py)."""

from acl_compose.testbed.build import DEFAULT_VERSION, IMAGE, KEY_FILE, build

__all__ = ["DEFAULT_VERSION", "IMAGE", "KEY_FILE", "build"]
