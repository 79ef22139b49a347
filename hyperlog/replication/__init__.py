"""hyperlog replication: sparse, live, multi-peer log replication over any Trio stream.

Engine modules (`session`, `scheduler` and its `scheduler_*` parts, `ranges`, `have`,
`caps`, `port`, `constants`) never import trio; `driver` is the thin Trio shell and
`adapter` bridges to `hyperlog.Log`.
See docs/replication.md.
"""

from __future__ import annotations

from hyperlog.replication.driver import (
    LogReplication as LogReplication,
)
from hyperlog.replication.driver import (
    Progress as Progress,
)
from hyperlog.replication.driver import (
    ReplicationSession as ReplicationSession,
)
from hyperlog.replication.driver import (
    register_adapter as register_adapter,
)
from hyperlog.replication.driver import (
    replicate as replicate,
)
from hyperlog.replication.driver import (
    replication_for as replication_for,
)
from hyperlog.replication.port import Applied as Applied
from hyperlog.replication.port import LogPort as LogPort
from hyperlog.replication.port import LogView as LogView

__all__ = [
    "Applied",
    "LogPort",
    "LogReplication",
    "LogView",
    "Progress",
    "ReplicationSession",
    "register_adapter",
    "replicate",
    "replication_for",
]
