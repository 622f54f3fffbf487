"""Assertions shared by the tests."""

from __future__ import annotations


def one_line_error(excinfo, *names: str) -> str:
    """The raised error's message, checked to be one line that names each of ``names``."""
    message = str(excinfo.value)
    assert "\n" not in message
    for name in names:
        assert name in message, (name, message)
    return message
