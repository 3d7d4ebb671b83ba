"""The processes a node forks, one per role. A role never imports another role."""

from ..config import Config
from ..process import RoleProcess
from .gateway import GatewayProcess
from .monitor import MonitorProcess
from .scheduler import SchedulerProcess
from .worker import WorkerProcess

ROLE_PROCESSES: dict[str, type[RoleProcess]] = {
    "gateway": GatewayProcess,
    "worker": WorkerProcess,
    "scheduler": SchedulerProcess,
    "monitor": MonitorProcess,
}


def processes_for(config: Config) -> tuple[str, ...]:
    """The children a node forks: one per role, and a monitor when the node has no gateway
    (to answer health checks) or exports metrics (node and queue gauges)."""
    roles = config.node.roles
    forked = tuple(role for role in roles if role in ROLE_PROCESSES)
    if "gateway" not in roles or config.observability.exports("metrics"):
        forked = (*forked, "monitor")
    return forked
