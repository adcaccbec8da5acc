"""TheraTwin Web: the per-cycle reading-room workflow in a browser (``theratwin web``).

One more shell over the same core: a trame page around trame-slicer's views of Slicer's own MRML scene, filled
and run through ``TheraTwinLib`` exactly as the Slicer modules do (no science here). Installed with
``pip install theratwin[web]``; its dependencies (trame-slicer, slicer-core 5.11, vtk 9.6) live in their own
environment (``.venv-web``, made by ``scripts/bootstrap.sh``).

Modules: :mod:`.server` (offscreen rendering, binding, access token), :mod:`.app` (the page and its worker),
:mod:`.session` (the workflow on a scene, no UI), :mod:`.views` (what the slice and 3D views show),
:mod:`.plan` (the twin's plan as shown).
"""

from .server import serve

__all__ = ["serve"]
