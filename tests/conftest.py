"""Shared pytest setup: markers for suites that need more than torch."""


def pytest_configure(config):
    config.addinivalue_line("markers", "data: needs the real datasets in ../shared/data (skipped when absent)")
