"""The errors agentd expects, each mapped to a clean message and an exit code."""

from __future__ import annotations

from typing import Any


class AgentError(Exception):
    """An expected failure: printed as one line, exits with `exit_code`."""

    exit_code = 1
    result: Any = None  # the failed run's recorded result, when it got as far as recording one


class DesiredStateError(AgentError):
    """The desired state cannot be loaded or is invalid."""

    def __init__(self, message: str, problems: list[str] | None = None) -> None:
        super().__init__(message)
        self.problems = problems or []


class NoDesiredState(DesiredStateError):
    """No desired-state file at all yet (not an error in one): a fresh node waits for one."""


class GenerationError(AgentError):
    """The desired generation is older than the one this node already applied."""


class SuspendedError(AgentError):
    """Convergence is suspended (the `suspend` setting or the suspend file)."""


class LockHeldError(AgentError):
    """Another agentd run holds the state lock."""


class DownloadError(AgentError):
    """An artifact could not be fetched or did not match its sha256."""


class ArchiveError(AgentError):
    """An archive is malformed or hostile; nothing from it is installed."""


class ConvergeError(AgentError):
    """Applying the plan failed; the host was put back as it was."""

    report: Any = None  # the run's report, for the result that is recorded


class RollbackError(AgentError):
    """There is nothing to roll back to, or restoring it failed."""


class Cancelled(AgentError):
    """A stop was asked for before the run changed anything; nothing was changed."""


class StorageError(AgentError):
    """The node's storage refused a write (full, over quota, read-only, I/O error): the message
    names the file system, the state the node was left in and what the next run will do."""

    report: Any = None  # the run's report, when converging got that far
