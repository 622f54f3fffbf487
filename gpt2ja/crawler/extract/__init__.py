"""Turn downloaded bytes (Aozora .txt/.zip/XHTML, …) into plain text.

No Scrapy imports here: extraction is a pure bytes → text step that the
crawler's pipelines, the CLI and the tests all call the same way.
"""

from __future__ import annotations

from gpt2ja.infra.errors import Gpt2jaError

__all__ = ["ExtractError"]


class ExtractError(Gpt2jaError, ValueError):
    """A file could not be turned into text. The message is one line: what went
    wrong, in which file (and where in it), and what to do about it."""
