"""`make e2e`: the .deb and .rpm in booted Debian hosts (systemd-nspawn), end to end.

Each host is a debootstrapped Debian (cached as a tarball in build/e2e-cache/) booted with
`systemd-nspawn -b`; the package is installed with the distribution's tools, a desired state
points agentd at stand-in releases served on 127.0.0.1 (tests/support/mirror.py), and the checks of
packaging/README.md ("End-to-end runs") follow. Needs root, debootstrap and systemd-nspawn.

Nothing here is collected by pytest (no test_*.py): run `make e2e` or
`python3 -m tests.e2e [HOST...]`.
"""
