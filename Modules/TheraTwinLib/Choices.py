"""The modules' choice lists, read from the core's registries, so that an installed plug-in appears in the GUI.

A research site that installs a package declaring a ``theratwin.kinetic_models`` or ``theratwin.dose_engines``
entry point (``docs/extending.md``) finds its model or engine in the Kinetics and Dosimetry modules' lists, next to
the built-in ones; a broken plug-in is left out with a warning in the log (``theratwin.registry``).

:func:`registryChoice` is the parameter-node annotation: Slicer's ``Choice`` validator
(``Base/Python/slicer/parameterNodeWrapper/validators.py``) whose list is asked from the registry each time the
wrapper validates a value or its QComboBox connector fills the box (``guiConnectors.py``,
``QComboBoxToStringableConnector`` reads ``choice.choices`` when the GUI is connected). Before the core is
installed (first start of the extension, dependencies not yet confirmed) the built-in names stand in.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

__all__ = ["kineticModelChoices", "doseEngineChoices", "registryChoice", "BUILTIN_KINETIC_MODELS",
           "BUILTIN_DOSE_ENGINES"]

#: Offered when ``theratwin`` is not importable yet ("auto": prior-informed fits selected by their evidence).
BUILTIN_KINETIC_MODELS = ("auto", "mono_exp", "biexp_uptake", "biexp", "triexp", "trapezoid")
#: Offered when ``theratwin`` is not importable yet (voxel kernel convolution, local energy deposition).
BUILTIN_DOSE_ENGINES = ("dvk", "led")


def kineticModelChoices() -> list[str]:
    """``"auto"`` and every kinetic model of ``theratwin.kinetics.KINETIC_MODELS``, built-in and plug-in."""
    from theratwin.kinetics.models import KINETIC_MODELS

    return ["auto", *(name for name in KINETIC_MODELS.names() if name != "auto")]


def doseEngineChoices() -> list[str]:
    """Every dose engine of ``theratwin.dosimetry.DOSE_ENGINES`` (the default ``"dvk"`` first)."""
    from theratwin.dosimetry.dose import DOSE_ENGINES

    names = DOSE_ENGINES.names()
    return sorted(names, key=lambda name: (name != "dvk", name))


def _choiceBase() -> type:
    try:  # inside the Slicer application
        from slicer.parameterNodeWrapper import Choice
    except ImportError:  # slicer-core: the stand-in wrapper
        from .Headless import Choice
    return Choice


def registryChoice(choices: Callable[[], Sequence[str]], builtins: Sequence[str]) -> Any:
    """A ``Choice`` annotation whose list is ``choices()`` (``builtins`` while ``theratwin`` cannot be imported).

    Use as ``kineticModel: Annotated[str, registryChoice(kineticModelChoices, BUILTIN_KINETIC_MODELS)] = "auto"``.
    """

    class RegistryChoice(_choiceBase()):  # type: ignore[misc]
        """Slicer's ``Choice`` with the list read from a TheraTwin registry when it is needed."""

        def __init__(self) -> None:  # Slicer's Choice stores a fixed list; this one has none to store
            pass

        @property
        def choices(self) -> list[str]:
            try:
                return list(choices())
            except ImportError:  # the core is not installed yet (dependencies are installed on first use)
                return list(builtins)

        def validate(self, value: Any) -> None:
            if value not in self.choices:
                raise ValueError(f"'{value}' is not one of the installed choices: {', '.join(self.choices)}.")

        def __repr__(self) -> str:
            return f"registryChoice({choices.__name__})"

    return RegistryChoice()
