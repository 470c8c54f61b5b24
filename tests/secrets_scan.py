"""No password, API key or credential the suite used may be in any workflow history, log line
or scraped metrics text.

Each test process scans at its end (``no_secret_left_behind`` in conftest.py): its own
Temporal server's histories, with every payload decoded, so a secret would be found however
deeply it sits in an input, result, failure or marker; and the log lines and metrics pages it
recorded. A hit fails that process's last test. With pytest-xdist every worker scans its own
servers and the controller adds up the figures: a run of the whole suite that found nothing
to read fails too, since a scan that reads nothing cannot find anything.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

import pytest
from temporalio.client import Client

from tests.history_scan import history_payloads

_WORKER_OUTPUT_KEY = "secrets_scan"


@dataclass
class ScanFigures:
    histories: int = 0
    log_lines: int = 0
    metrics_pages: int = 0
    passwords: int = 0
    hits: list[str] = field(default_factory=list)

    def add(self, other: ScanFigures) -> None:
        self.histories += other.histories
        self.log_lines += other.log_lines
        self.metrics_pages += other.metrics_pages
        self.passwords += other.passwords
        self.hits += other.hits

    def read_nothing(self) -> bool:
        """Passwords were submitted, yet one of the places they could leak to was empty."""
        return bool(self.passwords) and not (
            self.histories and self.log_lines and self.metrics_pages
        )


_TOTALS = pytest.StashKey[ScanFigures]()


async def scan(
    client: Client,
    passwords: set[str],
    credentials: set[str],
    log_lines: list[str],
    metrics_pages: list[str],
) -> ScanFigures:
    secrets = passwords | credentials
    figures = ScanFigures(
        log_lines=len(log_lines), metrics_pages=len(metrics_pages), passwords=len(passwords)
    )
    async for execution in client.list_workflows():
        payloads = await history_payloads(client, execution.id)
        figures.histories += 1
        figures.hits += [f"history {execution.id}" for secret in secrets if secret in payloads]
    figures.hits += [line[:80] for line in log_lines for secret in secrets if secret in line]
    figures.hits += [page[:80] for page in metrics_pages for secret in secrets if secret in page]
    return figures


def record(config: pytest.Config, figures: ScanFigures) -> None:
    """Hand this process's figures to whoever reports the run: itself, or xdist's controller."""
    worker_output: dict[str, Any] | None = getattr(config, "workeroutput", None)
    if worker_output is not None:
        worker_output[_WORKER_OUTPUT_KEY] = asdict(figures)
    else:
        config.stash[_TOTALS].add(figures)


def pytest_configure(config: pytest.Config) -> None:
    config.stash[_TOTALS] = ScanFigures()


def pytest_testnodedown(node: Any, error: object) -> None:
    """On xdist's controller, once per worker that finished."""
    figures = getattr(node, "workeroutput", {}).get(_WORKER_OUTPUT_KEY)
    if figures is not None:
        node.config.stash[_TOTALS].add(ScanFigures(**figures))


def _whole_suite(config: pytest.Config) -> bool:
    return config.args_source is pytest.Config.ArgsSource.TESTPATHS


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    config = session.config
    if getattr(config, "workeroutput", None) is not None or not _whole_suite(config):
        return
    if config.stash[_TOTALS].read_nothing():
        session.exitstatus = pytest.ExitCode.TESTS_FAILED


def pytest_terminal_summary(terminalreporter: Any, config: pytest.Config) -> None:
    if getattr(config, "workeroutput", None) is not None:
        return
    totals = config.stash[_TOTALS]
    line = (
        f"secrets scan: {totals.histories} histories, {totals.log_lines} log lines, "
        f"{totals.metrics_pages} metrics pages for {totals.passwords} submitted passwords "
        f"and the configured credentials: {len(totals.hits)} hits"
    )
    if _whole_suite(config) and totals.read_nothing():
        terminalreporter.write_line(f"{line} -- FAILED: the whole suite left nothing to scan")
    else:
        terminalreporter.write_line(line)
