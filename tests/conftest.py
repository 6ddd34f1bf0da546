from __future__ import annotations

import os

import pytest

# tests/mpi/ holds the programs that tests/test_mpi*.py launch under mpiexec; they are not collected here.
collect_ignore = ["mpi"]


def pytest_collection_modifyitems(config, items):
    if os.environ.get("HELIX_SLOW") == "1":
        return
    skip_slow = pytest.mark.skip(reason="slow: set HELIX_SLOW=1 to run")
    for item in items:
        if "slow" in item.keywords:
            item.add_marker(skip_slow)


# ---- MLA kernel paths ------------------------------------------------------------------------------------
# A test that takes the `kernel_path` fixture runs once per path of helix.ops.kernel_paths() (every path of
# the C++ enum MlaKernelPath), forced for the test; a path this CPU (or OS) lacks is skipped with the reason.
# The terminal summary names the paths that ran and the ones skipped.

_UNAVAILABLE_PATHS: dict[str, str] = {}  # path -> why this machine cannot run it
_EXERCISED_PATHS: set[str] = set()  # paths with at least one passing test


def pytest_generate_tests(metafunc):
    if "kernel_path" not in metafunc.fixturenames:
        return
    from helix import ops

    params = []
    for name, why in ops.kernel_paths().items():
        if why:
            _UNAVAILABLE_PATHS[name] = why
        marks = [pytest.mark.skip(reason=f"kernel path {name}: {why}")] if why else []
        params.append(pytest.param(name, marks=marks, id=name))
    metafunc.parametrize("kernel_path", params, indirect=True)


@pytest.fixture
def kernel_path(request):
    """The forced MLA kernel path name (parametrized over every path by pytest_generate_tests)."""
    from helix import ops

    ops.set_kernel_path(request.param)
    try:
        yield request.param
    finally:
        ops.set_kernel_path("auto")


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    report = outcome.get_result()
    callspec = getattr(item, "callspec", None)
    if callspec is not None and "kernel_path" in callspec.params and report.when == "call" and report.passed:
        _EXERCISED_PATHS.add(callspec.params["kernel_path"])


def pytest_terminal_summary(terminalreporter):
    if not _EXERCISED_PATHS and not _UNAVAILABLE_PATHS:
        return
    from helix import ops

    names = list(ops.kernel_paths())
    exercised = [
        f"auto (= {ops.kernel_path()} for bfloat16 keys)" if name == "auto" else name
        for name in names
        if name in _EXERCISED_PATHS
    ]
    skipped = [f"{name} ({why})" for name, why in _UNAVAILABLE_PATHS.items()]
    not_run = [n for n in names if n not in _EXERCISED_PATHS and n not in _UNAVAILABLE_PATHS]
    line = f"MLA kernel paths exercised: {', '.join(exercised) or 'none'}"
    line += f"; skipped: {', '.join(skipped) or 'none'}"
    if not_run:
        line += f"; not exercised (no passing test): {', '.join(not_run)}"
    terminalreporter.write_line(line)
