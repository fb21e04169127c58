"""Commands: every program agentd runs, with a fixed environment, a timeout, and in its root."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from pathlib import Path

from agentd.core.paths import Paths
from agentd.system.elf import elf_interpreter

COMMAND_TIMEOUT_S = 10.0


# Commands run with a fixed environment so a caller's PATH or locale never changes the output
# that parsers read.
_COMMAND_ENV = {
    "PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
    "LC_ALL": "C",
}


@dataclass(frozen=True)
class CommandResult:
    argv: tuple[str, ...]
    returncode: int
    stdout: str
    stderr: str
    stdout_bytes: bytes = b""  # stdout exactly as written, for data that is not text

    @property
    def ok(self) -> bool:
        return self.returncode == 0


def run_command(
    argv: list[str],
    timeout: float = COMMAND_TIMEOUT_S,
    *,
    env: Mapping[str, str] | None = None,
    cwd: Path | None = None,
    input_bytes: bytes | None = None,
) -> CommandResult:
    """Run argv without a shell; a missing binary is 127 and a timeout 124, as in a shell.

    `env` adds to (or overrides) the fixed environment; `input_bytes` is fed on stdin.
    """
    try:
        proc = subprocess.run(
            argv,
            capture_output=True,
            timeout=timeout,
            env={**_COMMAND_ENV, **(env or {})},
            cwd=cwd,
            input=input_bytes,
            stdin=None if input_bytes is not None else subprocess.DEVNULL,
            check=False,
        )
    except FileNotFoundError as exc:
        return CommandResult(tuple(argv), 127, "", str(exc))
    except PermissionError as exc:
        return CommandResult(tuple(argv), 126, "", str(exc))
    except OSError as exc:  # e.g. ENOEXEC: a binary for another architecture
        return CommandResult(tuple(argv), 126, "", str(exc))
    except subprocess.TimeoutExpired:
        return CommandResult(tuple(argv), 124, "", f"timed out after {timeout:.0f}s")
    return CommandResult(
        tuple(argv),
        proc.returncode,
        proc.stdout.decode("utf-8", "replace"),
        proc.stderr.decode("utf-8", "replace"),
        proc.stdout,
    )


Runner = Callable[..., CommandResult]

# In a private mount namespace (so nothing is left mounted, and nothing is ever seen outside),
# the tree gets a proc of its own, then the program runs chrooted into it: crun re-executes
# itself through /proc/self/exe and stops without it ("Failed to re-execute libcrun via memory
# file descriptor"). `--version` and the WASI probe need nothing else (no /dev, no /sys).
_MOUNT_PROC = 'mount -t proc -o nosuid,nodev,noexec proc "$0/proc" && exec chroot "$0" "$@"'

_CAP_SYS_CHROOT = 18
_CAP_SYS_ADMIN = 21  # unshare -m and mount


@dataclass(frozen=True)
class NodeCommands:
    """Runs the node's own programs (binaries under the root, bare names from its PATH) where
    they give the node's answers: on the host for "/", chrooted into a real OS tree under --root
    (`inside`), else from outside as before, a failure then saying why it proves nothing."""

    paths: Paths
    inside: bool = False
    mount_proc: bool = False
    may_chroot: bool = False

    @property
    def as_node(self) -> bool:
        """What the programs print is what the node itself would: "/", or run inside the tree."""
        return self.inside or not self.paths.sandboxed

    def __call__(
        self,
        argv: list[str],
        timeout: float = COMMAND_TIMEOUT_S,
        *,
        env: Mapping[str, str] | None = None,
        input_bytes: bytes | None = None,
    ) -> CommandResult:
        if not self.paths.sandboxed:
            return run_command(argv, timeout, env=env, input_bytes=input_bytes)
        root = str(self.paths.root)
        program = argv[0]
        in_tree = program.startswith(root + "/")
        if self.inside and (in_tree or "/" not in program):
            inner = [_node_view(root, arg) for arg in argv]
            wrapped = (
                ["unshare", "-m", "--propagation", "private", "sh", "-c", _MOUNT_PROC, root]
                if self.mount_proc
                else ["chroot", root]
            )
            result = run_command([*wrapped, *inner], timeout, env=env, input_bytes=input_bytes)
            return replace(result, argv=tuple(argv))
        result = run_command(argv, timeout, env=env, input_bytes=input_bytes)
        loader = elf_interpreter(Path(program)) if in_tree and not result.ok else None
        if loader is None:
            return result
        # One line, the reason first: detection shows the first 120 characters, a check the last
        # line, and either must say that this failure is this host's, not the tree's.
        why = f"{root} has no loader of its own" if self.may_chroot else "chroot needs root"
        said = "; ".join((result.stderr.strip() or result.stdout.strip()).splitlines())
        note = f"not run inside {root} ({why}): this host's loader {loader} ran it"
        return replace(result, stderr=f"{note}: {said or f'exit code {result.returncode}'}")


def node_commands(paths: Paths) -> NodeCommands:
    """How the node's programs run for `paths`: inside the tree when it is a real OS tree (it has
    a dynamic loader of its own) and this process may chroot (root, or CAP_SYS_CHROOT)."""
    if not paths.sandboxed:
        return NodeCommands(paths)
    caps = _effective_capabilities()
    may_chroot = bool(caps >> _CAP_SYS_CHROOT & 1)
    inside = may_chroot and paths.own_loader is not None
    mount_proc = inside and bool(caps >> _CAP_SYS_ADMIN & 1) and paths.under("/proc").is_dir()
    return NodeCommands(paths, inside, mount_proc, may_chroot)


def _effective_capabilities() -> int:
    # Capabilities, not the uid: root in a container may lack CAP_SYS_ADMIN (no unshare, no
    # mount), and without CAP_SYS_CHROOT it cannot chroot at all.
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("CapEff:"):
                return int(line.split()[1], 16)
    except (OSError, ValueError, IndexError):
        pass
    return -1 if os.geteuid() == 0 else 0


def _node_view(root: str, arg: str) -> str:
    """`arg` with a path under the root (alone or as `--option=PATH`) as the node names it."""
    prefix, sep, value = arg.partition("=") if not arg.startswith(root) else ("", "", arg)
    if value == root:
        return prefix + sep + "/"
    if value.startswith(root + "/"):
        return prefix + sep + value[len(root) :]
    return arg


Process = subprocess.Popen[bytes]


ProcessTimeout = subprocess.TimeoutExpired


def start_process(
    argv: list[str], env: Mapping[str, str], pass_fds: tuple[int, ...] = ()
) -> Process:
    """Start argv (no shell) with exactly `env`, stdout piped, stderr shared with this process:
    the daemon's workers, whose logs go where the daemon's go. `pass_fds` stay open in it."""
    return subprocess.Popen(
        argv,
        stdout=subprocess.PIPE,
        stderr=None,
        stdin=subprocess.DEVNULL,
        env=dict(env),
        pass_fds=pass_fds,
    )
