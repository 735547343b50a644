"""Strict mode for CI: with WANFLOW_E2E_STRICT=1 (scripts/e2e.sh --ci sets it) a skipped end-to-end
test counts as a failure (no Chromium or playwright for the browser checks, COMFYUI_DIR unset, ...),
and a run that passes no end-to-end test fails. Without it, a missing Chromium is a skip with a
message, as a user without one expects."""
from __future__ import annotations

import os

import pytest

STRICT = os.environ.get("WANFLOW_E2E_STRICT") == "1"
_passed = []


def _as_failure(report, reason):
    report.outcome = "failed"
    report.longrepr = f"skipped, which WANFLOW_E2E_STRICT=1 counts as a failure: {reason}"


def _skip_reason(report):
    longrepr = report.longrepr
    return longrepr[2] if isinstance(longrepr, tuple) and len(longrepr) == 3 else str(longrepr)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    report = outcome.get_result()
    if STRICT and report.skipped and not hasattr(report, "wasxfail"):
        _as_failure(report, _skip_reason(report))


@pytest.hookimpl(hookwrapper=True)
def pytest_make_collect_report(collector):
    """A module-level skip (COMFYUI_DIR unset) is a collection report, not a test report."""
    outcome = yield
    report = outcome.get_result()
    if STRICT and report.skipped:
        _as_failure(report, _skip_reason(report))


def pytest_runtest_logreport(report):
    if report.when == "call" and report.passed and "/e2e/" in "/" + report.nodeid.replace("\\", "/"):
        _passed.append(report.nodeid)


def pytest_sessionfinish(session, exitstatus):
    if STRICT and exitstatus == 0 and not _passed:
        print("\nWANFLOW_E2E_STRICT=1: no end-to-end test passed", flush=True)
        session.exitstatus = pytest.ExitCode.TESTS_FAILED
