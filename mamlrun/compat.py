"""learn2learn, imported lazily and quietly (it imports the unmaintained `gym`, which prints a banner)."""

from __future__ import annotations

import contextlib
import io
from types import ModuleType


def import_learn2learn() -> ModuleType:
    """`import learn2learn`; raises ImportError with the install hint when it is missing."""
    try:
        with contextlib.redirect_stderr(io.StringIO()), contextlib.redirect_stdout(io.StringIO()):
            import learn2learn
    except ImportError as exc:
        raise ImportError(
            f"learn2learn is not installed ({exc}); run scripts/install_learn2learn.sh"
        ) from None
    return learn2learn
