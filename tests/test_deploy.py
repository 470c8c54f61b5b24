"""The deployment examples (deploy/) set only variables the code reads: a misspelt or removed
setting would be ignored silently (the Settings model ignores unknown names)."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from nexpo_workflows.config import Settings

DEPLOY = Path(__file__).resolve().parent.parent / "deploy"
SETTINGS = {name.upper() for name in Settings.model_fields}


def manifests() -> list[dict[str, Any]]:
    documents = []
    for path in sorted((DEPLOY / "kubernetes").rglob("*.yaml")):
        for document in yaml.safe_load_all(path.read_text()):
            # Kustomizations and JSON patches (lists of operations) are not manifests.
            if isinstance(document, dict) and "metadata" in document:
                documents.append({**document, "_file": str(path.relative_to(DEPLOY))})
    return documents


def containers(document: dict[str, Any]) -> Iterator[dict[str, Any]]:
    spec = document.get("spec", {}).get("template", {}).get("spec", {})
    yield from spec.get("containers", [])
    yield from spec.get("initContainers", [])


def environment(documents: list[dict[str, Any]]) -> dict[str, str]:
    """Every variable the manifests give a container, with the file that sets it: ``env``
    entries, and the keys of each ConfigMap and Secret that an ``envFrom`` names."""
    found: dict[str, str] = {}
    sources: set[tuple[str, str]] = set()
    for document in documents:
        for container in containers(document):
            for variable in container.get("env", []):
                found[variable["name"]] = document["_file"]
            for source in container.get("envFrom", []):
                for kind, key in (("ConfigMap", "configMapRef"), ("Secret", "secretRef")):
                    if key in source:
                        sources.add((kind, source[key]["name"]))
    assert sources, "no container takes its settings from a ConfigMap or a Secret"
    defined = {(d["kind"], d["metadata"]["name"]) for d in documents}
    assert sources <= defined, f"envFrom names what no manifest defines: {sources - defined}"
    for document in documents:
        if (document["kind"], document["metadata"]["name"]) in sources:
            for key in {**document.get("data", {}), **document.get("stringData", {})}:
                found[key] = document["_file"]
    return found


def test_the_manifests_set_only_settings_the_code_reads() -> None:
    found = environment(manifests())
    unknown = {name: file for name, file in found.items() if name not in SETTINGS}
    assert not unknown, f"variables no setting reads: {unknown}"
    # The examples do what the docs say: Temporal on, and both ways of reaching it.
    assert {"ENABLE_TEMPORAL", "TEMPORAL_TASK_QUEUE", "TEMPORAL_CLOUD_API_KEY"} <= set(found)
    assert {"TEMPORAL_TLS_CLIENT_CERT", "PAYLOAD_ENCRYPTION_KEYS"} <= set(found)


def test_workers_are_scaled_horizontally_beside_a_gateway_service() -> None:
    documents = manifests()
    deployments = {
        container.get("args", [None])[0]: document
        for document in documents
        if document["kind"] == "Deployment"
        for container in containers(document)
    }
    assert deployments["worker"]["spec"]["replicas"] > 1
    assert "api" in deployments
    assert any(document["kind"] == "Service" for document in documents)


def dockerfile_environment(text: str) -> set[str]:
    """Names set by the Dockerfile's ``ENV`` instructions (``K=V`` pairs, continued lines)."""
    text = text.replace("\\\n", " ")
    names = set()
    for line in text.splitlines():
        if instruction := re.match(r"\s*ENV\s+(.*)", line):
            names.update(re.findall(r"([A-Za-z_][A-Za-z0-9_]*)=", instruction[1]))
    return names


def test_the_dockerfile_sets_only_settings_the_code_reads() -> None:
    text = (DEPLOY / "Dockerfile").read_text()
    names = dockerfile_environment(text)
    assert names, "the Dockerfile sets no setting"
    assert names <= SETTINGS, f"variables no setting reads: {names - SETTINGS}"
    assert re.search(r"^FROM python:3\.11-slim", text, flags=re.M)
    assert re.search(r"^USER (?!root)\S+", text, flags=re.M)
    assert 'ENTRYPOINT ["nexpo-workflows"]' in text


@pytest.mark.parametrize(
    ("dockerfile", "expected"),
    [
        ("ENV A=1 \\\n    B=2\nRUN x\n", {"A", "B"}),
        ("ENV TEMPORAL_NAMSPACE=x\n", {"TEMPORAL_NAMSPACE"}),
    ],
)
def test_dockerfile_env_names_are_all_found(dockerfile: str, expected: set[str]) -> None:
    # The check above can fail only if every ENV name is seen, continued lines included.
    assert dockerfile_environment(dockerfile) == expected
