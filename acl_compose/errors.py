"""One exception hierarchy. Every user-facing failure is an AclComposeError with a hint."""

from __future__ import annotations


class AclComposeError(Exception):
    """A failure the user can act on: printed as `error: ...` / `hint: ...`, exit 1."""

    hint: str = ""

    def __init__(self, message: str, hint: str | None = None) -> None:
        super().__init__(message)
        if hint is not None:
            self.hint = hint

    @property
    def message(self) -> str:
        return str(self.args[0]) if self.args else ""


class InputError(AclComposeError):
    """Bad input from the user: a file, field, option or manifest entry."""

    hint = "check the named file or option"


class ToolError(AclComposeError):
    """An external tool failed or is missing."""

    hint = "run `make deps` to install the Debian packages acl-compose uses"


class VerificationError(AclComposeError):
    """Something did not verify: a signature, digest, hash tree or policy check."""

    hint = "do not use this artifact; fetch or rebuild it from a trusted source"


class FetchError(AclComposeError):
    """Downloading failed (network, HTTP status, unexpected content)."""

    hint = "check the URL and the network, or work offline from a warm cache"


class PolicyError(AclComposeError):
    """Content that an immutable host must not carry (package managers, setuid, ...)."""

    hint = "remove the offending file from the bundle"
