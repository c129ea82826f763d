"""The lifecycle: a Cluster (plan, launch, attach, list, status, logs, cancel), the LaunchHandle of a
launch in progress, the Server it gives, and waiting as a pure step."""

from ..edge.slurm import JobState
from .cluster import Cluster
from .handle import LaunchHandle
from .metrics import EngineMetrics
from .progress import Progress, ProgressCallback, Stage
from .renewal import Renewal
from .server import Server, ServerInfo
from .shared import attach, cancel, cluster_for, launch, list_servers, up
from .walltime import walltime_warning

__all__ = [
    "Cluster",
    "EngineMetrics",
    "JobState",
    "LaunchHandle",
    "Progress",
    "ProgressCallback",
    "Renewal",
    "Server",
    "ServerInfo",
    "Stage",
    "attach",
    "cancel",
    "cluster_for",
    "launch",
    "list_servers",
    "up",
    "walltime_warning",
]
