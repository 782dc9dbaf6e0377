"""Ctrl-C/SIGTERM right after a temp file or folder is created leaves nothing behind.

The signal is raised at the worst moment, deterministically: a wrapper around tempfile's
mkstemp/mkdtemp raises it just after the real call created the path, before the caller
could name it. Before util.signals_held, every site made its temp path before its `try:`
(or before the assignment): these tests failed with `.NAME.*.tmp` left in tmp_path.
"""

from __future__ import annotations

import os
import signal
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from acl_compose import util
from acl_compose.fetch.cache import Cache
from acl_compose.trust import gpg, verity


@pytest.fixture(params=[signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def signal_on_create(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> Iterator:
    """mkstemp/mkdtemp deliver a signal to this process as soon as they made the path (as
    the CLI runs: SIGTERM raises under terminate_as_interrupt, SIGINT by default)."""
    sig = request.param
    created: list[str] = []

    def wrap(real: Callable[..., Any]) -> Callable[..., Any]:
        def made(*args: Any, **kwargs: Any) -> Any:
            result = real(*args, **kwargs)
            created.append(result[1] if isinstance(result, tuple) else result)
            signal.raise_signal(sig)
            return result

        return made

    monkeypatch.setattr(tempfile, "mkstemp", wrap(tempfile.mkstemp))
    monkeypatch.setattr(tempfile, "mkdtemp", wrap(tempfile.mkdtemp))
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
    with util.terminate_as_interrupt():
        yield created
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # restored


def _interrupted(fn: Callable[[], Any]) -> None:
    with pytest.raises(KeyboardInterrupt):
        fn()


def _use(cm: Any) -> None:
    with cm:
        raise AssertionError("the signal should have ended the block before it ran")


def test_atomic_file(signal_on_create: list[str], tmp_path: Path) -> None:
    _interrupted(lambda: _use(util.atomic_file(tmp_path / "f")))
    assert signal_on_create and os.listdir(tmp_path) == []


def test_atomic_write(signal_on_create: list[str], tmp_path: Path) -> None:
    _interrupted(lambda: util.atomic_write(tmp_path / "f", b"x"))
    assert signal_on_create and os.listdir(tmp_path) == []


def test_atomic_dir(signal_on_create: list[str], tmp_path: Path) -> None:
    _interrupted(lambda: _use(util.atomic_dir(tmp_path / "d")))
    assert signal_on_create and os.listdir(tmp_path) == []


def test_output_staging(signal_on_create: list[str], tmp_path: Path) -> None:
    out = util.OutputDir(tmp_path / "out", "test")
    _interrupted(lambda: _use(out.staging()))
    assert signal_on_create and os.listdir(tmp_path) == []


def test_scratch_dir(signal_on_create: list[str], tmp_path: Path) -> None:
    _interrupted(lambda: _use(util.scratch_dir(prefix="x", dir=tmp_path)))
    assert signal_on_create and os.listdir(tmp_path) == []


def test_fetch_cache_temp_file(signal_on_create: list[str], tmp_path: Path) -> None:
    _interrupted(lambda: _use(Cache(tmp_path).temp_file("blob")))
    assert signal_on_create and os.listdir(tmp_path / "tmp") == []


def test_verity_hash_file(signal_on_create: list[str], tmp_path: Path) -> None:
    data = tmp_path / "data.img"
    data.write_bytes(b"\1" * 8 * 4096)
    _interrupted(lambda: verity.create(data, tmp_path / "data.verity"))
    assert signal_on_create and os.listdir(tmp_path) == ["data.img"]


def test_gpg_trust_home(
    signal_on_create: list[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path / "tmp"))
    (tmp_path / "tmp").mkdir()
    key = tmp_path / "key.asc"
    key.write_text("not used: the signal comes first\n")
    _interrupted(lambda: gpg.Trust(key, gpg.FLATCAR_FINGERPRINT))
    assert signal_on_create and os.listdir(tmp_path / "tmp") == []


def test_vm_workdir(signal_on_create: list[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    from acl_compose.boot import qemu

    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path / "tmp"))
    (tmp_path / "tmp").mkdir()
    (tmp_path / "disk.img").write_bytes(b"\0" * 512)
    vm = qemu.VM(tmp_path / "disk.img", firmware="bios", accel="tcg", ssh=False,
                 cache_dir=tmp_path / "cache")  # fmt: skip
    _interrupted(lambda: _use(vm))
    assert signal_on_create and os.listdir(tmp_path / "tmp") == []


# ------------------------------------------------------------------------ signals_held itself


def test_signals_held_delivers_at_the_end_and_restores_handlers() -> None:
    seen: list[str] = []
    with pytest.raises(KeyboardInterrupt), util.signals_held():
        signal.raise_signal(signal.SIGINT)
        seen.append("still running")  # held: the block goes on
    assert seen == ["still running"]
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
    with util.terminate_as_interrupt():
        handler = signal.getsignal(signal.SIGTERM)
        with pytest.raises(KeyboardInterrupt), util.signals_held():
            signal.raise_signal(signal.SIGTERM)
            seen.append("SIGTERM held too")
        assert signal.getsignal(signal.SIGTERM) is handler
    assert seen[-1] == "SIGTERM held too"


def test_signals_held_leaves_default_actions_alone() -> None:
    """SIG_DFL/SIG_IGN are not Python handlers: nothing raises, nothing to hold."""
    assert signal.getsignal(signal.SIGTERM) == signal.SIG_DFL
    with util.signals_held():
        assert signal.getsignal(signal.SIGTERM) == signal.SIG_DFL
    with util.signals_held():
        pass  # no signal: nothing raised
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler


def test_signals_held_is_a_no_op_outside_the_main_thread() -> None:
    import threading

    errors: list[BaseException] = []

    def run() -> None:
        try:
            with util.signals_held():
                pass
        except BaseException as e:  # noqa: BLE001 - reported below
            errors.append(e)

    t = threading.Thread(target=run)
    t.start()
    t.join()
    assert errors == []
