"""Folder and file settings whose "unset" is really unset.

Slicer's parameter-node wrapper stores a ``pathlib.Path`` field as text and gives an unset one its type's default,
``Path()``, which is ``Path(".")``; its ctkPathLineEdit connector reads an empty field as ``Path("")``, which is
the same (Slicer v5.12.0 ``Base/Python/slicer/parameterNodeWrapper/serializers.py``, ``PathSerializer.default``;
``guiConnectors.py``, ``ctkPathLineEditToPathConnector.read``). Both are true in a test, so "no folder chosen"
became "Slicer's working directory". TheraTwin's path fields are therefore ``pathlib.Path | None``: the wrapper's
union serializer defaults ``X | None`` to None (same ``serializers.py``, ``UnionSerializer.default``), and the
connector registered here shows None as an empty field and reads an empty field back as None.

:func:`pathOrNone` is the one rule for every value that may come from a field, a script or an older scene:
None, ``""`` and ``"."`` mean "not chosen".

Only :func:`registerPathParameterConnector` touches Qt, inside the function, and only in the application; the
module itself imports nothing beyond the standard library, so TheraTwinLib stays Qt-free.
"""

from __future__ import annotations

import os
import pathlib
import types
import typing
from typing import Any

__all__ = ["pathOrNone", "pathText", "isOptionalPath", "registerPathParameterConnector", "writeTextFile"]

_registered = False


def pathOrNone(value: str | os.PathLike[str] | None) -> pathlib.Path | None:
    """``value`` as a Path, or None when it is unset: None, ``""`` or ``"."`` (what an empty field becomes)."""
    if value is None:
        return None
    text = os.fspath(value).strip()
    if text in ("", "."):
        return None
    return pathlib.Path(text)


def writeTextFile(path: str | os.PathLike[str], text: str) -> pathlib.Path:
    """Write ``text`` (UTF-8) to ``path`` atomically (temporary file, fsync, rename): an interrupted save or a full
    disk leaves the previous file or none, never half of one. Returns the path."""
    from theratwin._files import atomic_write

    atomic_write(path, text)
    return pathlib.Path(path)


def pathText(value: str | os.PathLike[str] | None) -> str:
    """The text a path field shows for ``value``: empty when unset."""
    path = pathOrNone(value)
    return "" if path is None else str(path)


def isOptionalPath(datatype: Any) -> bool:
    """True for ``pathlib.Path | None`` (also ``Optional[pathlib.Path]`` and either wrapped in ``Annotated``)."""
    if typing.get_origin(datatype) is typing.Annotated:
        datatype = typing.get_args(datatype)[0]
    if typing.get_origin(datatype) not in (typing.Union, types.UnionType):
        return False
    args = set(typing.get_args(datatype))
    return len(args) == 2 and type(None) in args and bool(args & {pathlib.Path, pathlib.PurePath})


def registerPathParameterConnector() -> bool:
    """Register, once, the ctkPathLineEdit <-> ``pathlib.Path | None`` connector of the parameter-node wrapper.

    Called by a module Widget before ``connectGui``. Returns False without the application (nothing to connect).
    The connector follows Slicer's own ctkPathLineEdit connector (``currentPath`` property, ``currentPathChanged``
    signal; CTK ``Libs/Widgets/ctkPathLineEdit.h``) with :func:`pathOrNone` / :func:`pathText` as conversions.
    """
    global _registered
    if _registered:
        return True
    try:
        import ctk
        from slicer.parameterNodeWrapper import GuiConnector, parameterNodeGuiConnector
    except ImportError:
        return False

    @parameterNodeGuiConnector
    class OptionalPathConnector(GuiConnector):
        @staticmethod
        def canRepresent(widget: Any, datatype: Any) -> bool:
            return type(widget) == ctk.ctkPathLineEdit and isOptionalPath(datatype)  # noqa: E721 (exact class)

        @staticmethod
        def create(widget: Any, datatype: Any) -> Any:
            return OptionalPathConnector(widget) if OptionalPathConnector.canRepresent(widget, datatype) else None

        def __init__(self, widget: Any) -> None:
            super().__init__()
            self._widget = widget

        def _connect(self) -> None:
            self._widget.currentPathChanged.connect(self.changed)

        def _disconnect(self) -> None:
            self._widget.currentPathChanged.disconnect(self.changed)

        def widget(self) -> Any:
            return self._widget

        def read(self) -> pathlib.Path | None:
            return pathOrNone(self._widget.currentPath)

        def write(self, value: pathlib.Path | None) -> None:
            self._widget.currentPath = pathText(value)

    _registered = True
    return True
