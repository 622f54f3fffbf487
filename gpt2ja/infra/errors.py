"""The one base class for errors meant for people.

Library code raises a subclass of :class:`Gpt2jaError` with one line that says
what went wrong, where, and what to do. The command line, the Prefect flows and
the studies catch it in one place each and print that line (no traceback) with
exit status 1; anything else is a bug and keeps its traceback.

Example::

    from gpt2ja.infra.errors import Gpt2jaError

    class ShardsError(Gpt2jaError, ValueError):
        \"\"\"Bad input for the shards stage.\"\"\"

    raise ShardsError("corpus data/clean/x has no train split; rebuild it with `gpt2ja clean`")
"""

from __future__ import annotations


class Gpt2jaError(Exception):
    """An error for people: its message is one line (what, where, what to do)."""

    #: the exit status the command line ends with
    exit_code = 1

    def __str__(self) -> str:
        return " ".join(super().__str__().split())


def one_line(err: BaseException) -> str:
    """The message of ``err`` on one line (``Gpt2jaError`` already is)."""
    return " ".join(str(err).split())
