"""`python3 -m tests.e2e [HOST...]` (`make e2e E2E_HOSTS="..."`): boot each host, run the checks.

Hosts: see tests/e2e/hosts.py (default: the CI host, bookworm-amd64). Results go to
build/e2e/results.json and a summary to stdout; exit 1 when any host failed.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time
from pathlib import Path
from typing import Any

from tests.e2e import rootfs
from tests.e2e.container import Container, ContainerError
from tests.e2e.firstrun import check_firstrun
from tests.e2e.hosts import CI_HOSTS, HOSTS, HostSpec
from tests.e2e.launchers import check_launcher
from tests.e2e.packages import REPO, Built, PackageBuildError, build
from tests.e2e.scenario import MIRROR_VERSIONS, E2EFailure, HostResult, Scenario
from tests.support.mirror import MirrorServer
from tests.support.standins import ARCHES, Mirror, build_mirror


def say(text: str) -> None:
    stamp = time.strftime("%H:%M:%S")
    print(f"[{stamp}] {text}", flush=True)


def _needs(spec: HostSpec) -> list[str]:
    tools = ["systemd-nspawn", "nsenter", "debootstrap", "zstd"]
    if spec.checks == "firstrun":
        tools.append("git")
    else:
        tools += ["rpmbuild"] if spec.package == "rpm" else ["dpkg-buildpackage", "dh"]
    return [t for t in tools if shutil.which(t) is None]


def _save_logs(node: Container, directory: Path) -> None:
    """The container's journal and unit states, for a failed run."""
    for name, argv in (
        ("journal.txt", ["journalctl", "-b", "--no-pager", "-o", "short-precise"]),
        ("units.txt", ["systemctl", "list-units", "--all", "--no-pager"]),
        ("agentd-status.txt", ["agentd", "status"]),
    ):
        try:
            out = node.run(argv, check=False, timeout=60)
        except ContainerError as exc:
            (directory / name).write_text(f"{exc}\n")
            continue
        (directory / name).write_text(out.stdout + out.stderr)


def run_host(
    spec: HostSpec,
    args: argparse.Namespace,
    built: Built | None,
    mirror: Mirror,
    base_url: str,
) -> HostResult:
    result = HostResult(spec.name, spec.release)
    start = time.monotonic()
    hostdir = args.work / "hosts" / spec.name
    logs = args.work / "logs" / spec.name
    if logs.exists():
        shutil.rmtree(logs)
    logs.mkdir(parents=True)
    node: Container | None = None
    try:
        say(f"{spec.name}: root file system ({rootfs.cache_name(spec)})")
        tree = rootfs.prepare(spec, args.cache, hostdir / "root", logs / "rootfs.log", args.refresh)
        result.figures["rootfs"] = "cache" if tree.cached else "debootstrap"
        result.figures["rootfs_s"] = round(tree.seconds, 1)
        if tree.debootstrap_seconds is not None:
            result.figures["debootstrap_s"] = round(tree.debootstrap_seconds, 1)
        say(f"{spec.name}: {result.figures['rootfs']} in {tree.seconds:.1f} s")
        if spec.checks == "firstrun":
            check_firstrun(spec, tree.path, result, say)
            result.ok = True
            return result
        assert built is not None  # every host but a first run's has its package built
        if spec.checks == "launcher":
            check_launcher(spec, tree.path, built, mirror, result, say)
            result.ok = True
            return result
        (tree.path / "etc" / "hostname").write_text(f"e2e-{spec.name}\n")
        node = Container(
            f"e2e-{spec.name}",
            tree.path,
            logs / "console.log",
            binds_ro=[(args.work / "packages", "/mnt/e2e")],
            slow=spec.slow,
        )
        boot_s, state = node.boot()
        result.figures["boot_s"] = round(boot_s, 2)
        result.figures["boot_state"] = state
        say(f"{spec.name}: booted in {boot_s:.1f} s ({state})")
        if state != "running":
            failed = node.run(["systemctl", "--failed", "--no-legend"], check=False).stdout
            result.observations.append(f"booted {state}: {failed.strip()}")
        try:
            Scenario(spec, node, built, mirror, base_url, result, say).run()
        finally:
            _save_logs(node, logs)
        result.ok = True
    except (E2EFailure, ContainerError, rootfs.RootfsError) as exc:
        result.error = str(exc)
        say(f"{spec.name}: FAILED: {exc}")
        say(f"{spec.name}: logs (the container's journal, units) are in {logs}")
    finally:
        if node is not None:
            result.figures["poweroff_s"] = round(node.poweroff(), 2)
        if not args.keep and hostdir.exists():
            shutil.rmtree(hostdir)
        result.figures["e2e_s"] = round(time.monotonic() - start, 1)
        (logs / "result.json").write_text(json.dumps(result.to_json(), indent=2) + "\n")
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python3 -m tests.e2e", description=__doc__)
    parser.add_argument(
        "hosts",
        nargs="*",
        help=f"hosts to run (default: {' '.join(CI_HOSTS)}); known: {', '.join(HOSTS)}",
    )
    parser.add_argument("--cache", type=Path, default=REPO / "build" / "e2e-cache")
    parser.add_argument("--work", type=Path, default=REPO / "build" / "e2e")
    parser.add_argument("--keep", action="store_true", help="keep each host's tree afterwards")
    parser.add_argument("--refresh", action="store_true", help="debootstrap again, not the cache")
    args = parser.parse_args(argv)
    names = [n for arg in (args.hosts or CI_HOSTS) for n in arg.split()]
    unknown = [n for n in names if n not in HOSTS]
    if unknown:
        parser.error(f"unknown host(s) {', '.join(unknown)}; known: {', '.join(HOSTS)}")
    specs = [HOSTS[n] for n in names]
    if os.geteuid() != 0:
        print("e2e: needs root (debootstrap, systemd-nspawn, nsenter)", file=sys.stderr)
        return 2
    missing = sorted({t for spec in specs for t in _needs(spec)})
    if missing:
        print(
            f"e2e: missing {', '.join(missing)}: apt-get install debootstrap systemd-container "
            "zstd dpkg-dev debhelper rpm",
            file=sys.stderr,
        )
        return 2
    args.cache = args.cache.resolve()
    args.work = args.work.resolve()
    args.work.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    summary: dict[str, Any] = {"hosts": [], "packages": {}}

    say("building the stand-in releases (k3s, crun, WasmEdge) for the mirror")
    mirror_dir = args.work / "mirror"
    if mirror_dir.exists():
        shutil.rmtree(mirror_dir)
    mirror = build_mirror(mirror_dir, arches=ARCHES, **MIRROR_VERSIONS)

    packages: dict[tuple[str, str], Built] = {}
    for spec in specs:
        key = (spec.package, spec.package_arch)
        if key in packages or spec.checks == "firstrun":
            continue
        say(f"building {spec.package} {spec.package_arch}, twice (the upgrade is the second)")
        try:
            packages[key] = build(
                spec.package, spec.package_arch, args.work / "packages", args.work / "pkgbuild.log"
            )
        except PackageBuildError as exc:
            print(f"e2e: {exc}", file=sys.stderr)
            return 1
        built = packages[key]
        say(f"built {built.first.name} and {built.upgrade.name} in {built.seconds:.1f} s")
        summary["packages"][f"{spec.package}-{spec.package_arch}"] = {
            "first": built.first.name,
            "upgrade": built.upgrade.name,
            "seconds": round(built.seconds, 1),
        }

    results = []
    with MirrorServer(mirror_dir) as server:
        say(f"mirror on {server.url}")
        for spec in specs:
            host_built = packages.get((spec.package, spec.package_arch))
            results.append(run_host(spec, args, host_built, mirror, server.url))
        summary["mirrorRequests"] = len(server.requests)
    summary["hosts"] = [r.to_json() for r in results]
    summary["seconds"] = round(time.monotonic() - started, 1)
    out = args.work / "results.json"
    out.write_text(json.dumps(summary, indent=2) + "\n")

    print()
    print(f"{'host':<16} {'result':<7} {'rootfs':>14} {'boot':>6} {'install':>8} {'e2e':>7}")
    for r in results:
        f = r.figures
        rootfs_text = f"{f.get('rootfs', '-')} {f.get('rootfs_s', '-')}s"
        print(
            f"{r.host:<16} {'ok' if r.ok else 'FAILED':<7} {rootfs_text:>14} "
            f"{f.get('boot_s', '-')!s:>5}s {f.get('install_s', '-')!s:>7}s {f.get('e2e_s')!s:>6}s"
        )
        if r.error:
            print(f"  {r.error.splitlines()[0][:300]}")
        for note in r.observations:
            print(f"  note: {note[:300]}")
    print(f"\nresults: {out} ({summary['seconds']} s in all)")
    return 0 if all(r.ok for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
