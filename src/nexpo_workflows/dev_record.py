"""Where a running ``nexpo-workflows dev`` stack can be reached.

The stack records its addresses under ``DATA_DIR`` once it serves, and removes the record when
it stops. A command run next to it (another shell, same directory, so the same ``DATA_DIR``)
uses the stack's Temporal server when its own configuration names none, and says so.
"""

from __future__ import annotations

import os
from pathlib import Path

from pydantic import BaseModel, ValidationError

from nexpo_workflows.config import Settings

RECORD_NAME = "dev-stack.json"
# What the record may decide; anything the user configured wins over it.
_TEMPORAL_FIELDS = frozenset(
    {"enable_temporal", "temporal_server_url", "temporal_namespace", "temporal_task_queue"}
)


class DevStackRecord(BaseModel):
    pid: int
    temporal_server_url: str
    temporal_namespace: str
    temporal_task_queue: str
    gateway_url: str
    temporal_ui_url: str


def record_path(data_dir: Path) -> Path:
    return data_dir / RECORD_NAME


def write_record(data_dir: Path, record: DevStackRecord) -> None:
    """Atomically: a reader sees the whole record or none."""
    path = record_path(data_dir)
    path.parent.mkdir(parents=True, exist_ok=True)
    temp = path.with_suffix(f".{os.getpid()}.tmp")
    temp.write_text(record.model_dump_json(indent=2))
    temp.replace(path)


def remove_record(data_dir: Path) -> None:
    """Remove the record if it is this process's (a second stack may have replaced it)."""
    record = _read(record_path(data_dir))
    if record is not None and record.pid == os.getpid():
        record_path(data_dir).unlink(missing_ok=True)


def _read(path: Path) -> DevStackRecord | None:
    try:
        return DevStackRecord.model_validate_json(path.read_bytes())
    except (OSError, ValidationError):
        return None


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def running_dev_stack(data_dir: Path) -> DevStackRecord | None:
    """The record of a stack that still runs; a record left by a killed stack is ignored."""
    record = _read(record_path(data_dir))
    if record is None or not _alive(record.pid):
        return None
    return record


def next_to_dev_stack(settings: Settings) -> tuple[Settings, DevStackRecord | None]:
    """The settings a command uses: the running dev stack's Temporal server when the
    configuration (environment or ``.env``) sets none of the Temporal fields."""
    if settings.model_fields_set & _TEMPORAL_FIELDS:
        return settings, None
    record = running_dev_stack(settings.data_dir)
    if record is None:
        return settings, None
    stack = settings.model_copy(
        update={
            "enable_temporal": True,
            "temporal_server_url": record.temporal_server_url,
            "temporal_namespace": record.temporal_namespace,
            "temporal_task_queue": record.temporal_task_queue,
        }
    )
    return stack, record
