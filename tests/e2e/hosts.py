"""The hosts the end-to-end run can boot, by name (E2E_HOSTS)."""

from __future__ import annotations

from dataclasses import dataclass

# What every host is debootstrapped with (test-hosts.md): a bootable systemd, and python3, the
# package's one dependency a minimal Debian lacks.
BASE_INCLUDES = ("systemd", "systemd-sysv", "dbus", "python3")

RPM_ARCHES = {"amd64": "x86_64", "arm64": "aarch64"}
QEMU = {"arm64": "qemu-aarch64", "armhf": "qemu-arm"}
# Debian's architecture as agentd and the release assets name it.
AGENTD_ARCHES = {"amd64": "amd64", "arm64": "arm64", "armhf": "armv7"}
# What `uname -m` says in each: qemu-arm emulates an ARMv7 CPU (its default for armhf binaries).
UNAME_MACHINES = {"amd64": "x86_64", "arm64": "aarch64", "armhf": "armv7l"}


@dataclass(frozen=True)
class HostSpec:
    """One booted host: a Debian suite and architecture, and which package goes in."""

    name: str
    suite: str
    arch: str  # Debian's name: amd64, arm64, armhf
    release: str  # "Debian 12", for the report
    package: str = "deb"  # or "rpm", installed with Debian's rpm
    # crun from the distribution (source: package) with apt-get, for real: needs Debian's
    # package mirror (deb.debian.org) from inside the container.
    package_source: bool = False
    # Timeouts are multiplied by this (an emulated architecture runs everything 5-20x slower).
    slow: float = 1.0
    includes: tuple[str, ...] = BASE_INCLUDES
    # "life-cycle": booted, the whole scenario. "launcher": not booted; the package unpacked
    # into the tree and its launcher run on the tree's python3 (tests/e2e/launchers.py).
    # "firstrun": no package; a clean checkout's `make demo` (tests/e2e/firstrun.py).
    checks: str = "life-cycle"

    @property
    def foreign(self) -> bool:
        return self.arch != "amd64"

    @property
    def agentd_arch(self) -> str:
        """amd64, arm64 or armv7: the key of the desired state's artifacts."""
        return AGENTD_ARCHES[self.arch]

    @property
    def rpm_arch(self) -> str:
        return RPM_ARCHES[self.arch]

    @property
    def package_arch(self) -> str:
        return self.rpm_arch if self.package == "rpm" else self.arch


HOSTS: dict[str, HostSpec] = {
    spec.name: spec
    for spec in (
        HostSpec("bookworm-amd64", "bookworm", "amd64", "Debian 12", package_source=True),
        HostSpec("bullseye-amd64", "bullseye", "amd64", "Debian 11"),
        HostSpec("trixie-amd64", "trixie", "amd64", "Debian 13"),
        HostSpec("bookworm-arm64", "bookworm", "arm64", "Debian 12 (qemu-user)", slow=20.0),
        # Raspberry Pi OS 32-bit's userland (Raspberry Pi OS is Debian's armhf, rebuilt for
        # ARMv6 in its own archive; Debian's armhf is ARMv7, what Pi 2 and later run).
        HostSpec("bookworm-armhf", "bookworm", "armhf", "Debian 12 armhf (qemu-user)", slow=20.0),
        # The armhf package's launcher on the other CPythons it claims (3.9 and 3.13).
        *(
            HostSpec(
                f"{suite}-armhf",
                suite,
                "armhf",
                f"{release} armhf (qemu-user): the launcher",
                slow=20.0,
                includes=("python3",),
                checks="launcher",
            )
            for suite, release in (("bullseye", "Debian 11"), ("trixie", "Debian 13"))
        ),
        # The README's first lines on a fresh Debian: only its python3 and make, no pip.
        *(
            HostSpec(
                f"firstrun-{suite}",
                suite,
                "amd64",
                f"{release}: make demo in a clean checkout",
                includes=("python3", "make"),
                checks="firstrun",
            )
            for suite, release in (("bookworm", "Debian 12"), ("trixie", "Debian 13"))
        ),
        # The .rpm in a booted Debian: Debian's own rpm (4.18) is its package manager there.
        HostSpec(
            "bookworm-rpm",
            "bookworm",
            "amd64",
            "Debian 12 + rpm",
            package="rpm",
            includes=(*BASE_INCLUDES, "rpm"),
        ),
    )
}

CI_HOSTS = ("bookworm-amd64",)
