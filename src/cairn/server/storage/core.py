"""The server storage core: every rule written once, over a backend's dialect and transactions."""

from __future__ import annotations

from cairn.server.storage.index import HostedIndex
from cairn.server.storage.keyrings import Keyrings
from cairn.server.storage.lifecycle import Lifecycle
from cairn.server.storage.log import MutationLog
from cairn.server.storage.retention import Retention
from cairn.server.storage.usage import Metering
from cairn.server.storage.workspaces import Workspaces


class SqlStorage(Workspaces, MutationLog, Metering, Keyrings, HostedIndex, Lifecycle, Retention):
    """``ServerStorage`` over SQL. A backend (``sqlite``, ``postgres``) names its dialect, opens
    its transactions (``_read``, ``_write``) and answers the searches only it can (``nearest``,
    ``keyword``, ``indexed_relations``); the rules are these classes':

    - ``MutationLog``: idempotent all-or-nothing pushes, gapless per-workspace seqs, quotas;
    - ``Keyrings``: every version kept, the next added by compare-and-swap;
    - ``Metering``: usage per day, quotas, the audit log;
    - ``Workspaces``: workspaces, API keys, devices;
    - ``HostedIndex``: a hosted workspace's index, folded from its log;
    - ``Lifecycle``: a workspace deleted whole, and the server's own audit log;
    - ``Retention``: superseded mutations dropped once every active reader passed them.
    """

    def close(self) -> None:
        raise NotImplementedError
