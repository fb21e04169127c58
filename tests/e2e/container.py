"""A Debian tree booted with `systemd-nspawn -b`, and commands run in it through nsenter."""

from __future__ import annotations

import os
import shlex
import signal
import subprocess
import time
from collections.abc import Sequence
from pathlib import Path
from types import TracebackType
from typing import IO, Optional

# A clean environment for everything run in the container: nothing of this machine's (its
# PATH with pyenv shims, PYTHON* variables) leaks into the node.
NODE_ENV = {
    "PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
    "LANG": "C.UTF-8",
    "HOME": "/root",
    "TERM": "dumb",
    "DEBIAN_FRONTEND": "noninteractive",
}


class ContainerError(Exception):
    """The container did not boot, or a command in it failed."""


def _children(pid: int) -> list[int]:
    try:
        text = Path(f"/proc/{pid}/task/{pid}/children").read_text()
    except OSError:
        text = ""
    if text.strip():
        return [int(p) for p in text.split()]
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        # pid (comm) state ppid ...: comm may hold spaces and parentheses.
        fields = stat[stat.rfind(")") + 2 :].split()
        if len(fields) > 1 and int(fields[1]) == pid:
            found.append(int(entry.name))
    return found


def _pid_namespace(pid: int) -> str | None:
    try:
        return os.readlink(f"/proc/{pid}/ns/pid")
    except OSError:
        return None


class Container:
    """One booted host. Started by `boot()`, stopped by `poweroff()` (only this container's
    nspawn process is ever signalled, by its PID)."""

    def __init__(
        self,
        name: str,
        root: Path,
        log: Path,
        *,
        binds_ro: Sequence[tuple[Path, str]] = (),
        slow: float = 1.0,
    ) -> None:
        self.name = name
        self.root = root
        self.log = log
        self.binds_ro = list(binds_ro)
        self.slow = slow
        self.process: Optional[subprocess.Popen[bytes]] = None
        self.leader: Optional[int] = None
        self._log_handle: Optional[IO[bytes]] = None

    # --- life cycle -----------------------------------------------------------------------------

    def boot(self, timeout: float = 120.0) -> tuple[float, str]:
        """Boot and wait for `systemctl is-system-running --wait`; (seconds, its answer)."""
        argv = [
            "systemd-nspawn",
            "--quiet",
            f"--directory={self.root}",
            f"--machine={self.name}",
            "--register=no",
            "--keep-unit",
            "--boot",
            "--console=read-only",
            "--resolv-conf=copy-host",
            "--timezone=off",
            *(f"--bind-ro={host}:{inside}" for host, inside in self.binds_ro),
        ]
        self._log_handle = self.log.open("ab")
        self._log_handle.write(f"$ {shlex.join(argv)}\n".encode())
        self._log_handle.flush()
        start = time.monotonic()
        self.process = subprocess.Popen(
            argv, stdin=subprocess.DEVNULL, stdout=self._log_handle, stderr=subprocess.STDOUT
        )
        deadline = start + timeout * self.slow
        ours = _pid_namespace(os.getpid())
        while self.leader is None:
            self._check_alive()
            # nspawn's first child forks the container's init and exits; the init (PID 1 in a
            # new PID namespace) is then reparented to nspawn, its subreaper.
            for child in _children(self.process.pid):
                ns = _pid_namespace(child)
                if ns is not None and ns != ours:
                    self.leader = child
            if time.monotonic() > deadline:
                raise ContainerError(f"{self.name}: no container init within {timeout}s")
            time.sleep(0.05)
        answer = ""
        while time.monotonic() < deadline:
            self._check_alive()
            result = self.run(
                ["systemctl", "is-system-running", "--wait"],
                check=False,
                timeout=max(1.0, deadline - time.monotonic()),
            )
            answer = result.stdout.strip()
            if answer in ("running", "degraded"):
                return time.monotonic() - start, answer
            time.sleep(0.2)  # systemd not up far enough to answer yet
        raise ContainerError(f"{self.name}: not booted within {timeout * self.slow}s ({answer!r})")

    def _check_alive(self) -> None:
        assert self.process is not None
        if self.process.poll() is not None:
            raise ContainerError(
                f"{self.name}: systemd-nspawn exited {self.process.returncode} (see {self.log})"
            )

    def poweroff(self, timeout: float = 60.0) -> float:
        """`systemctl poweroff` inside, then wait for nspawn; SIGTERM it (nspawn passes it on as
        a clean shutdown), then SIGKILL, only if it does not exit. Returns the seconds taken."""
        if self.process is None:
            return 0.0
        start = time.monotonic()
        if self.process.poll() is None:
            self.run(["systemctl", "poweroff"], check=False, timeout=30)
            try:
                self.process.wait(timeout=timeout * self.slow)
            except subprocess.TimeoutExpired:
                self.process.send_signal(signal.SIGTERM)
                try:
                    self.process.wait(timeout=30)
                except subprocess.TimeoutExpired:
                    self.process.kill()
                    self.process.wait()
        if self._log_handle is not None:
            self._log_handle.close()
            self._log_handle = None
        self.process = None
        self.leader = None
        return time.monotonic() - start

    def __enter__(self) -> Container:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.poweroff()

    # --- commands -------------------------------------------------------------------------------

    def run(
        self,
        argv: Sequence[str],
        *,
        check: bool = True,
        timeout: float = 120.0,
        input: Optional[str] = None,
        env: Optional[dict[str, str]] = None,
    ) -> subprocess.CompletedProcess[str]:
        """argv in every namespace of the container's init, with NODE_ENV (plus `env`)."""
        if self.leader is None:
            raise ContainerError(f"{self.name} is not running")
        environment = [f"{k}={v}" for k, v in {**NODE_ENV, **(env or {})}.items()]
        full = ["nsenter", "-t", str(self.leader), "-a", "--", "env", "-i", *environment, *argv]
        try:
            result = subprocess.run(
                full,
                input=input,
                capture_output=True,
                text=True,
                errors="replace",
                timeout=timeout * self.slow,
                check=False,
            )
        except subprocess.TimeoutExpired as exc:
            raise ContainerError(
                f"{self.name}: {shlex.join(argv)} did not finish within {timeout * self.slow}s"
            ) from exc
        if check and result.returncode != 0:
            raise ContainerError(
                f"{self.name}: {shlex.join(argv)} exited {result.returncode}:\n"
                f"{(result.stdout + result.stderr).strip()[-3000:]}"
            )
        return result

    def sh(
        self, script: str, *, check: bool = True, timeout: float = 120.0
    ) -> subprocess.CompletedProcess[str]:
        return self.run(["sh", "-ec", script], check=check, timeout=timeout)

    def write(self, path: str, text: str, mode: str = "0644") -> None:
        """Write a file inside as an operator would: beside it, then renamed over it."""
        self.run(
            [
                "sh",
                "-ec",
                'mkdir -p "$(dirname "$1")"; cat > "$1.e2e-tmp"; chmod "$2" "$1.e2e-tmp"; '
                'mv -f "$1.e2e-tmp" "$1"',
                "write",
                path,
                mode,
            ],
            input=text,
        )

    def read(self, path: str) -> str:
        return self.run(["cat", path]).stdout

    def exists(self, path: str) -> bool:
        return self.run(["test", "-e", path], check=False).returncode == 0

    def show(self, unit: str, *properties: str) -> dict[str, str]:
        """`systemctl show -p A,B UNIT` as a mapping."""
        result = self.run(["systemctl", "show", "-p", ",".join(properties), unit])
        out = {}
        for line in result.stdout.splitlines():
            key, _, value = line.partition("=")
            out[key] = value
        return out
