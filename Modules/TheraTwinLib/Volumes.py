"""Volume nodes <-> :class:`theratwin.ImageVolume` (LPS <-> RAS), and dose volumes for SlicerRT.

The core keeps images as numpy ``(z, y, x)`` arrays with ITK/DICOM geometry in patient LPS; Slicer keeps
``vtkImageData`` (same memory order, i fastest) with an IJK-to-RAS matrix. The only difference is the sign of
the first two world axes: RAS = diag(-1, -1, 1) * LPS (DICOM PS3.3 C.7.6.2.1.1 defines LPS; Slicer's RAS is
documented at https://slicer.readthedocs.io/en/latest/user_guide/coordinate_systems.html). Voxel values are
copied unchanged, so a round trip is exact.

Only ``slicer`` (MRML from slicer-core or the application), ``vtk`` and ``numpy`` are imported here.
"""

from __future__ import annotations

import logging
from typing import Any

import numpy as np
import slicer
import vtk

__all__ = [
    "LPS_TO_RAS",
    "UNIT_ATTRIBUTE",
    "DOSE_VOLUME_ATTRIBUTE",
    "DOSE_UNIT_NAME_ATTRIBUTE",
    "DOSE_COLOR_TABLE_NAME",
    "ijkToRasFromGeometry",
    "geometryFromIjkToRas",
    "volumeNodeFromImage",
    "updateVolumeNodeFromImage",
    "imageFromVolumeNode",
    "doseColorTableNode",
    "markAsDoseVolume",
    "isDoseVolume",
    "doseUnitName",
    "DOSE_UNIT_VALUE_ATTRIBUTE",
    "showColorLegend",
]

#: Homogeneous LPS -> RAS flip (its own inverse).
LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])

#: Node attribute holding the unit of the voxel values (UCUM-like text as in ``ImageVolume.unit``).
UNIT_ATTRIBUTE = "TheraTwin.Unit"

#: SlicerRT's marker of dose volumes (vtkSlicerRtCommon::DICOMRTIMPORT_DOSE_VOLUME_IDENTIFIER_ATTRIBUTE_NAME):
#: the Dose Volume Histogram and Isodose modules list a volume as dose when this attribute is present.
DOSE_VOLUME_ATTRIBUTE = "DicomRtImport.DoseVolume"
#: SlicerRT's dose-unit attributes (DICOMRTIMPORT_DOSE_UNIT_NAME/VALUE_ATTRIBUTE_NAME). SlicerRT keeps them on the
#: subject-hierarchy *study* item, not on the volume: its DVH and Isodose modules read them with
#: ``GetAttributeFromItemAncestor(doseItem, name, GetDICOMLevelStudy())`` or from ``GetItemAncestorAtLevel(...,
#: study)``, and its RT Dose import and dose engines write them there (SlicerRT DoseVolumeHistogram/Logic,
#: Isodose/Logic, DicomRtImportExport/Logic, ExternalBeamPlanning/Widgets/qSlicerAbstractDoseEngine.cxx).
DOSE_UNIT_NAME_ATTRIBUTE = "DicomRtImport.DoseUnitName"
DOSE_UNIT_VALUE_ATTRIBUTE = "DicomRtImport.DoseUnitValue"

DOSE_COLOR_TABLE_NAME = "TheraTwinDose_ColorTable"


def ijkToRasFromGeometry(geometry: Any) -> np.ndarray:
    """4x4 IJK-to-RAS matrix of a :class:`theratwin.Geometry` (index order i=x, j=y, k=z)."""
    return LPS_TO_RAS @ geometry.affine()


def geometryFromIjkToRas(ijkToRas: np.ndarray, shapeZyx: tuple[int, int, int]) -> Any:
    """The :class:`theratwin.Geometry` of a grid given its IJK-to-RAS matrix and array shape ``(z, y, x)``.

    Raises
    ------
    theratwin.InvalidInputError
        If the matrix has a zero-length or sheared axis (then it is not a voxel grid).
    """
    import theratwin as tt

    lps = LPS_TO_RAS @ np.asarray(ijkToRas, dtype=float)
    axes = lps[:3, :3]
    spacing = np.linalg.norm(axes, axis=0)
    if np.any(spacing <= 0):
        raise tt.InvalidInputError(f"IJK-to-RAS matrix has a zero-length axis (spacing {spacing} mm).")
    direction = axes / spacing[None, :]
    return tt.Geometry(shape=(int(shapeZyx[0]), int(shapeZyx[1]), int(shapeZyx[2])), spacing_mm=tuple(spacing),
                       origin_mm=tuple(lps[:3, 3]), direction=tuple(map(tuple, direction)))


def _vtkMatrix(array: np.ndarray) -> vtk.vtkMatrix4x4:
    m = vtk.vtkMatrix4x4()
    for r in range(4):
        for c in range(4):
            m.SetElement(r, c, float(array[r, c]))
    return m


def _numpyMatrix(matrix: vtk.vtkMatrix4x4) -> np.ndarray:
    return np.array([[matrix.GetElement(r, c) for c in range(4)] for r in range(4)])


def updateVolumeNodeFromImage(volumeNode: Any, image: Any) -> Any:
    """Replace the voxels, geometry and unit of ``volumeNode`` by those of ``image`` (values deep-copied)."""
    array = np.ascontiguousarray(image.array)
    if array.dtype == np.int64 or array.dtype == np.uint64:
        # VTK volumes of "long long" do not render (see slicer.util.updateVolumeFromArray); values fit in 32 bit
        # for every image TheraTwin makes (labels, HU), and anything else is float already
        array = array.astype(np.int32 if array.dtype == np.int64 else np.uint32)
    volumeNode.SetIJKToRASMatrix(_vtkMatrix(ijkToRasFromGeometry(image.geometry)))
    slicer.util.updateVolumeFromArray(volumeNode, array)
    volumeNode.SetAttribute(UNIT_ATTRIBUTE, image.unit)
    return volumeNode


def volumeNodeFromImage(scene: Any, image: Any, name: str, *, className: str = "vtkMRMLScalarVolumeNode") -> Any:
    """Add a volume node holding ``image`` to ``scene``.

    Parameters
    ----------
    scene
        The ``vtkMRMLScene`` (``slicer.mrmlScene`` in the application).
    image
        A :class:`theratwin.ImageVolume`; its unit is kept in the node attribute ``TheraTwin.Unit``.
    name
        Node name (made unique by the scene if needed).
    className
        ``vtkMRMLScalarVolumeNode`` or ``vtkMRMLLabelMapVolumeNode``.

    Returns
    -------
    vtkMRMLScalarVolumeNode
        The new node, with default display nodes.
    """
    node = scene.AddNewNodeByClass(className, name)
    updateVolumeNodeFromImage(node, image)
    node.CreateDefaultDisplayNodes()
    return node


def imageFromVolumeNode(volumeNode: Any, *, unit: str | None = None, applyParentTransform: bool = True) -> Any:
    """Make a :class:`theratwin.ImageVolume` (LPS geometry) from a scalar volume node.

    Parameters
    ----------
    volumeNode
        A ``vtkMRMLScalarVolumeNode`` (or label map) with image data.
    unit
        Unit of the values; by default the node's ``TheraTwin.Unit`` attribute, else ``"1"``.
    applyParentTransform
        Include a linear parent transform in the geometry (as "harden transform" would). A non-linear parent
        transform cannot be expressed on a grid and raises.

    Raises
    ------
    theratwin.InvalidInputError
        If the node has no voxels, has several components, or sits under a non-linear transform.
    """
    import theratwin as tt

    if volumeNode is None or volumeNode.GetImageData() is None:
        name = volumeNode.GetName() if volumeNode is not None else None
        raise tt.InvalidInputError(f"Volume node {name!r} has no image data; load or select a volume first.")
    if volumeNode.GetImageData().GetNumberOfScalarComponents() != 1:
        raise tt.InvalidInputError(f"Volume '{volumeNode.GetName()}' has several components; select a scalar volume.")
    array = np.array(slicer.util.arrayFromVolume(volumeNode), copy=True)
    matrix = vtk.vtkMatrix4x4()
    volumeNode.GetIJKToRASMatrix(matrix)
    ijkToRas = _numpyMatrix(matrix)
    parent = volumeNode.GetParentTransformNode()
    if parent is not None and applyParentTransform:
        if not parent.IsTransformToWorldLinear():
            raise tt.InvalidInputError(
                f"Volume '{volumeNode.GetName()}' is under the non-linear transform '{parent.GetName()}'; "
                "harden the transform (Data module) before using it."
            )
        toWorld = vtk.vtkMatrix4x4()
        parent.GetMatrixTransformToWorld(toWorld)
        ijkToRas = _numpyMatrix(toWorld) @ ijkToRas
    geometry = geometryFromIjkToRas(ijkToRas, array.shape)
    return tt.ImageVolume.from_geometry(array, geometry, unit or volumeNode.GetAttribute(UNIT_ATTRIBUTE) or "1")


def _doseColors(n: int) -> np.ndarray:
    """A perceptually ordered blue-cyan-green-yellow-red ramp (the usual radiotherapy dose wash)."""
    stops = np.array([[0.0, 0.0, 0.5], [0.0, 0.3, 1.0], [0.0, 0.9, 0.9], [0.1, 0.8, 0.1],
                      [1.0, 1.0, 0.0], [1.0, 0.5, 0.0], [0.85, 0.0, 0.0]])
    x = np.linspace(0.0, 1.0, n)
    xp = np.linspace(0.0, 1.0, len(stops))
    return np.stack([np.interp(x, xp, stops[:, c]) for c in range(3)], axis=1)


def doseColorTableNode(scene: Any) -> Any:
    """The dose colour table of ``scene`` (created once, reused; saved with the scene)."""
    node = scene.GetFirstNodeByName(DOSE_COLOR_TABLE_NAME)
    if node is not None:
        return node
    node = scene.AddNewNodeByClass("vtkMRMLColorTableNode", DOSE_COLOR_TABLE_NAME)
    node.SetTypeToUser()
    colors = _doseColors(256)
    node.SetNumberOfColors(len(colors))
    node.GetLookupTable().SetTableRange(0, len(colors) - 1)
    for i, (r, g, b) in enumerate(colors):
        # the lowest entry is transparent so that zero dose does not hide the CT underneath
        node.SetColor(i, f"dose{i:03d}", float(r), float(g), float(b), 0.0 if i == 0 else 1.0)
    node.SetAttribute("Category", "TheraTwin")
    return node


def _studyItem(sh: Any, node: Any) -> int:
    """The subject-hierarchy study item above ``node`` (0 if none)."""
    item = sh.GetItemByDataNode(node) if node is not None else 0
    if not item:
        return 0
    return int(sh.GetItemAncestorAtLevel(item, slicer.vtkMRMLSubjectHierarchyConstants.GetDICOMLevelStudy()))


def _placeUnderStudy(volumeNode: Any, referenceNode: Any) -> int:
    """Put ``volumeNode`` under a study item -- its own, else ``referenceNode``'s, else a new "TheraTwin" study --
    and return that study item (SlicerRT needs the dose under a study to know its unit)."""
    scene = volumeNode.GetScene()
    sh = slicer.vtkMRMLSubjectHierarchyNode.GetSubjectHierarchyNode(scene)
    study = _studyItem(sh, volumeNode)
    if study:
        return study
    study = _studyItem(sh, referenceNode)
    if not study:
        study = sh.CreateStudyItem(sh.CreateSubjectItem(sh.GetSceneItemID(), "TheraTwin results"), "TheraTwin dose")
    item = sh.GetItemByDataNode(volumeNode)
    if item:
        sh.SetItemParent(item, study)
    else:
        sh.CreateItem(study, volumeNode)
    return int(study)


def markAsDoseVolume(volumeNode: Any, *, unit: str = "Gy", referenceNode: Any = None) -> Any:
    """Mark a volume as dose so SlicerRT (Dose Volume Histogram, Isodose) treats it as such, with its unit.

    Sets ``DicomRtImport.DoseVolume = "1"`` on the volume, puts the volume under a subject-hierarchy study (its
    own, else ``referenceNode``'s -- e.g. a time point of the patient --, else a new one) and sets the study's
    ``DicomRtImport.DoseUnitName`` to ``unit`` unless the study already has one (SlicerRT does not overwrite it
    either; a different unit is logged). The voxels are already in ``unit``, so no ``DoseUnitValue`` (dose grid
    scaling) is set, as SlicerRT's own dose engines do. Keeps ``TheraTwin.Unit`` and shows the volume with the
    dose colour table (window 0..max).
    """
    volumeNode.SetAttribute(DOSE_VOLUME_ATTRIBUTE, "1")
    volumeNode.SetAttribute(UNIT_ATTRIBUTE, unit)
    scene = volumeNode.GetScene()
    if scene is not None:
        sh = slicer.vtkMRMLSubjectHierarchyNode.GetSubjectHierarchyNode(scene)
        study = _placeUnderStudy(volumeNode, referenceNode)
        existing = sh.GetItemAttribute(study, DOSE_UNIT_NAME_ATTRIBUTE)
        if not existing:
            sh.SetItemAttribute(study, DOSE_UNIT_NAME_ATTRIBUTE, unit)
        elif existing.lower() != unit.lower():
            logging.warning(f"TheraTwin: the study of '{volumeNode.GetName()}' has dose unit {existing!r} (from an "
                            f"earlier RT Dose); its voxels are in {unit}.")
    if volumeNode.GetDisplayNode() is None:
        volumeNode.CreateDefaultDisplayNodes()
    display = volumeNode.GetDisplayNode()
    if scene is not None and display is not None:
        display.SetAndObserveColorNodeID(doseColorTableNode(scene).GetID())
        maximum = float(np.max(slicer.util.arrayFromVolume(volumeNode))) if volumeNode.GetImageData() else 0.0
        display.SetAutoWindowLevel(False)
        display.SetWindowLevelMinMax(0.0, maximum if maximum > 0 else 1.0)
    return volumeNode


def doseUnitName(volumeNode: Any) -> str:
    """The dose unit SlicerRT shows for ``volumeNode`` ("" if none): the study ancestor's DoseUnitName, read with
    the same subject-hierarchy call as SlicerRT's Dose Volume Histogram logic."""
    scene = volumeNode.GetScene()
    sh = slicer.vtkMRMLSubjectHierarchyNode.GetSubjectHierarchyNode(scene)
    item = sh.GetItemByDataNode(volumeNode)
    if not item:
        return ""
    return str(sh.GetAttributeFromItemAncestor(item, DOSE_UNIT_NAME_ATTRIBUTE,
                                               slicer.vtkMRMLSubjectHierarchyConstants.GetDICOMLevelStudy()))


def isDoseVolume(volumeNode: Any) -> bool:
    """True when SlicerRT would list the volume as a dose volume."""
    return volumeNode is not None and volumeNode.GetAttribute(DOSE_VOLUME_ATTRIBUTE) is not None


def showColorLegend(volumeNode: Any, *, title: str | None = None, visible: bool = True,
                    labelFormat: str = "%.3g") -> Any:
    """Show the colour bar (``vtkMRMLColorLegendDisplayNode``) of a volume in the slice views, titled with the
    quantity and its unit, e.g. ``Dose (Gy)`` (default: the node name and its ``TheraTwin.Unit``).

    The legend node is made once per volume (``vtkSlicerColorLogic.AddDefaultColorLegendDisplayNode``, as the
    Colors module does) and reused; its node class is registered in the scene first if the application has not
    done so (``slicer-core`` without the Colors module). Returns the legend display node.
    """
    scene = volumeNode.GetScene()
    if not scene.IsNodeClassRegistered("vtkMRMLColorLegendDisplayNode"):
        scene.RegisterNodeClass(slicer.vtkMRMLColorLegendDisplayNode())
    if volumeNode.GetDisplayNode() is None:
        volumeNode.CreateDefaultDisplayNodes()
    legend = slicer.vtkSlicerColorLogic.GetColorLegendDisplayNode(volumeNode)
    if legend is None:
        legend = slicer.vtkSlicerColorLogic.AddDefaultColorLegendDisplayNode(volumeNode)
    unit = volumeNode.GetAttribute(UNIT_ATTRIBUTE)
    legend.SetTitleText(title if title is not None else (f"{volumeNode.GetName()} ({unit})" if unit
                                                          else volumeNode.GetName()))
    legend.SetLabelFormat(labelFormat)
    legend.SetVisibility(bool(visible))
    return legend
