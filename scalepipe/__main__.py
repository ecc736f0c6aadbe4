"""``python -m scalepipe`` is the ``scalepipe`` command."""

from .cli import entry

entry()
