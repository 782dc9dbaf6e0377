"""boot: an image -> a booted QEMU VM -> pytest-testinfra results as JUnit.

`kvm` decides whether KVM works here, `qemu` boots a VM on an overlay and waits for SSH,
`testing` runs the qemu-tests suites against it.
"""

from acl_compose.util import lazy_exports

__getattr__, __dir__, __all__ = lazy_exports(
    __name__,
    {
        "qemu": ["FIRMWARES", "PLATFORMS", "VM", "BootError", "BootTimeout", "boot_and_wait"],
        "kvm": ["ACCELS", "choose_accel"],
        "testing": ["run_suites"],
    },
)
