"""This node's last run on its k3s Node object (labels, annotations), published when it changed."""

from __future__ import annotations

from typing import TYPE_CHECKING, Optional

from agentd.core.errors import AgentError
from agentd.daemon.status import utc_timestamp
from agentd.settings.snapshot import AgentConfig
from agentd.state.store import load_state
from agentd.system.host import Host
from agentd.system.log import get_logger

if TYPE_CHECKING:
    from agentd.report.node import NodeReport


class ClusterReport:
    """What was last published, so that an unchanged report is not sent again."""

    def __init__(self, host: Host) -> None:
        self.host = host
        self._published: Optional[NodeReport] = None
        self._error: Optional[str] = None

    def publish(self, config: AgentConfig, status_text: str) -> None:
        """Label and annotate this k3s node with the run's result, when it changed."""
        from agentd.report import node as fleet  # noqa: PLC0415

        try:
            state = load_state(self.host.paths)
        except (AgentError, OSError):
            return
        last = state.last_run if state is not None else None
        if last is None:
            return
        report = fleet.report_of(last.to_json(), status_text)
        if report == self._published:
            return
        why_not = fleet.publish(self.host, config, report, utc_timestamp())
        if why_not is None:
            self._published = report
        elif self._error != why_not:
            self._error = why_not  # said once, tried again next cycle
            get_logger().info("node status not published", component="fleet", reason=why_not)
