"""A pickle payload for the loaders' safety tests: unpickling it runs code that leaves a file."""
from __future__ import annotations

import os


class RunsCode:
    """Unpickling runs ``touch marker``: the marker file appearing means the loader ran code."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))
