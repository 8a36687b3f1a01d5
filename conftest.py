"""pytest set-up for the whole repository.

- Notebooks and tests run in FAST mode unless ``COURSE_FAST`` is set explicitly (``COURSE_FAST=0 pytest
  notebooks`` runs the full preset). The notebook kernels inherit this environment.
- Every notebook must finish within ``NOTEBOOK_BUDGET_S`` seconds (default 90, README "Test everything"); nbmake
  itself only limits single cells, so the whole-notebook budget is checked here.
- When the browser check (``tests/test_browser.py``, marker ``browser``) is selected and can run here, it runs
  every notebook in JupyterLab (and checks the same budget), so nbmake skips those notebooks instead of running
  them a second time (README "Browser check"); ``COURSE_NBMAKE_TOO=1`` runs both.
"""

import os
from pathlib import Path

import pytest

os.environ.setdefault("COURSE_FAST", "1")
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
os.environ.setdefault("MPLBACKEND", "Agg")

NOTEBOOK_BUDGET_S = float(os.environ.get("NOTEBOOK_BUDGET_S", "90"))


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    report = outcome.get_result()
    is_notebook = str(item.fspath).endswith(".ipynb")
    budget = NOTEBOOK_BUDGET_S if os.environ.get("COURSE_FAST", "1") == "1" else None
    if is_notebook and call.when == "call" and report.passed and budget and call.duration > budget:
        report.outcome = "failed"
        report.longrepr = (
            f"{item.fspath.basename} ran for {call.duration:.1f} s, over its FAST-mode budget of {budget:.0f} s "
            "(README, Test everything); make it faster or raise NOTEBOOK_BUDGET_S deliberately"
        )
    if is_notebook and call.when == "call":
        report.user_properties.append(("seconds", round(call.duration, 1)))
        print(f"\n{item.fspath.basename}: {call.duration:.1f} s")


@pytest.hookimpl(trylast=True)  # after -m / -k have deselected what they deselect
def pytest_collection_modifyitems(config, items):
    if os.environ.get("COURSE_NBMAKE_TOO") == "1":
        return
    in_browser = {}
    for item in items:
        spec = getattr(item, "callspec", None)
        if item.get_closest_marker("browser") and spec and "notebook" in spec.params:
            if item.module._requirements()[2] is None:  # chromium, chromedriver and selenium are all here
                in_browser[Path(spec.params["notebook"]).resolve()] = item.nodeid
    for item in items:
        runner = in_browser.get(Path(str(item.fspath)).resolve()) if str(item.fspath).endswith(".ipynb") else None
        if runner:
            item.add_marker(pytest.mark.skip(reason=f"executed in JupyterLab by {runner} (README, Browser check); "
                                                    "COURSE_NBMAKE_TOO=1 runs it here as well"))
