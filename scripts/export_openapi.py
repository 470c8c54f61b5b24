"""Export what the TypeScript client is generated from, or check that it is current.

Two OpenAPI documents go to ``clients/typescript/openapi/``: ``gateway.json``, the gateway's
own, and ``workflows.json``, the JSON schemas of every workflow's input and output (what a
client started through Temporal sends and gets back), with a ``Workflows`` schema mapping each
workflow type name to them. ``npm run generate`` in ``clients/typescript`` turns both into
TypeScript types.

    .venv/bin/python -m scripts.export_openapi            # write both documents
    .venv/bin/python -m scripts.export_openapi --check    # exit 1 if either is out of date
"""

from __future__ import annotations

import argparse
import json
import sys
import typing
from pathlib import Path
from typing import Any

from pydantic import TypeAdapter
from pydantic.json_schema import GenerateJsonSchema, JsonSchemaKeyT, JsonSchemaMode
from pydantic_core import core_schema
from temporalio import workflow

from nexpo_workflows import __version__, registry
from nexpo_workflows.api.app import create_app
from nexpo_workflows.api.deps import GatewayState
from nexpo_workflows.config import Settings
from nexpo_workflows.services import Services

OPENAPI_DIR = Path(__file__).resolve().parent.parent / "clients" / "typescript" / "openapi"
REF_TEMPLATE = "#/components/schemas/{model}"


def gateway_document() -> dict[str, Any]:
    # The routes, not the settings, make the document: defaults, and no .env, will do.
    settings = Settings(_env_file=None)
    return create_app(GatewayState(Services.from_settings(settings), None, None)).openapi()


def _workflow_signatures() -> dict[str, tuple[Any, Any]]:
    """Each workflow type name with the type of its one argument and of its result."""
    signatures = {}
    for workflow_class in registry.WORKFLOWS:
        definition = workflow._Definition.must_from_class(workflow_class)
        hints = typing.get_type_hints(definition.run_fn)
        result = hints.pop("return")
        (argument,) = hints.values()
        assert definition.name is not None
        signatures[definition.name] = (argument, result)
    return signatures


class _ResultFieldsRequired(GenerateJsonSchema):
    """Marks every field of a result required (as pydantic's
    ``json_schema_serialization_defaults_required`` would): the converter writes them all,
    defaults and unset fields included, so a client can count on each one."""

    def field_is_required(
        self,
        field: core_schema.ModelField | core_schema.DataclassField | core_schema.TypedDictField,
        total: bool,
    ) -> bool:
        if self.mode == "serialization":
            return field.get("serialization_exclude_if") is None
        return super().field_is_required(field, total)


def _schemas(
    items: list[tuple[JsonSchemaKeyT, JsonSchemaMode, TypeAdapter[Any]]], by_alias: bool
) -> tuple[dict[tuple[JsonSchemaKeyT, JsonSchemaMode], Any], dict[str, Any]]:
    references, definitions = TypeAdapter.json_schemas(
        items,
        ref_template=REF_TEMPLATE,
        by_alias=by_alias,
        schema_generator=_ResultFieldsRequired,
    )
    return references, definitions.get("$defs", {})


def workflows_document() -> dict[str, Any]:
    # The pydantic converter reads an input (validation) and writes a result (serialization).
    items: list[tuple[tuple[str, str], JsonSchemaMode, TypeAdapter[Any]]] = []
    for name, (argument, result) in _workflow_signatures().items():
        items.append(((name, "input"), "validation", TypeAdapter(argument)))
        items.append(((name, "output"), "serialization", TypeAdapter(result)))
    references, definitions = _schemas(items, by_alias=True)
    # The converter validates inputs by alias but serializes results by field name: while
    # no workflow model has an alias, one document describes both.
    if (references, definitions) != _schemas(items, by_alias=False):
        raise SystemExit("a workflow model has a field alias: inputs and outputs would differ")
    workflows: dict[str, Any] = {}
    for ((name, direction), _), schema in references.items():
        workflows.setdefault(name, {"type": "object", "properties": {}})
        workflows[name]["properties"][direction] = schema
    for signature in workflows.values():
        signature["required"] = ["input", "output"]
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "nexpo-workflows workflow inputs and outputs",
            "version": __version__,
            "description": "The JSON each workflow takes and returns through Temporal "
            "(the pydantic data converter); Workflows maps a workflow type name to them.",
        },
        "paths": {},
        "components": {
            "schemas": {
                **definitions,
                "Workflows": {
                    "type": "object",
                    "properties": workflows,
                    "required": sorted(workflows),
                },
            }
        },
    }


def documents() -> dict[str, str]:
    """File name to content, as committed (indented, sorted keys, final newline)."""
    return {
        name: json.dumps(document, indent=2, sort_keys=True, ensure_ascii=False) + "\n"
        for name, document in (
            ("gateway.json", gateway_document()),
            ("workflows.json", workflows_document()),
        )
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--check", action="store_true", help="write nothing; exit 1 if a document is stale"
    )
    arguments = parser.parse_args(argv)
    stale = []
    for name, content in documents().items():
        path = OPENAPI_DIR / name
        current = path.read_text() if path.exists() else None
        if current == content:
            continue
        stale.append(name)
        if not arguments.check:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(content)
    if arguments.check and stale:
        print(
            f"{', '.join(stale)} in {OPENAPI_DIR} no longer match the gateway and the workflows:"
            " run `.venv/bin/python -m scripts.export_openapi`, then"
            " `npm --prefix clients/typescript run generate`, and commit the result",
            file=sys.stderr,
        )
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
