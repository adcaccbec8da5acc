"""Saving a scene as a Slicer data bundle (``.mrb``) and reading one back, without the application.

``slicer.util.saveScene`` needs ``slicer.app`` (its IO manager); the same bundle is written here with
``vtkMRMLApplicationLogic.SaveSceneToSlicerDataBundleDirectory`` (scene file + every storable node's data in
``Data/``) and ``vtkMRMLApplicationLogic.Zip``, which is what the application does underneath.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import slicer

__all__ = ["saveSceneToBundle", "loadSceneFromBundle"]


def _applicationLogic(scene: Any) -> Any:
    logic = slicer.vtkMRMLApplicationLogic()
    logic.SetMRMLScene(scene)
    return logic


def saveSceneToBundle(scene: Any, path: str | os.PathLike[str]) -> Path:
    """Write ``scene`` with all its data into the ``.mrb`` file ``path``.

    Raises
    ------
    OSError
        If the bundle cannot be written (the message names the file).
    """
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    for index in range(scene.GetNumberOfNodesByClass("vtkMRMLStorableNode")):
        node = scene.GetNthNodeByClass(index, "vtkMRMLStorableNode")
        if node.GetStorageNode() is None and node.GetSaveWithScene():
            node.AddDefaultStorageNode()
    work = Path(tempfile.mkdtemp(prefix="theratwin-mrb-"))
    try:
        bundle = work / target.stem
        bundle.mkdir()
        logic = _applicationLogic(scene)
        if not logic.SaveSceneToSlicerDataBundleDirectory(str(bundle), None):
            raise OSError(f"Could not write the scene into the bundle directory for {target}.")
        if not logic.Zip(str(target), str(bundle)):
            raise OSError(f"Could not zip the scene bundle into {target}.")
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return target


def loadSceneFromBundle(path: str | os.PathLike[str], scene: Any = None) -> Any:
    """Read the ``.mrb`` file ``path`` into ``scene`` (a new scene by default) and return the scene."""
    source = Path(path)
    if not source.is_file():
        raise OSError(f"No scene bundle at {source}.")
    scene = scene if scene is not None else slicer.vtkMRMLScene()
    work = Path(tempfile.mkdtemp(prefix="theratwin-mrb-"))
    try:
        if not _applicationLogic(scene).OpenSlicerDataBundle(str(source), str(work)):
            raise OSError(f"Could not read the scene bundle {source}.")
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return scene
