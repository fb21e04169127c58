"""`python3 -m tests.e2e.record_real [--out DIR]`: every recording of tests/fixtures/real/."""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

from agentd.health.probe import probe_module
from tests.e2e import cri, wasmhost

OUT = wasmhost.REPO / "tests" / "fixtures" / "real"
PLUGIN_DIR = wasmhost.DEBIAN_PLUGIN_DIR
MULTIARCH_DIR = "/usr/lib/x86_64-linux-gnu"
TRIXIE = "Debian 13 tree (tests/e2e/wasmhost.py)"
PACKAGES = (*wasmhost.WASM_STACK, "libc-bin", "libc6", "gcc")
VARIANT = "module.wasm.image/variant"


@dataclass
class Recorder:
    """Writes NAME.stdout, NAME.stderr and NAME.exit into `out` and keeps each one's entry."""

    out: Path
    entries: list[dict[str, object]] = field(default_factory=list)

    def save(
        self,
        name: str,
        argv: Sequence[str],
        result: subprocess.CompletedProcess[str],
        where: str,
        **facts: object,
    ) -> None:
        """Byte for byte as the program wrote them; `facts` (env, annotations...) go into the
        entry after its exit code."""
        (self.out / f"{name}.stdout").write_text(result.stdout)
        (self.out / f"{name}.stderr").write_text(result.stderr)
        (self.out / f"{name}.exit").write_text(f"{result.returncode}\n")
        print(f"{name}: exit {result.returncode}", flush=True)
        entry: dict[str, object] = {
            "name": name,
            "argv": list(argv),
            "where": where,
            "exit": result.returncode,
        }
        entry.update(facts)
        entry["date"] = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime())
        self.entries.append(entry)

    def in_tree(
        self,
        root: Path,
        name: str,
        argv: Sequence[str],
        where: str,
        *,
        env: Optional[Mapping[str, str]] = None,
        binds_ro: Sequence[tuple[Path, str]] = (),
        cgroup2: bool = False,
        **facts: object,
    ) -> None:
        result = wasmhost.run(root, argv, env=env, binds_ro=binds_ro, cgroup2=cgroup2)
        if env:
            facts = {"env": dict(env), **facts}
        self.save(name, argv, result, where, **facts)


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


def make_bundle(root: Path, probe: Path, variant: str, mode: str) -> None:
    """/bundle in the tree: `crun spec`, args ["/probe.wasm"] (agentd's probe, `mode`), the
    variant annotation unless `variant` is empty."""
    wasmhost.run(
        root,
        ["sh", "-ec", BUNDLE_SCRIPT, "bundle", variant, mode],
        binds_ro=[(probe, "/probe")],
        cgroup2=True,
        check=True,
    )


def variant_annotation(variant: str) -> dict[str, str]:
    return {VARIANT: variant} if variant else {}


def crun_run(
    rec: Recorder,
    root: Path,
    probe: Path,
    name: str,
    variant: str,
    where: str,
    mode: str = "0755",
) -> None:
    """crun runs /probe.wasm in a bundle, as test-hosts.md step 4 says it can here."""
    make_bundle(root, probe, variant, mode)
    argv = ["crun", "--cgroup-manager=disabled", "run", "--bundle", "/bundle", f"e2e-{name}"]
    rec.in_tree(
        root,
        name,
        argv,
        where,
        binds_ro=[(probe, "/probe")],
        cgroup2=True,
        annotations=variant_annotation(variant),
        probe_mode=mode,
    )


def without_cache(command: str) -> list[str]:
    """`command` with /etc/ld.so.cache moved away, and back afterwards (these lines only move
    it; the output is the command's)."""
    return [
        "sh",
        "-c",
        "mv /etc/ld.so.cache /etc/ld.so.cache.e2e && "
        f"{{ {command}; rc=$?; mv /etc/ld.so.cache.e2e /etc/ld.so.cache; exit $rc; }}",
    ]


def record_wasmedge(rec: Recorder, root: Path, plugins: dict[str, Path]) -> None:
    """`wasmedge --version` as installed, and with tests/e2e/wasmplugin's plugins."""
    rec.in_tree(root, "wasmedge_version_clean", ["wasmedge", "--version"], TRIXIE)
    rec.in_tree(root, "wasmedge_version_fullpath", ["/usr/bin/wasmedge", "--version"], TRIXIE)
    for case, name in (
        ("good", "wasmedge_version_plugin_loaded"),
        ("notelf", "wasmedge_version_plugin_not_elf"),
        ("nodep", "wasmedge_version_plugin_missing_dep"),
    ):
        rec.in_tree(
            root,
            name,
            ["wasmedge", "--version"],
            f"{TRIXIE}, {plugins[case].name} in {PLUGIN_DIR}",
            binds_ro=[(plugins[case].parent, PLUGIN_DIR)],
        )
    rec.in_tree(
        root,
        "wasmedge_version_plugin_path_env",
        ["wasmedge", "--version"],
        f"{TRIXIE}, {plugins['good'].name} in /plugins",
        env={"WASMEDGE_PLUGIN_PATH": "/plugins"},
        binds_ro=[(plugins["good"].parent, "/plugins")],
    )


def record_crun(rec: Recorder, root: Path, probe: Path, work: Path, log: Path) -> None:
    """Debian 13's crun: its version, `ldconfig -p` without a cache, and the probe run."""
    rec.in_tree(root, "crun_version_debian13", ["crun", "--version"], TRIXIE)
    rec.in_tree(
        root,
        "ldconfig_p_no_cache",
        without_cache("ldconfig -p"),
        f"{TRIXIE}, /etc/ld.so.cache moved away for the command (the script's own lines "
        "only move it; the output is ldconfig's)",
    )
    crun_run(rec, root, probe, "crun_run_wasm_compat_smart", "compat-smart", TRIXIE)
    crun_run(rec, root, probe, "crun_run_wasm_no_annotation", "", TRIXIE)
    crun_run(rec, root, probe, "crun_run_wasm_no_annotation_mode0644", "", TRIXIE, "0644")
    # crun without libwasmedge0: a second tree, libwasmedge0 removed the way an operator would
    # (crun only Suggests it).
    nolib = wasmhost.prepare(work / "nolib", log).path
    wasmhost.run(nolib, ["dpkg", "--purge", "--force-depends", "libwasmedge0"], check=True)
    crun_run(
        rec,
        nolib,
        probe,
        "crun_run_wasm_no_libwasmedge",
        "compat-smart",
        f"{TRIXIE}, `dpkg --purge --force-depends libwasmedge0` first",
    )
    wasmhost.remove(nolib)


def record_debian12(rec: Recorder, work: Path, log: Path) -> None:
    """Debian 12's crun: this machine's own, and the same package's binary unpacked from its
    .deb (tests.e2e.cri.debian12_crun, cached in build/e2e-cache/debian12-crun/)."""
    host_crun = shutil.which("crun")
    if host_crun is None:
        raise wasmhost.WasmHostError("no crun on this machine: `apt-get install crun` first")
    argv = [host_crun, "--version"]
    result = subprocess.run(argv, capture_output=True, text=True, check=False)
    rec.save("crun_version_debian12", argv, result, "this Debian 12 machine")
    binary = cri.debian12_crun(work, log)
    deb = sorted(cri.DEBIAN12_CRUN_CACHE.glob("crun_1.8.*.deb"))[-1]
    result = subprocess.run([str(binary), "--version"], capture_output=True, text=True, check=False)
    argv = ["<dpkg-deb -x DEB DIR>/usr/bin/crun", "--version"]
    rec.save("crun_version_debian12_deb", argv, result, f"unpacked from {deb.name}")


def record_loader(rec: Recorder, root: Path, probe: Path, plugins: dict[str, Path]) -> None:
    """Where WasmEdge looks for plugins and where the loader finds libwasmedge: a nested plugin
    directory, /usr/local/lib, the loader's search path, no /etc/ld.so.cache."""
    good = plugins["good"].parent
    plugin = plugins["good"].name
    rec.in_tree(
        root,
        "wasmedge_version_plugin_nested",
        ["wasmedge", "--version"],
        f"{TRIXIE}, {plugin} in {PLUGIN_DIR}/nested (a subdirectory)",
        binds_ro=[(good, f"{PLUGIN_DIR}/nested")],
    )
    rec.in_tree(
        root,
        "wasmedge_version_plugin_in_usr_local",
        ["wasmedge", "--version"],
        f"{TRIXIE}, {plugin} in /usr/local/lib/wasmedge (libwasmedge.so.0 in {MULTIARCH_DIR})",
        binds_ro=[(good, "/usr/local/lib/wasmedge")],
    )
    rec.in_tree(root, "ld_so_help_debian13", ["/lib64/ld-linux-x86-64.so.2", "--help"], TRIXIE)
    move = (
        f"mkdir -p /usr/local/lib/wasmedge && mv {MULTIARCH_DIR}/libwasmedge.so* /usr/local/lib/ "
        "&& ldconfig"
    )
    wasmhost.run(root, ["sh", "-ec", move], check=True)
    try:
        rec.in_tree(
            root,
            "wasmedge_version_lib_in_usr_local",
            ["wasmedge", "--version"],
            f"{TRIXIE}, Debian's libwasmedge.so* moved to /usr/local/lib and ldconfig run; "
            f"{plugin} in /usr/local/lib/wasmedge",
            binds_ro=[(good, "/usr/local/lib/wasmedge")],
        )
        make_bundle(root, probe, "compat-smart", "0755")
        rec.in_tree(
            root,
            "crun_run_wasm_lib_in_usr_local_no_cache",
            without_cache("crun --cgroup-manager=disabled run --bundle /bundle e2e-nocache"),
            f"{TRIXIE}, libwasmedge.so* in /usr/local/lib only, /etc/ld.so.cache moved away for "
            "the command; bundle as crun_run_wasm_compat_smart",
            binds_ro=[(probe, "/probe")],
            cgroup2=True,
            annotations=variant_annotation("compat-smart"),
            probe_mode="0755",
        )
    finally:
        back = f"mv /usr/local/lib/libwasmedge.so* {MULTIARCH_DIR}/ && ldconfig"
        wasmhost.run(root, ["sh", "-ec", back], check=True)
    make_bundle(root, probe, "compat-smart", "0755")
    rec.in_tree(
        root,
        "crun_run_wasm_no_cache",
        without_cache("crun --cgroup-manager=disabled run --bundle /bundle e2e-nocache2"),
        f"{TRIXIE} (libwasmedge.so.0 in {MULTIARCH_DIR}), /etc/ld.so.cache moved away for the "
        "command; bundle as crun_run_wasm_compat_smart",
        binds_ro=[(probe, "/probe")],
        cgroup2=True,
        annotations=variant_annotation("compat-smart"),
        probe_mode="0755",
    )


def record_plugin_files(rec: Recorder, root: Path, plugins: dict[str, Path], files: Path) -> None:
    """`wasmedge --version` with files in the plugin directory that are not plugins it loads:
    text, empty, two bad ones, an ELF that is no plugin, another plugin API, a plugin twice."""
    if files.exists():
        shutil.rmtree(files)
    text = files / "textlong"
    text.mkdir(parents=True)
    (text / "libwasmedgePluginText.so").write_bytes(b"#" * 99 + b"\n")  # longer than an ELF header
    empty = files / "empty"
    empty.mkdir()
    (empty / "libwasmedgePluginEmpty.so").write_bytes(b"")
    two = files / "twobad"
    two.mkdir()
    shutil.copy(plugins["notelf"], two)
    shutil.copy(plugins["nodep"], two)
    # WasmEdge reports them in the directory's readdir order: the entry says which it was.
    readdir_order = os.listdir(two)
    (files / "notplugin").mkdir()
    (files / "api3").mkdir()
    source = (wasmhost.PLUGIN_SOURCE / "plugin.c").read_text()
    current = ".APIVersion = WasmEdge_Plugin_CurrentAPIVersion,"
    if current not in source:
        raise wasmhost.WasmHostError(f"tests/e2e/wasmplugin/plugin.c has no `{current}` line")
    (files / "plugin_api3.c").write_text(source.replace(current, ".APIVersion = 3,"))
    wasmhost.run(
        root,
        [
            "sh",
            "-ec",
            "cc -O2 -Wall -shared -fPIC -o /out/api3/libwasmedgePluginAgentdAPI3.so "
            "/out/plugin_api3.c -lwasmedge; "
            f'cp "$(readlink -f {MULTIARCH_DIR}/libz.so.1)" /out/notplugin/libNotAPlugin.so',
        ],
        binds=[(files, "/out")],
        check=True,
    )
    version = ["wasmedge", "--version"]
    for name, directory, what in (
        ("wasmedge_version_plugin_text_long", text, "libwasmedgePluginText.so (100 bytes of text)"),
        ("wasmedge_version_plugin_empty", empty, "libwasmedgePluginEmpty.so (empty)"),
    ):
        rec.in_tree(
            root,
            name,
            version,
            f"{TRIXIE}, {what} in {PLUGIN_DIR}",
            binds_ro=[(directory, PLUGIN_DIR)],
        )
    rec.in_tree(
        root,
        "wasmedge_version_two_bad_plugins",
        version,
        f"{TRIXIE}, libwasmedgePluginNotELF.so and libwasmedgePluginAgentdNoDep.so in {PLUGIN_DIR}",
        binds_ro=[(two, PLUGIN_DIR)],
        readdir_order=readdir_order,
    )
    for name, directory, what in (
        (
            "wasmedge_version_elf_not_a_plugin",
            files / "notplugin",
            "libNotAPlugin.so (a copy of the tree's libz.so.1)",
        ),
        (
            "wasmedge_version_plugin_other_api",
            files / "api3",
            "libwasmedgePluginAgentdAPI3.so (the C plugin with APIVersion 3, WasmEdge 0.14.0's)",
        ),
    ):
        rec.in_tree(
            root,
            name,
            version,
            f"{TRIXIE}, {what} in {PLUGIN_DIR}",
            binds_ro=[(directory, PLUGIN_DIR)],
        )
    good = plugins["good"].parent
    rec.in_tree(
        root,
        "wasmedge_version_plugin_twice",
        version,
        f"{TRIXIE}, {plugins['good'].name} in /plugins and in {PLUGIN_DIR}",
        env={"WASMEDGE_PLUGIN_PATH": "/plugins"},
        binds_ro=[(good, "/plugins"), (good, PLUGIN_DIR)],
    )


def copy_elf(out: Path, root: Path, plugins: dict[str, Path]) -> None:
    """elf/, real ELF files kept for their dynamic sections (RUNPATH, NEEDED): Debian 13's
    /usr/bin/wasmedge and two of the plugins built in the tree, as they are."""
    elf = out / "elf"
    elf.mkdir(exist_ok=True)
    shutil.copyfile(root / "usr/bin/wasmedge", elf / "wasmedge")
    for case in ("good", "nodep"):
        shutil.copyfile(plugins[case], elf / plugins[case].name)


def main(args: Optional[Sequence[str]] = None) -> int:
    """Every recording of tests/fixtures/real/ (its README lists them), made again."""
    parser = argparse.ArgumentParser(description=main.__doc__)
    parser.add_argument(
        "--out", type=Path, default=OUT, help="where to write (default %(default)s)"
    )
    parser.add_argument(
        "--work", type=Path, default=wasmhost.WORK_DIR / "record", help="trees, plugins, log"
    )
    options = parser.parse_args(args)
    out: Path = options.out
    work: Path = options.work
    log = work / "record.log"
    out.mkdir(parents=True, exist_ok=True)
    work.mkdir(parents=True, exist_ok=True)
    start = time.monotonic()
    rec = Recorder(out)
    root = wasmhost.prepare(work / "root", log).path
    plugins = wasmhost.build_plugins(root, work / "plugins", log)
    probe = work / "probe"
    probe.mkdir(exist_ok=True)
    (probe / "probe.wasm").write_bytes(probe_module())
    versions = wasmhost.package_versions(root, PACKAGES)
    record_wasmedge(rec, root, plugins)
    record_crun(rec, root, probe, work, log)
    record_debian12(rec, work, log)
    record_loader(rec, root, probe, plugins)
    record_plugin_files(rec, root, plugins, work / "files")
    copy_elf(out, root, plugins)
    host = subprocess.run(
        ["dpkg-query", "-W", "-f", "${Version}", "crun"],
        capture_output=True,
        text=True,
        check=False,
    ).stdout
    manifest = {"trixie_packages": versions, "debian12_crun": host, "recordings": rec.entries}
    (out / "recordings.json").write_text(json.dumps(manifest, indent=1) + "\n")
    wasmhost.remove(root)
    print(f"recorded {len(rec.entries)} in {time.monotonic() - start:.1f} s", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
