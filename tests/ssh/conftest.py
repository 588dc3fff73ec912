"""Fixtures of the SSH device tests: `sshd`, a real sshd on 127.0.0.1 (tests/ssh/_sshd.py), stopped after the test."""

from __future__ import annotations

import pytest
from _sshd import MISSING, Sshd


@pytest.fixture
def sshd(tmp_path):
    if MISSING:
        pytest.skip(f"{', '.join(MISSING)} not installed: `apt-get install openssh-server openssh-client`")
    server = Sshd(tmp_path / "sshd")
    yield server
    server.kill()
