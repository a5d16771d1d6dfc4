"""Configuration shared by all tests.

Makes ``tests.support`` importable however pytest was started (``python -m pytest``
puts the cwd on sys.path, the ``pytest`` script does not), and records each phase's
report on the item so fixtures can tell in their teardown whether the test failed.
"""

from __future__ import annotations

import sys
from collections.abc import Generator
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parent.parent
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Generator[None, None, None]:
    outcome = yield
    report = outcome.get_result()
    setattr(item, f"rep_{report.when}", report)
