"""Where compose puts the product's sysexts: names Flatcar's initrd owns are refused, and so is
an Ignition config claiming a path compose writes to enable them."""

from __future__ import annotations

import shutil

import pytest

from tests.compose.runs import compose
from tests.fixtures_compose import BUNDLES, write_manifest


@pytest.mark.parametrize("name", ["oem-azure", "flatcar-podman"])
def test_reserved_sysext_names_are_refused(mini_flatcar, release_key, tmp_path, name):
    """Flatcar's initrd owns /etc/extensions/oem-* and flatcar-*: such a sysext would vanish."""
    bundle = tmp_path / name
    shutil.copytree(BUNDLES[0], bundle)
    text = (bundle / "sysext.yaml").read_text().replace("name: azure-base", f"name: {name}")
    (bundle / "sysext.yaml").write_text(text)
    key, cert = release_key
    m = write_manifest(tmp_path / "m.yaml", base={"path": mini_flatcar.path}, key=key, cert=cert,
                       sysexts=[bundle], outputs=("raw",))  # fmt: skip
    proc = compose(m, tmp_path / "out", tmp_path / "cache", check=False)
    assert proc.returncode == 1
    assert f"sysext name {name!r} is reserved" in proc.stderr and "hint:" in proc.stderr
    assert "write outputs" not in proc.stderr
    assert not list((tmp_path / "cache").glob("compose/sysext/*"))  # refused before building
    assert not (tmp_path / "out").exists()


def test_config_claiming_a_sysext_link_is_refused(mini_flatcar, release_key, tmp_path):
    cfg = tmp_path / "mine.yaml"
    cfg.write_text(
        "variant: flatcar\nversion: 1.0.0\nstorage:\n  links:\n"
        "    - path: /etc/extensions/azure-base.raw\n      target: /opt/x.raw\n"
    )
    key, cert = release_key
    m = write_manifest(tmp_path / "m.yaml", base={"path": mini_flatcar.path}, key=key, cert=cert,
                       sysexts=BUNDLES[:1], ignition=[cfg], outputs=("raw",))  # fmt: skip
    proc = compose(m, tmp_path / "out", tmp_path / "cache", check=False)
    assert proc.returncode == 1
    assert "/etc/extensions/azure-base.raw is written by compose" in proc.stderr
    assert not (tmp_path / "out").exists()
