"""Turning exceptions into the one-line reasons shown in results, logs and CLI messages."""

from __future__ import annotations


def first_line(error: BaseException) -> str:
    """The first line of the error's message, or its type's name when it has none."""
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__
