"""Change capture: a dataset's source read from its log (see base.py), one module per engine."""

from __future__ import annotations

from importlib import import_module

from sqlalchemy.engine import make_url

from nexpo_workflows.providers.sql import SQLProvider
from nexpo_workflows.sync.capture.base import (
    CaptureLag,
    CaptureLostError,
    CaptureRefusedError,
    ChangeLog,
    LogSegment,
)
from nexpo_workflows.sync.models import SyncSource

__all__ = [
    "CaptureLag",
    "CaptureLostError",
    "CaptureRefusedError",
    "ChangeLog",
    "LogSegment",
    "change_log",
]

# A new engine is one module plus one line here: SQLAlchemy backend name -> "module:Class".
CHANGE_LOGS = {
    "postgresql": "postgres:PostgresChangeLog",
    "sqlite": "sqlite:SQLiteChangeLog",
    "mssql": "sqlserver:SQLServerChangeLog",
}


def change_log(provider: SQLProvider, source: SyncSource, dataset: str) -> ChangeLog:
    backend = make_url(provider.url).get_backend_name()
    if backend not in CHANGE_LOGS:
        raise CaptureRefusedError(
            f"{provider.name} ({backend}) has no change log; set the dataset's source "
            '"capture": "poll" (a version column; misses hard deletes and late commits)'
        )
    module, _, name = CHANGE_LOGS[backend].partition(":")
    log_class: type[ChangeLog] = getattr(
        import_module(f"nexpo_workflows.sync.capture.{module}"), name
    )
    return log_class(provider, source, dataset)
