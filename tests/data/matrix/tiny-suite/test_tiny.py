"""A console suite for the tiny matrix guest: testinfra's `host` over the serial agent."""


def test_kernel_is_debian(host):
    assert host.run("uname -r").stdout.strip().endswith("-amd64")


def test_os_release(host):
    f = host.file("/etc/os-release")
    assert f.exists and "ID=tiny" in f.content_string


def test_exit_status_and_stderr_travel(host):
    r = host.run("echo out; echo err >&2; exit 3")
    assert (r.rc, r.stdout, r.stderr) == (3, "out\n", "err\n")
