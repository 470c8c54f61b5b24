"""The ``nexpo-workflows`` command-line tool: one module per feature, as the gateway's routes."""

from __future__ import annotations

import logging
import os
import sys

# Each module registers its commands on the app, in this order in the help.
from nexpo_workflows.cli import stack, users, cloud, decisions, content, sync  # noqa: F401  # isort: skip
from nexpo_workflows.cli._common import app

__all__ = ["app", "main"]


def main() -> None:
    try:
        app()
        code = 0
    except SystemExit as done:
        code = done.code if isinstance(done.code, int) else int(done.code is not None)
    except KeyboardInterrupt:
        code = 130
    # Leave without interpreter finalization: the Temporal runtime's native threads can still
    # be running then, and tearing Python down under them crashes now and then (SIGSEGV).
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)
