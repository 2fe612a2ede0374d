"""The servers named for the tests are checked once, before any test: a bad one is one line."""

from __future__ import annotations

import os

import pytest

from tests.servers import CLUSTER_ENV, COUCH_ENV, cluster_problem, cluster_urls, server_problem


def pytest_configure(config: pytest.Config) -> None:
    external = os.environ.get(COUCH_ENV)
    if external:
        problem = server_problem(external.rstrip("/"))
        if problem is not None:
            raise pytest.UsageError(f"{COUCH_ENV}: {problem}")
    if os.environ.get(CLUSTER_ENV):
        problem = cluster_problem(cluster_urls())
        if problem is not None:
            raise pytest.UsageError(f"{CLUSTER_ENV}: {problem}")
