"""The processes a node forks, one per role. A role never imports another role."""

from ..process import RoleProcess
from .gateway import GatewayProcess
from .probe import ProbeProcess
from .scheduler import SchedulerProcess
from .worker import WorkerProcess

ROLE_PROCESSES: dict[str, type[RoleProcess]] = {
    "gateway": GatewayProcess,
    "worker": WorkerProcess,
    "scheduler": SchedulerProcess,
    "probe": ProbeProcess,
}


def processes_for(roles: tuple[str, ...]) -> tuple[str, ...]:
    """The children a node with these roles forks; without a gateway, a probe answers health
    checks on the gateway port."""
    forked = tuple(role for role in roles if role in ROLE_PROCESSES)
    return forked if "gateway" in roles else (*forked, "probe")
