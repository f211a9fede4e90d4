"""One exception family for everything a user can act on.

The CLI's error boundary turns an :class:`EdgetlError` into one line on stderr
and its ``exit_code``; anything else is a bug and says so (``--debug`` shows the
traceback).
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable

__all__ = [
    "EdgetlError", "UsageError", "ConfigError", "DataError", "PluginError", "UnknownComponentError",
    "MissingDependencyError", "ExportError", "GateFailedError", "BundleError", "SignatureError",
    "SignatureNotCheckedError", "InstallError", "DeployError",
]


def did_you_mean(name: str, known: Iterable[str]) -> str:
    """``"; did you mean 'x'?"`` for the closest known names, or ``""`` when none is close."""
    close = difflib.get_close_matches(name, list(known), n=3, cutoff=0.5)
    return f"; did you mean {' or '.join(repr(c) for c in close)}?" if close else ""


class EdgetlError(Exception):
    """Base of every error a user can act on; the message is the whole story."""

    exit_code = 1


class UsageError(EdgetlError):
    """The command line itself is wrong (exit status 2, like click's usage errors)."""

    exit_code = 2


class ConfigError(EdgetlError):
    """A config/profile/fleet file, or a ``--set`` override, is invalid."""


class DataError(EdgetlError):
    """A dataset, image or manifest cannot be used as given."""


class PluginError(EdgetlError):
    """A plugin could not be loaded, or registered something invalid."""


class UnknownComponentError(PluginError):
    """A component name is not registered; the message carries a "did you mean"."""


class MissingDependencyError(EdgetlError):
    """An optional library is not installed; the message names the extra to install."""

    def __init__(self, module: str, extra: str | None, what: str = ""):
        self.module, self.extra = module, extra
        hint = f"pip install 'edgetl[{extra}]'" if extra else f"pip install {module}"
        where = f" (needed by {what})" if what else ""
        super().__init__(f"the Python module '{module}' is not installed{where}; run: {hint}")


class ExportError(EdgetlError):
    """Exporting, quantizing or gating a model failed; no bundle was written."""


class GateFailedError(ExportError):
    """No precision passed the accuracy gate (or the one asked for failed)."""


class BundleError(EdgetlError):
    """A bundle is malformed, tampered with, or fails verification."""


class SignatureError(BundleError):
    """A bundle's signature is missing, invalid, or made by an untrusted key."""


class SignatureNotCheckedError(BundleError):
    """Verification passed except that no trusted key was given (exit status 3)."""

    exit_code = 3


class InstallError(EdgetlError):
    """The device refused or failed an install; the previous model keeps serving."""


class DeployError(EdgetlError):
    """A deploy to one or more devices did not end on the new model."""

