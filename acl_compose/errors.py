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


class EnvironmentProblem(AclComposeError):
    """The host refused a write or read: a full disk, a read-only mount, missing rights."""


# errno -> (what happened, what to do). Other OSErrors are bugs and keep their traceback.
_OS_ERRORS = {
    "ENOSPC": ("no space left", "free space there (df -h), or write elsewhere: the output "
               "folder, --cache-dir, or TMPDIR for scratch files"),
    "EDQUOT": ("disk quota exceeded", "free space within the quota, or write elsewhere"),
    "EROFS": ("read-only filesystem", "write to a writable folder"),
    "EACCES": ("permission denied", "check the owner and mode of the path, or run as its owner"),
    "EPERM": ("operation not permitted", "check the owner and mode of the path"),
}  # fmt: skip


def _mount_of(path: str) -> str:
    import os

    mount = os.path.abspath(path)
    while not os.path.ismount(mount):
        mount = os.path.dirname(mount)
    return mount


def from_os_error(exc: OSError, places: tuple[str, ...] = ()) -> EnvironmentProblem | None:
    """The user-facing form of an OSError the environment caused, None for any other.
    `places`: where the command writes, to name the full filesystem when a write to an
    open descriptor failed (such errors carry no file name)."""
    import errno
    import os
    import shutil

    name = errno.errorcode.get(exc.errno or 0, "")
    if name not in _OS_ERRORS:
        return None
    what, hint = _OS_ERRORS[name]
    if not (exc.filename or exc.filename2):
        if name not in ("ENOSPC", "EDQUOT"):
            return None
        mounts = {_mount_of(p) for p in places}
        full = sorted(m for m in mounts if shutil.disk_usage(m).free < 64 << 20)
        where = f" (nearly full: {', '.join(full)})" if full else ""
        return EnvironmentProblem(f"{what} while writing{where}", hint)
    path = os.fsdecode(exc.filename2 if name in ("ENOSPC", "EDQUOT") and exc.filename2
                       else exc.filename)  # fmt: skip
    if name in ("ENOSPC", "EDQUOT"):  # name the filesystem, not just a scratch file in it
        return EnvironmentProblem(f"{what} on {_mount_of(path)} (writing {path})", hint)
    return EnvironmentProblem(f"{path}: {what}", hint)
