"""The release folder (compose -o OUT_DIR) under the output-folder rule: a failed compose keeps
what was there, the user's files are never deleted or replaced, an earlier release is."""

from __future__ import annotations

from tests.compose.runs import compose, verify
from tests.conftest import run_cli
from tests.fixtures_compose import SDE


def test_failed_compose_keeps_previous_output(mini_release, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep").write_text("previous release")
    m = tmp_path / "m.yaml"
    m.write_text(
        mini_release["manifest"].read_text().replace("name: acl-test", "name: acl-test\nbogus: 1")
    )
    proc = compose(m, out, mini_release["cache"], check=False)
    assert "bogus: unknown key" in proc.stderr and f"{m}:" in proc.stderr
    assert (out / "keep").read_text() == "previous release"


def test_compose_never_deletes_the_users_files(mini_release, tmp_path):
    """`compose -o precious/` used to replace the whole folder (a thesis.txt there was gone)."""
    precious = tmp_path / "precious"
    precious.mkdir()
    (precious / "thesis.txt").write_text("years of work")
    m = tmp_path / "m.yaml"
    m.write_text(mini_release["manifest"].read_text().replace("- qcow2\n- vhd\n", ""))
    proc = compose(m, precious, mini_release["cache"], check=False)
    assert proc.returncode == 1, proc.stderr
    assert proc.stderr.startswith(f"error: output folder {precious} is not empty")
    assert "--force" in proc.stderr and "load the release signing key" not in proc.stderr
    assert sorted(p.name for p in precious.iterdir()) == ["thesis.txt"]
    proc = run_cli("--cache-dir", mini_release["cache"], "compose", m, "-o", precious,
                   "--check-reproducible")  # fmt: skip
    assert proc.returncode == 1 and "is not empty" in proc.stderr and "build A" not in proc.stderr
    # --force: the release is added beside the user's file.
    run_cli("--cache-dir", mini_release["cache"], "compose", m, "-o", precious, "--force",
            check=True, env=SDE)  # fmt: skip
    assert (precious / "thesis.txt").read_text() == "years of work"
    assert sorted(p.name for p in precious.iterdir()) == [
        "acl-test-1.0.0.bin", "acl-test-1.0.0.spdx.json", "release.json", "release.json.p7s",
        "thesis.txt",
    ]  # fmt: skip
    verify(precious, mini_release["cert"], check=True)
    # A previous compose output (release.json) is replaced without --force: its own files
    # go or are rewritten, the user's stay.
    m.write_text(m.read_text().replace("version: 1.0.0", "version: 1.0.1"))
    compose(m, precious, mini_release["cache"])
    assert sorted(p.name for p in precious.iterdir()) == [
        "acl-test-1.0.1.bin", "acl-test-1.0.1.spdx.json", "release.json", "release.json.p7s",
        "thesis.txt",
    ]  # fmt: skip
    assert (precious / "thesis.txt").read_text() == "years of work"
    verify(precious, mini_release["cert"], check=True)
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]


def test_compose_refuses_to_replace_a_file_it_did_not_write(mini_release, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "acl-test-1.0.0.bin").write_text("the user's own image")
    proc = run_cli("--cache-dir", mini_release["cache"], "compose", mini_release["manifest"],
                   "-o", out, "--force")  # fmt: skip
    assert proc.returncode == 1
    assert f"error: {out / 'acl-test-1.0.0.bin'} exists and was not written by" in proc.stderr
    assert "load the release signing key" not in proc.stderr  # refused before any work
    assert (out / "acl-test-1.0.0.bin").read_text() == "the user's own image"
