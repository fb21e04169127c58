"""`python3 -m tests.e2e.record_real`: the real programs' outputs into tests/fixtures/real/."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Optional

from agentd.health.probe import probe_module
from tests.e2e import wasmhost

OUT = wasmhost.REPO / "tests" / "fixtures" / "real"
DEBIAN12_CRUN_DEB = Path("/tmp/crun12")  # `apt-get download crun` on this Debian 12 machine
PLUGIN_DIR = wasmhost.DEBIAN_PLUGIN_DIR


def save(
    name: str, argv: Sequence[str], result: subprocess.CompletedProcess[str], where: str
) -> dict[str, object]:
    """NAME.stdout, NAME.stderr and NAME.exit, byte for byte as the program wrote them."""
    (OUT / f"{name}.stdout").write_text(result.stdout)
    (OUT / f"{name}.stderr").write_text(result.stderr)
    (OUT / f"{name}.exit").write_text(f"{result.returncode}\n")
    print(f"{name}: exit {result.returncode}", flush=True)
    return {"name": name, "argv": list(argv), "where": where, "exit": result.returncode}


def in_tree(
    root: Path,
    name: str,
    argv: Sequence[str],
    where: str,
    *,
    env: Optional[Mapping[str, str]] = None,
    binds_ro: Sequence[tuple[Path, str]] = (),
    cgroup2: bool = False,
) -> dict[str, object]:
    result = wasmhost.run(root, argv, env=env, binds_ro=binds_ro, cgroup2=cgroup2)
    entry = save(name, argv, result, where)
    if env:
        entry["env"] = dict(env)
    return entry


BUNDLE_SCRIPT = r"""
set -e
rm -rf /bundle; mkdir -p /bundle/rootfs
cp /probe/probe.wasm /bundle/rootfs/probe.wasm
chmod "$2" /bundle/rootfs/probe.wasm
cd /bundle
crun spec
python3 - "$1" <<'EOF'
import json, sys
spec = json.load(open("config.json"))
spec["process"]["terminal"] = False
spec["process"]["args"] = ["/probe.wasm"]
if sys.argv[1]:
    spec["annotations"] = {"module.wasm.image/variant": sys.argv[1]}
json.dump(spec, open("config.json", "w"), indent=1)
EOF
"""


def crun_run(
    root: Path, probe: Path, name: str, variant: str, where: str, mode: str = "0755"
) -> dict[str, object]:
    """crun runs /probe.wasm in a bundle, as test-hosts.md step 4 says it can here."""
    wasmhost.run(
        root,
        ["sh", "-ec", BUNDLE_SCRIPT, "bundle", variant, mode],
        binds_ro=[(probe, "/probe")],
        cgroup2=True,
        check=True,
    )
    argv = ["crun", "--cgroup-manager=disabled", "run", "--bundle", "/bundle", f"e2e-{name}"]
    entry = in_tree(root, name, argv, where, binds_ro=[(probe, "/probe")], cgroup2=True)
    entry["annotations"] = {"module.wasm.image/variant": variant} if variant else {}
    entry["probe_mode"] = mode
    return entry


def main() -> int:
    work = wasmhost.WORK_DIR
    log = work / "record.log"
    OUT.mkdir(parents=True, exist_ok=True)
    start = time.monotonic()
    tree = wasmhost.prepare(work / "root", log)
    root = tree.path
    plugins = wasmhost.build_plugins(root, work / "plugins", log)
    probe = Path(tempfile.mkdtemp(prefix="agentd-probe-"))
    (probe / "probe.wasm").write_bytes(probe_module())
    versions = wasmhost.package_versions(root, (*wasmhost.WASM_STACK, "libc-bin", "gcc"))
    trixie = "Debian 13 tree (tests/e2e/wasmhost.py)"
    entries = [
        in_tree(root, "wasmedge_version_clean", ["wasmedge", "--version"], trixie),
        in_tree(root, "wasmedge_version_fullpath", ["/usr/bin/wasmedge", "--version"], trixie),
    ]
    for case, name in (
        ("good", "wasmedge_version_plugin_loaded"),
        ("notelf", "wasmedge_version_plugin_not_elf"),
        ("nodep", "wasmedge_version_plugin_missing_dep"),
    ):
        entries.append(
            in_tree(
                root,
                name,
                ["wasmedge", "--version"],
                f"{trixie}, {plugins[case].name} in {PLUGIN_DIR}",
                binds_ro=[(plugins[case].parent, PLUGIN_DIR)],
            )
        )
    entries.append(
        in_tree(
            root,
            "wasmedge_version_plugin_path_env",
            ["wasmedge", "--version"],
            f"{trixie}, {plugins['good'].name} in /plugins",
            env={"WASMEDGE_PLUGIN_PATH": "/plugins"},
            binds_ro=[(plugins["good"].parent, "/plugins")],
        )
    )
    entries.append(in_tree(root, "crun_version_debian13", ["crun", "--version"], trixie))
    entries.append(
        in_tree(
            root,
            "ldconfig_p_no_cache",
            [
                "sh",
                "-c",
                "mv /etc/ld.so.cache /etc/ld.so.cache.e2e && "
                "{ ldconfig -p; rc=$?; mv /etc/ld.so.cache.e2e /etc/ld.so.cache; exit $rc; }",
            ],
            f"{trixie}, /etc/ld.so.cache moved away for the command (the script's own lines "
            "only move it; the output is ldconfig's)",
        )
    )
    entries.append(crun_run(root, probe, "crun_run_wasm_compat_smart", "compat-smart", trixie))
    entries.append(crun_run(root, probe, "crun_run_wasm_no_annotation", "", trixie))
    entries.append(
        crun_run(root, probe, "crun_run_wasm_no_annotation_mode0644", "", trixie, "0644")
    )
    # crun without libwasmedge0: a second tree, libwasmedge0 removed the way an operator would
    # (crun only Suggests it).
    nolib = wasmhost.prepare(work / "nolib", log).path
    wasmhost.run(nolib, ["dpkg", "--purge", "--force-depends", "libwasmedge0"], check=True)
    entries.append(
        crun_run(
            nolib,
            probe,
            "crun_run_wasm_no_libwasmedge",
            "compat-smart",
            f"{trixie}, `dpkg --purge --force-depends libwasmedge0` first",
        )
    )
    wasmhost.remove(nolib)
    # Debian 12's crun, this machine's own, and the same package's binary unpacked from its .deb.
    debs = sorted(DEBIAN12_CRUN_DEB.glob("crun_*.deb"))
    host_crun = shutil.which("crun")
    if host_crun:
        argv = [host_crun, "--version"]
        result = subprocess.run(argv, capture_output=True, text=True, check=False)
        entries.append(save("crun_version_debian12", argv, result, "this Debian 12 machine"))
    if debs:
        unpacked = Path(tempfile.mkdtemp(prefix="crun12-"))
        subprocess.run(["dpkg-deb", "-x", str(debs[-1]), str(unpacked)], check=True)
        binary = unpacked / "usr" / "bin" / "crun"
        argv = [str(binary), "--version"]
        result = subprocess.run(argv, capture_output=True, text=True, check=False)
        shutil.rmtree(unpacked)
        argv = ["<dpkg-deb -x DEB DIR>/usr/bin/crun", "--version"]
        entries.append(
            save("crun_version_debian12_deb", argv, result, f"unpacked from {debs[-1].name}")
        )
    shutil.rmtree(probe)
    host = subprocess.run(
        ["dpkg-query", "-W", "-f", "${Version}", "crun"],
        capture_output=True,
        text=True,
        check=False,
    ).stdout
    manifest = {
        "date": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime()),
        "trixie_packages": versions,
        "debian12_crun": host,
        "recordings": entries,
    }
    (OUT / "recordings.json").write_text(json.dumps(manifest, indent=1) + "\n")
    print(f"recorded {len(entries)} in {time.monotonic() - start:.1f} s", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
