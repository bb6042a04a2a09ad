"""Where the tests find what they read, in one place.

In a checkout with its editable install the three are one tree. In ``.ci/run``'s wheel step
(docs/development.md) they are not: the tests run from the sdist unpacked without its package
dir, against the wheel installed in a venv of another Python, and ``INSTANTLY_OAUTH_SOURCE``
names the checkout.

- ``ROOT``: the folder holding ``tests/`` (and ``examples/``, ``benchmarks/`` beside it). Child
  processes run there, with it on their path, so they import the library from where the tests
  do and never from a checkout.
- ``LIBRARY``: the package dir the tests import, the one users run: the installed wheel's in
  the wheel step (its Lua scripts, say).
- ``SOURCE``: the checkout, for what only it holds or what the tests read as text: docs/,
  README.md, pyproject.toml, benchmarks' sources, the source tree (``SOURCE_PACKAGE``), the
  tree the sdist and wheel are built from.
"""

from __future__ import annotations

import os
from pathlib import Path

import instantly_oauth_async

#: the environment variable that names the checkout when the tests run against an installed wheel
SOURCE_VARIABLE = "INSTANTLY_OAUTH_SOURCE"

ROOT = Path(__file__).resolve().parent.parent
LIBRARY = Path(instantly_oauth_async.__file__).resolve().parent
SOURCE = Path(os.environ.get(SOURCE_VARIABLE) or ROOT).resolve()
SOURCE_PACKAGE = SOURCE / "instantly_oauth_async"
