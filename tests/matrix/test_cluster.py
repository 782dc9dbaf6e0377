"""--cluster specs: what each form means, and refusals naming the option."""

from __future__ import annotations

from acl_compose.matrix import cluster


def test_cluster_specs() -> None:
    assert cluster.check_spec("local:2") == "local"
    assert cluster.check_spec("tcp://10.0.0.1:8786") == "address"
    assert cluster.parse_ssh("ssh://core@h1:2222,h2") == [
        {"host": "h1", "port": 2222, "username": "core"},
        {"host": "h2"},
    ]
    assert cluster.parse_ssh("ssh://[::1]:22") == [{"host": "::1", "port": 22}]
    for bad in ("local:0", "local:x", "ssh://a b", "k8s://x"):
        try:
            cluster.check_spec(bad)
        except Exception as e:
            assert "--cluster" in str(e)
        else:
            raise AssertionError(f"{bad} accepted")
