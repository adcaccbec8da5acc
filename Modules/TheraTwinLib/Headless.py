"""Stand-ins for the application-only parts of Slicer's scripted-module API, for running a module's Logic
with ``slicer-core`` (PyPI: MRML and module logics without Qt) in scripts, notebooks and CI.

Every TheraTwin module imports Slicer's real classes when Qt is present (inside the application) and these
when it is not. Only what a Logic and a parameter-node class need exists here: the module, Logic and Test
bases behave like Slicer's; the Widget base refuses to be created, because a Widget needs the application;
:func:`parameterNodeWrapper` makes a plain settings object with the declared defaults, so a Logic's
``...UsingParameterNode()`` entry point takes the same object in both worlds.
"""

from __future__ import annotations

import enum
import typing
import unittest
from typing import Any

__all__ = [
    "APPLICATION",
    "ScriptedLoadableModule",
    "ScriptedLoadableModuleWidget",
    "ScriptedLoadableModuleLogic",
    "ScriptedLoadableModuleTest",
    "parameterNodeWrapper",
    "WithinRange",
    "Default",
    "Choice",
    "tr",
    "translate",
]

#: False: this module is the stand-in (no Slicer application in this process).
APPLICATION = False


def tr(text: str) -> str:
    """Translation stand-in (the application uses ``slicer.i18n.tr``)."""
    return text


def translate(context: str, text: str) -> str:
    """Translation stand-in (the application uses ``slicer.i18n.translate``)."""
    return text


class _Annotation:
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self.args = args
        self.kwargs = kwargs


class WithinRange(_Annotation):
    """Stand-in of ``slicer.parameterNodeWrapper.WithinRange`` (the range is not enforced here)."""


class Default(_Annotation):
    """Stand-in of ``slicer.parameterNodeWrapper.Default``."""

    @property
    def value(self) -> Any:
        return self.args[0] if self.args else None


class Choice(_Annotation):
    """Stand-in of ``slicer.parameterNodeWrapper.Choice``."""


def _defaultFor(annotation: Any) -> Any:
    if typing.get_origin(annotation) is typing.Annotated:
        base, *extras = typing.get_args(annotation)
        for extra in extras:
            if isinstance(extra, Default):
                return extra.value
        return _defaultFor(base)
    if annotation in (int, float):
        return annotation(0)
    if annotation is bool:
        return False
    if annotation is str:
        return ""
    if isinstance(annotation, type) and issubclass(annotation, enum.Enum):
        return next(iter(annotation))
    return None


def parameterNodeWrapper(cls: type) -> type:
    """Give ``cls`` an ``__init__(parameterNode=None, **values)`` setting every annotated field to its class
    default (or the type's zero / first Enum member / None), like Slicer's wrapper does for a new node."""
    hints = typing.get_type_hints(cls, include_extras=True)

    def __init__(self: Any, parameterNode: Any = None, **values: Any) -> None:
        self.parameterNode = parameterNode
        for name, annotation in hints.items():
            default = cls.__dict__.get(name, _defaultFor(annotation))
            setattr(self, name, values.pop(name, default))
        if values:
            raise TypeError(f"{cls.__name__} has no parameters {sorted(values)}")

    cls.__init__ = __init__  # type: ignore[misc]
    cls.allParameters = property(lambda self: {n: getattr(self, n) for n in hints})  # type: ignore[attr-defined]
    return cls


class ScriptedLoadableModule:
    """Stand-in of ``slicer.ScriptedLoadableModule.ScriptedLoadableModule`` (metadata only)."""

    def __init__(self, parent: Any = None) -> None:
        self.parent = parent if parent is not None else type("ModuleParent", (), {})()
        self.moduleName = type(self).__name__

    def getDefaultModuleDocumentationLink(self, docPage: str = "") -> str:
        return ""


class ScriptedLoadableModuleWidget:
    """A Widget needs the Slicer application; creating one with slicer-core is an error."""

    def __init__(self, parent: Any = None) -> None:
        raise RuntimeError(f"{type(self).__name__} needs the Slicer application (Qt); use the module's Logic.")


class ScriptedLoadableModuleLogic:
    """Stand-in of ``slicer.ScriptedLoadableModule.ScriptedLoadableModuleLogic``."""

    def __init__(self, parent: Any = None) -> None:
        self.parent = parent
        self.moduleName = type(self).__name__.removesuffix("Logic")

    def getParameterNode(self) -> Any:
        """The application keeps a module's parameter node in ``slicer.mrmlScene``; here there is none."""
        raise RuntimeError(f"{self.moduleName}: parameter nodes in the scene need the Slicer application; make the "
                           f"parameter object directly, e.g. {self.moduleName}ParameterNode(timePointVolume=...).")


class ScriptedLoadableModuleTest(unittest.TestCase):
    """Stand-in of ``slicer.ScriptedLoadableModule.ScriptedLoadableModuleTest`` (no delayDisplay dialogs)."""

    def delayDisplay(self, message: str, msec: int = 1000) -> None:
        pass

    def runTest(self) -> None:  # pragma: no cover - overridden by every module test
        pass
