"""`.env.example` documents every setting, and nothing that is not one."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from nexpo_workflows.config import Settings

ROOT = Path(__file__).resolve().parent.parent


def test_env_example_lists_every_variable_with_a_comment() -> None:
    lines = (ROOT / ".env.example").read_text().splitlines()
    documented = {}
    for index, line in enumerate(lines):
        if match := re.match(r"^([A-Z][A-Z0-9_]*)=", line):
            documented[match.group(1)] = index
    assert set(documented) == {name.upper() for name in Settings.model_fields}
    for name, index in documented.items():
        above = lines[index - 1]
        assert above.startswith("#") or re.match(r"^[A-Z_]+=", above), name


def test_env_example_copied_to_dotenv_loads_the_defaults(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / ".env").write_text((ROOT / ".env.example").read_text())
    monkeypatch.chdir(tmp_path)
    assert Settings() == Settings(_env_file=None)
