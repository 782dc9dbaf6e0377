"""acl-compose: compose, sign and boot-test immutable Flatcar-based container hosts."""

__version__ = "0.1.0"
