"""The datasets a worker can sync: the built-in ones and those configured in SYNC_DATASETS."""

from __future__ import annotations

from datetime import datetime
from importlib import import_module
from typing import Annotated, Any

from pydantic import BaseModel, Field, TypeAdapter, ValidationError
from typing_extensions import TypedDict

from nexpo_workflows.config import Settings
from nexpo_workflows.sync.models import DatasetConfig, SyncPlan, SyncSource

CONTENT_DATASET = "content"
# Where a source keeps its quarantine and the verified watermark of each dataset (records of
# the source provider, so they live and die with the data they describe).
QUARANTINE_PREFIX = "quarantine_"
WATERMARKS_DATASET = "nexpo_sync_watermarks"

_ANY_FIELDS: TypeAdapter[dict[str, Any]] = TypeAdapter(dict[str, Any])
_ANY_ROWS: TypeAdapter[list[dict[str, Any]]] = TypeAdapter(list[dict[str, Any]])


class DatasetConfigError(Exception):
    """A dataset's configuration names something that does not exist or is not enabled."""


class UnknownDatasetError(DatasetConfigError):
    """No dataset of this name is configured."""


class SyncedUser(BaseModel):
    """A user as sync targets receive it: the password hash stays in the databases the
    onboarding saga writes."""

    id: str = Field(min_length=1, max_length=64)
    email: str = Field(min_length=3, max_length=320)
    name: str = Field(min_length=1, max_length=200)
    created_at: datetime
    profile: dict[str, Any] | None = None


USERS_DATASET = "users"
USERS_TABLE = "nexpo_users"


def builtin_datasets(settings: Settings) -> list[DatasetConfig]:
    return [
        # Users have no soft delete: offboarding deletes the row, and the delete (from the log)
        # removes every copy; offboarding also erases the copies itself (erase_user_copies).
        DatasetConfig(
            name=USERS_DATASET,
            source=SyncSource(
                provider=settings.sync_source,
                table=USERS_TABLE,
                capture=settings.sync_capture,
                updated_at_column="created_at",
                deleted_column=None,
            ),
            columns=list(SyncedUser.model_fields),
            row_schema="nexpo_workflows.sync.datasets:SyncedUser",
        ),
        # What the AI content pipeline published, from the source's records.
        DatasetConfig(
            name=CONTENT_DATASET,
            source=SyncSource(
                provider=settings.sync_source,
                table="nexpo_records",
                capture=settings.sync_capture,
                updated_at_column="version",
                deleted_column="deleted",
                data_column="data",
                where={"dataset": CONTENT_DATASET},
            ),
        ),
    ]


def dataset_configs(settings: Settings) -> dict[str, DatasetConfig]:
    """Every dataset by name; a configured one replaces a built-in of the same name."""
    return {d.name: d for d in [*builtin_datasets(settings), *settings.sync_datasets]}


def find_dataset(settings: Settings, name: str) -> DatasetConfig:
    datasets = dataset_configs(settings)
    if name not in datasets:
        raise UnknownDatasetError(f"no dataset {name!r}; configured: {sorted(datasets)}")
    return datasets[name]


def plan_dataset(settings: Settings, enabled: list[str], name: str) -> SyncPlan:
    """The dataset's plan where ``enabled`` are the providers at hand: the worker's (in the
    plan activity) or the caller's, to refuse a run that cannot work before it starts. The
    schema is not imported here: only workers need the application's row models."""
    dataset = find_dataset(settings, name)
    source = dataset.source.provider
    targets = dataset.targets
    if targets is None:
        targets = [provider for provider in enabled if provider != source]
    missing = [provider for provider in (source, *targets) if provider not in enabled]
    if missing:
        raise DatasetConfigError(
            f"dataset {name!r} needs {', '.join(missing)}, not enabled here; enabled: {enabled}"
        )
    if source in targets or not targets:
        raise DatasetConfigError(f"dataset {name!r} needs targets other than {source}")
    return SyncPlan(
        dataset=dataset.name,
        source=source,
        targets=targets,
        capture=dataset.source.capture,
        batch_size=dataset.batch_size or settings.sync_batch_size,
        repair_attempts=settings.sync_repair_attempts,
        batches_per_run=settings.sync_batches_per_run,
        step_deadline_seconds=settings.sync_step_deadline_seconds,
        follow_poll_seconds=settings.sync_follow_poll_seconds,
    )


def _plain_fields(model: type[BaseModel]) -> dict[str, Any] | None:
    """The model's fields with their constraints (name: annotation), when checking a row as a
    TypedDict of them gives exactly what the model gives (no validator, serializer, computed
    field, alias, default, exclusion or configuration; not a root model): a batch is then
    checked and dumped without building a model per row, a few times faster. None otherwise."""
    decorators = model.__pydantic_decorators__
    if (
        any(
            (
                decorators.validators,
                decorators.field_validators,
                decorators.root_validators,
                decorators.field_serializers,
                decorators.model_serializers,
                decorators.model_validators,
                decorators.computed_fields,
            )
        )
        or model.model_config
        or model.__pydantic_post_init__ is not None
        or getattr(model, "__pydantic_root_model__", False)
        or model.__pydantic_generic_metadata__["origin"] is not None
        or "__get_pydantic_core_schema__" in vars(model)
    ):
        return None
    fields: dict[str, Any] = {}
    for name, info in model.model_fields.items():
        if (
            not info.is_required()
            or info.alias is not None
            or info.validation_alias is not None
            or info.serialization_alias is not None
            or info.exclude
            or info.discriminator is not None
            or info.annotation is None
        ):
            return None
        fields[name] = (
            Annotated[info.annotation, *info.metadata] if info.metadata else info.annotation
        )
    return fields


class RowValidator:
    """A dataset's schema: turns a source row's fields into the JSON every target stores."""

    def __init__(self, row_schema: str | None) -> None:
        model = _import_model(row_schema) if row_schema else None
        self._model = model
        self._rows: TypeAdapter[list[Any]] = (
            TypeAdapter(list[model]) if model is not None else _ANY_ROWS  # type: ignore[valid-type]
        )
        # The model's fields (name: annotation) where checking them without a model per row
        # gives the same (see _plain_fields), and those checks on a list of rows.
        self.plain_fields = _plain_fields(model) if model is not None else None
        self._plain: TypeAdapter[list[Any]] | None = None
        if model is not None and self.plain_fields is not None:
            row = TypedDict(f"{model.__name__}Fields", self.plain_fields)  # type: ignore[misc]
            self._plain = TypeAdapter(list[row])

    def __call__(self, data: dict[str, Any]) -> dict[str, Any]:
        """The fields as JSON values; raises pydantic's ValidationError when they are wrong."""
        dumped: dict[str, Any]
        if self._model is None:
            dumped = _ANY_FIELDS.dump_python(data, mode="json")
        else:
            dumped = self._model.model_validate(data).model_dump(mode="json")
        return dumped

    def encoded_batch(self, rows: str) -> list[dict[str, Any]] | None:
        """Rows given as one JSON array of their fields, checked by the plain checks in one
        call: their fields as JSON values, or None when a row fails or there are no plain
        checks (then the rows are checked one by one for their reasons)."""
        if self._plain is None:
            return None
        try:
            valid = self._plain.validate_json(rows)
        except ValidationError:
            return None
        return list(self._plain.dump_python(valid, mode="json"))

    def batch(
        self, rows: list[dict[str, Any]]
    ) -> tuple[list[dict[str, Any] | None], dict[int, ValidationError]]:
        """Every row's fields as JSON values (None where invalid) and the error of each invalid
        row by its index: the whole batch in one call into pydantic-core; the model runs on
        its own only for the rows that fail, to give each its reason."""
        if self._model is None:
            return list(_ANY_ROWS.dump_python(rows, mode="json")), {}
        checks = self._plain or self._rows
        try:
            valid = checks.validate_python(rows)
        except ValidationError as error:
            failing = sorted({int(e["loc"][0]) for e in error.errors()})
        else:
            return list(checks.dump_python(valid, mode="json")), {}
        errors: dict[int, ValidationError] = {}
        for index in failing:
            try:
                self._model.model_validate(rows[index])
            except ValidationError as row_error:
                errors[index] = row_error
        dumped: list[dict[str, Any] | None] = [None] * len(rows)
        passing = [n for n in range(len(rows)) if n not in errors]
        kept = [rows[n] for n in passing]
        try:
            passed = checks.dump_python(checks.validate_python(kept), mode="json")
        except ValidationError:  # the plain checks refused a row the model takes
            passed = self._rows.dump_python(self._rows.validate_python(kept), mode="json")
        for n, data in zip(passing, passed, strict=True):
            dumped[n] = data
        return dumped, errors


def _import_model(path: str) -> type[BaseModel]:
    module, _, name = path.partition(":")
    try:
        model = getattr(import_module(module), name)
    except (ImportError, AttributeError, ValueError):
        raise DatasetConfigError(
            f"schema {path!r} cannot be imported (package.module:Model)"
        ) from None
    if not (isinstance(model, type) and issubclass(model, BaseModel)):
        raise DatasetConfigError(f"schema {path!r} is not a pydantic model")
    return model
