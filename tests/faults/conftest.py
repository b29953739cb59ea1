"""The fault suite: tests that break runs on purpose (SIGKILL, damaged checkpoints, a full disk,
divergence, fuzzed configs, concurrent writers) and check that nothing is lost.

Each test counts the faults it injects in the `faults` fixture, by kind
(`faults["sigkill: checkpoint write"] += 1`); pytest's summary at the end of the session lists
the counts, so a CI log says how many faults of which kinds the suite survived.
"""

from collections import Counter

import pytest

INJECTED: Counter[str] = Counter()


@pytest.fixture
def faults() -> Counter[str]:
    """The session's count of injected faults, by kind: add what the test injects."""
    return INJECTED


def pytest_terminal_summary(terminalreporter) -> None:
    if not INJECTED:
        return
    terminalreporter.section("faults injected")
    for kind, count in sorted(INJECTED.items()):
        terminalreporter.write_line(f"{count:6d}  {kind}")
    terminalreporter.write_line(f"{sum(INJECTED.values()):6d}  in all")
