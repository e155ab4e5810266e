"""Exceptions for mistakes a user can fix.

The CLI prints these as one readable line (no traceback) and exits non-zero; anything else
is a bug and keeps its traceback.
"""

from __future__ import annotations

__all__ = ["UserError", "ModelFileError"]


class UserError(ValueError):
    """Bad input from the user: the message names the problem and the fix."""


class ModelFileError(UserError):
    """A model file that is missing, truncated, foreign or otherwise unreadable."""
