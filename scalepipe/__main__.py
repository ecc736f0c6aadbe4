"""``python -m scalepipe`` is the ``scalepipe`` command."""

from .cli import main

main()
