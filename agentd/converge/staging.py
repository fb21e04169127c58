"""Staging: each planned action as file operations, its artifact unpacked and checked."""

from __future__ import annotations

import os
from pathlib import Path

from agentd.converge.archive import extract_tarball
from agentd.converge.fetch import FetchResult
from agentd.converge.k3sarchives import check_chart_archive, check_image_archive
from agentd.converge.undo import Op
from agentd.core.components import IMAGE_PREFIX, PLUGIN_PREFIX, secret
from agentd.core.errors import ConvergeError
from agentd.core.paths import (
    CRUN_BIN,
    K3S_BIN,
    PLUGIN_DIR,
    USR_LOCAL_BIN,
    USR_LOCAL_INCLUDE,
    USR_LOCAL_LIB,
)
from agentd.core.versions import upstream_version
from agentd.plan.model import Action
from agentd.state.store import AgentState
from agentd.system.host import Host

K3S_LINKS = ("kubectl", "crictl", "ctr")


class Stager:
    """Turns each planned action into file operations, touching nothing outside the state dir."""

    def __init__(self, host: Host, state: AgentState, work: Path) -> None:
        self.host = host
        self.state = state
        self.work = work

    def ops(self, action: Action, blob: FetchResult | None) -> list[Op]:
        c, verb = action.component, action.action
        if verb == "configure":
            assert action.target is not None
            if action.content is None:
                return [Op("remove", action.target)]
            mode = 0o600 if secret(c) else 0o644
            return [Op("write", action.target, data=action.content, mode=mode)]
        if verb == "restart":
            return []
        if verb == "remove":
            return [Op("remove", p) for p in self._installed_files(action)]
        assert blob is not None
        if c == "k3s":
            return self._k3s(blob.path)
        if c == "crun":
            return [Op("copy", CRUN_BIN, source=blob.path, mode=0o755)]
        if c == "wasmedge":
            return self._wasmedge(blob.path)
        if c.startswith(PLUGIN_PREFIX):
            return self._plugin(c[len(PLUGIN_PREFIX) :], blob.path)
        if c.startswith(IMAGE_PREFIX) or c == "addons/gatekeeper/chart":
            return self._placed(action, blob.path)
        raise ConvergeError(f"{c}: agentd does not know how to {verb} it")

    def _k3s(self, blob: Path) -> list[Op]:
        ops = [Op("copy", K3S_BIN, source=blob, mode=0o755)]
        recorded = self.state.inventory.get("k3s")
        for name in K3S_LINKS:
            node_path = f"{USR_LOCAL_BIN}/{name}"
            link = self.host.paths.under(node_path)
            mine = recorded is not None and node_path in recorded.files
            # Like get.k3s.io: link only where no such command exists already.
            if mine or not (link.exists() or link.is_symlink()):
                ops.append(Op("symlink", node_path, link="k3s"))
        return ops

    def _extract(self, name: str, blob: Path) -> tuple[Path, list[str]]:
        dest = self.work / "extract" / name.replace("/", "__")
        return dest, extract_tarball(blob, dest)

    def _wasmedge(self, blob: Path) -> list[Op]:
        dest, members = self._extract("wasmedge", blob)
        tops = {m.split("/", 1)[0] for m in members}
        if len(tops) != 1 or not next(iter(tops)).startswith("WasmEdge-"):
            raise ConvergeError(
                f"the WasmEdge archive should hold one WasmEdge-<version>-Linux/ directory, "
                f"found {sorted(tops)}"
            )
        top = next(iter(tops))
        prefix_map = {
            "bin": USR_LOCAL_BIN,
            "lib64": USR_LOCAL_LIB,
            "lib": USR_LOCAL_LIB,
            "include": USR_LOCAL_INCLUDE,
        }
        ops: list[Op] = []
        for member in members:
            parts = member.split("/")
            if len(parts) < 3 or parts[1] not in prefix_map:
                continue  # README, LICENSE and the like stay out of /usr/local
            node_path = prefix_map[parts[1]] + "/" + "/".join(parts[2:])
            src = dest / member
            if src.is_symlink():
                ops.append(Op("symlink", node_path, link=os.readlink(src)))
            else:
                ops.append(Op("copy", node_path, source=src, mode=src.stat().st_mode & 0o755))
        if not any(o.path == f"{USR_LOCAL_BIN}/wasmedge" for o in ops):
            raise ConvergeError(f"the WasmEdge archive has no {top}/bin/wasmedge")
        # Files of the version being replaced that the new one does not have (an old .so.0.x).
        new_paths = {o.path for o in ops}
        recorded = self.state.inventory.get("wasmedge")
        if recorded:
            ops += [Op("remove", p) for p in recorded.files if p not in new_paths]
        # Real files before the symlinks that point at them.
        return sorted(ops, key=lambda o: (o.kind == "symlink", o.kind == "remove", o.path))

    def _plugin(self, name: str, blob: Path) -> list[Op]:
        dest, members = self._extract(PLUGIN_PREFIX + name, blob)
        libs = [m for m in members if m.endswith(".so") and not (dest / m).is_symlink()]
        if not libs:
            raise ConvergeError(f"plugin {name}: the archive holds no .so file")
        return [
            Op("copy", f"{PLUGIN_DIR}/{Path(m).name}", source=dest / m, mode=0o644) for m in libs
        ]

    def _placed(self, action: Action, blob: Path) -> list[Op]:
        """A verified archive k3s reads as it is (a chart, an image tarball), at the plan's
        target; the one it replaces under another name (an image's new suffix) goes."""
        assert action.target is not None
        if action.component.startswith(IMAGE_PREFIX):
            check_image_archive(blob, action.target)
        elif action.to_version is not None:
            check_chart_archive(blob, action.target, "gatekeeper", action.to_version)
        ops = [Op("copy", action.target, source=blob, mode=0o644)]
        recorded = self.state.inventory.get(action.component)
        if recorded:
            ops += [Op("remove", p) for p in recorded.files if p != action.target]
        return ops

    def replaced_by_package(self, action: Action) -> list[Op]:
        """What agentd installed from artifacts for a component its package now provides:
        removed (journaled, so undone on failure, and kept for rollback), as the plan says."""
        recorded = self.state.inventory.get(action.component)
        if recorded is None or not recorded.files:
            return []
        return [Op("remove", p) for p in recorded.files]

    def _installed_files(self, action: Action) -> list[str]:
        recorded = self.state.inventory.get(action.component)
        if recorded and recorded.files:
            return list(recorded.files)
        # Not recorded (installed before agentd, or by hand in /usr/local): the upstream layout.
        c = action.component
        paths = self.host.paths
        if c.startswith(PLUGIN_PREFIX):
            return [action.target] if action.target else []
        if c == "crun":
            return [CRUN_BIN]
        if c == "k3s":
            links = [
                f"{USR_LOCAL_BIN}/{n}"
                for n in K3S_LINKS
                if os.path.realpath(paths.under(f"{USR_LOCAL_BIN}/{n}"))
                == os.path.realpath(paths.under(K3S_BIN))
            ]
            return [K3S_BIN, *links]
        if c == "wasmedge":
            # Only the programs there: wasmedgec is in some builds only (Debian's has none;
            # `wasmedge compile` does its job).
            programs = (f"{USR_LOCAL_BIN}/wasmedge", f"{USR_LOCAL_BIN}/wasmedgec")
            found = [p for p in programs if paths.under(p).is_file()]
            found += [paths.host_view(p) for p in paths.usr_local_lib.glob("libwasmedge.so*")]
            inc = paths.usr_local_include / "wasmedge"
            found += [paths.host_view(p) for p in inc.rglob("*") if not p.is_dir()]
            return found
        return []


def choose_package(host: Host, action: Action) -> str:
    """The newest version the repositories offer that meets the constraint (the package lists
    refreshed once when none does); ConvergeError, before anything changed, when none can."""
    from agentd.core.versions import satisfies  # noqa: PLC0415

    manager = host.packages
    assert action.package is not None
    assert action.to_version is not None
    if manager is None:
        raise ConvergeError(
            f"{action.component} comes from a distribution package, but this node has neither "
            "apt-get nor dnf"
        )
    constraint, package = action.to_version, action.package
    for attempt in (1, 2):
        offered = manager.available(package)
        fitting = [v for v in offered if satisfies(upstream_version(v), constraint)]
        if fitting:
            from agentd.core.versions import Version, parse_version  # noqa: PLC0415

            def key(v: str) -> Version:
                return parse_version(upstream_version(v)) or Version("0")

            return max(fitting, key=key)
        if attempt == 1:
            manager.refresh()
    shown = ", ".join(sorted({upstream_version(v) for v in offered})) or "nothing"
    raise ConvergeError(
        f"the repositories ({manager.name}) offer {package} {shown}; the desired state asks "
        f"{constraint}: use artifacts for this crun, or a repository that has it"
    )
