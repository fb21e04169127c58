"""certifi.core in the packages: the system's CA store first, certifi's own only without one."""

# Replaces certifi/core.py in /usr/lib/wasm-edge-agentd/common (pkgbuild.py), as Debian's and
# Fedora's certifi do: a CA an operator adds to the system store (update-ca-certificates,
# update-ca-trust) is trusted by agentd's downloads as it is by git and curl. A minimal system
# without ca-certificates still gets Mozilla's store from the bundled cacert.pem.

from __future__ import annotations

import os

SYSTEM_BUNDLES = (
    "/etc/ssl/certs/ca-certificates.crt",  # Debian, Ubuntu, Raspberry Pi OS
    "/etc/pki/tls/certs/ca-bundle.crt",  # RHEL and its rebuilds
)
BUNDLED = os.path.join(os.path.dirname(os.path.abspath(__file__)), "cacert.pem")


def where() -> str:
    for path in SYSTEM_BUNDLES:
        if os.path.isfile(path):
            return path
    return BUNDLED


def contents() -> str:
    with open(where(), encoding="utf-8") as bundle:
        return bundle.read()
