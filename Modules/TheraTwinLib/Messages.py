"""Errors as one clear line for the user: what went wrong, with which file, and what to do.

TheraTwin's own errors (``theratwin.TheraTwinError`` and its subclasses) already name the file, tag or value
and the remedy. Everything else that can reach a panel -- a file that vanished, a folder that is not writable,
a file that is not DICOM, pixel data no installed decoder can read, too little memory, a broken package -- is
turned into the same kind of message by :func:`userMessage`; :func:`explainedErrors` does it for a block of code
(the Widgets wrap each action in it inside ``slicer.util.tryWithErrorDisplay``, which then shows that line and
keeps the traceback under "details").
"""

from __future__ import annotations

import errno
import os
import traceback
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

__all__ = ["ExplainedError", "userMessage", "explainedErrors", "isOwnError", "isInternalError", "messageFor"]

#: Folders whose code raises messages written for the user (the core and the modules).
_OWN_CODE = (str(Path(__file__).resolve().parents[1]), str(Path(__file__).resolve().parents[2] / "Logic"),
             str(Path(__file__).resolve().parents[2] / "TheraTwinExtension"))


class ExplainedError(RuntimeError):
    """A non-TheraTwin exception restated for the user (the original is its ``__cause__``)."""


def _isPixelDecodingError(error: BaseException) -> bool:
    # pydicom 3 (pydicom.pixels.decoders.base) raises NotImplementedError or RuntimeError starting with this
    return isinstance(error, (NotImplementedError, RuntimeError)) and str(error).startswith("Unable to decode")


def userMessage(error: BaseException, *, path: str | os.PathLike[str] | None = None) -> str:
    """One line for the user about ``error`` (``path``: the file being read, when the error does not say)."""
    where = f" ({os.fspath(path)})" if path is not None else ""
    if isinstance(error, OSError) and not isinstance(error, (ConnectionError, TimeoutError)):
        name = error.filename if error.filename not in (None, "") else (os.fspath(path) if path else "the file")
        if isinstance(error, FileNotFoundError):
            return f"File or folder not found: {name}. Check that it exists and that its drive or share is available."
        if isinstance(error, IsADirectoryError):
            return f"{name} is a folder where a file was expected; choose the file."
        if isinstance(error, NotADirectoryError):
            return f"{name} is not a folder; choose a folder."
        if isinstance(error, PermissionError):
            return (f"No permission to use {name}; choose a location you may read and write, or close the program "
                    "that holds the file.")
        if error.errno == errno.ENOSPC:
            return f"The disk is full while writing {name}; free some space or choose another folder."
        return f"{name}: {error.strerror or error}."
    try:
        from pydicom.errors import InvalidDicomError
    except ImportError:  # pragma: no cover - pydicom is bundled with Slicer
        InvalidDicomError = ()  # type: ignore[assignment, misc]  # noqa: N806
    if isinstance(error, InvalidDicomError):
        return f"Not a DICOM file{where}: it has no DICOM header. Remove it from the folder or choose DICOM files."
    if _isPixelDecodingError(error):
        reason = str(error).splitlines()[0].rstrip(".")
        return (f"The pixel data{where} cannot be decoded: {reason}. Install a decoder for this transfer syntax "
                "(e.g. pylibjpeg with its plugins, with pip) or export the series as uncompressed DICOM.")
    if isinstance(error, MemoryError):
        return ("Not enough memory for this step; close other data or programs, or crop the volumes, and try "
                "again.")
    if isinstance(error, ImportError):
        return (f"The Python package '{error.name or error}' is missing or could not be loaded ({error}); restart "
                "Slicer so that TheraTwin can install its packages, or install it with pip.")
    text = str(error) or "no message"
    if isInternalError(error):
        return (f"Internal error in TheraTwin (a bug, not a problem with your data{where}): {type(error).__name__}: "
                f"{text}. Please report it with the details from the Python console.")
    return f"Unexpected {type(error).__name__}{where}: {text} (the details are in the Python console)."


#: Exception types that, raised by TheraTwin's own code, are bugs rather than a problem with the user's data.
_PROGRAMMING_ERRORS = (AttributeError, KeyError, TypeError, IndexError, NameError, AssertionError)


def isInternalError(error: BaseException) -> bool:
    """True for a programming error (``AttributeError``, ``KeyError``, ``TypeError`` ...) raised in TheraTwin's own
    code (the core or the modules): a bug to report, which the message must not blame on the user's files."""
    if not isinstance(error, _PROGRAMMING_ERRORS):
        return False
    frames = traceback.extract_tb(error.__traceback__)
    if not frames:
        return False
    roots = list(_OWN_CODE)
    try:
        import theratwin

        roots.append(str(Path(theratwin.__file__).resolve().parent))
    except ImportError:  # the core's packages are not installed yet
        pass
    return str(Path(frames[-1].filename).resolve()).startswith(tuple(roots))


def isOwnError(error: BaseException) -> bool:
    """True for errors whose message was written for the user: TheraTwin's own classes, cancellation, and
    ValueError/RuntimeError raised by TheraTwin's code itself (its checks of the user's input)."""
    try:
        import theratwin
        from theratwin.progress import Cancelled

        own: tuple[type[BaseException], ...] = (theratwin.TheraTwinError, Cancelled, ExplainedError)
    except ImportError:  # the core's packages are not installed yet
        own = (ExplainedError,)
    if isinstance(error, own) or type(error).__name__ in ("RestartRequiredError", "UnsupportedSlicerError"):
        return True
    if type(error) in (ValueError, RuntimeError):
        frames = traceback.extract_tb(error.__traceback__)
        return bool(frames) and str(Path(frames[-1].filename).resolve()).startswith(_OWN_CODE)
    return False


def messageFor(error: BaseException, *, path: str | os.PathLike[str] | None = None) -> str:
    """The line to show for ``error``: its own message when it was written for the user, else :func:`userMessage`."""
    return str(error) if isOwnError(error) else userMessage(error, path=path)


@contextmanager
def explainedErrors(path: str | os.PathLike[str] | None = None) -> Iterator[None]:
    """Re-raise any exception of the block that is not already a message for the user as :class:`ExplainedError`
    with :func:`userMessage` (the original stays attached as ``__cause__`` for the details)."""
    try:
        yield
    except Exception as error:
        if isOwnError(error):
            raise
        raise ExplainedError(userMessage(error, path=path)) from error
