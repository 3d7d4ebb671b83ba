"""The processes a node forks, one per role. A role never imports another role."""

from ..process import RoleProcess
from .gateway import GatewayProcess
from .scheduler import SchedulerProcess
from .worker import WorkerProcess

ROLE_PROCESSES: dict[str, type[RoleProcess]] = {
    "gateway": GatewayProcess,
    "worker": WorkerProcess,
    "scheduler": SchedulerProcess,
}
