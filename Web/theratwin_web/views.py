"""What the slice and 3D views show: the fused CT + overlay, colour bar, segment outlines, linked cursors, 3D.

Everything goes through MRML, as in Slicer: the slice composite nodes hold the background (CT) and foreground
(activity or a results map) volumes, volume display nodes their colour tables and windows, a colour legend
display node the colour bar (``TheraTwinLib.showColorLegend``), the segmentation display node outlines and
visibility, the crosshair node the linked cursor. trame-slicer's views render these nodes offscreen.
"""

from __future__ import annotations

import logging
from typing import Any

import numpy as np
import slicer

import TheraTwinLib as L

__all__ = ["SceneDisplay", "ACTIVITY_COLOR_NODE_ID", "software_renderer"]

log = logging.getLogger(__name__)

#: Colour table of activity overlays (Slicer's PET heat map, from the default colour nodes).
ACTIVITY_COLOR_NODE_ID = "vtkMRMLPETProceduralColorNodePET-Heat"
#: Opacity of the overlay over the CT.
OVERLAY_OPACITY = 0.55
#: Fractions of the window below which the overlay is not drawn (activity; dose and BED wash).
ACTIVITY_FLOOR = 0.01
DOSE_WASH_FLOOR = 0.05


def _css_gradient(color_node: Any, stops: int = 9) -> str:
    """CSS ``linear-gradient`` sampling the overlay's colour table, for the colour bar drawn in the page."""
    if color_node is None:
        return ""
    lookup = color_node.GetScalarsToColors()
    low, high = lookup.GetRange()
    colors = []
    for i in range(stops):
        rgb = [0.0, 0.0, 0.0]
        lookup.GetColor(low + (high - low) * i / (stops - 1), rgb)
        colors.append("#{:02x}{:02x}{:02x}".format(*(int(round(255 * c)) for c in rgb)))
    return f"linear-gradient(to right, {', '.join(colors)})"


def software_renderer(render_window: Any) -> bool:
    """True on Mesa's software rasterisers (llvmpipe, softpipe), where depth peeling makes translucent surfaces
    vanish: the 3D view then draws them without it."""
    try:
        text = render_window.ReportCapabilities() or ""
    except Exception:  # noqa: BLE001 - capabilities are informative only
        return True
    return any(word in text.lower() for word in ("llvmpipe", "softpipe", "swrast"))


class SceneDisplay:
    """Drives trame-slicer's views of one scene (see the module docstring).

    Parameters
    ----------
    slicer_app
        trame-slicer's ``SlicerApp`` (scene, view manager).
    """

    def __init__(self, slicer_app: Any) -> None:
        self.app = slicer_app
        self.scene = slicer_app.scene
        self.background: Any = None
        self.overlay: Any = None
        self.segmentation: Any = None
        crosshair = self.scene.GetFirstNodeByClass("vtkMRMLCrosshairNode")
        if crosshair is not None:
            # linked cursors: the crosshair is drawn in every slice view at the same point
            crosshair.SetCrosshairMode(slicer.vtkMRMLCrosshairNode.ShowBasic)

    def slice_views(self) -> list[Any]:
        return self.app.view_manager.get_slice_views()

    def configure_views(self) -> None:
        """Link the slice views and, on a software renderer, turn depth peeling off in the 3D views."""
        for view in self.slice_views():
            logic = view._logic  # noqa: SLF001 - trame-slicer keeps the view's slice logic here
            logic.GetSliceCompositeNode().SetLinkedControl(True)
        for view in self.app.view_manager.get_threed_views():
            if software_renderer(view.render_window()):
                view.renderer().SetUseDepthPeeling(False)
                view.renderer().SetUseDepthPeelingForVolumes(False)
                node = view.get_view_node()
                if node is not None:
                    node.SetUseDepthPeeling(False)

    # -- volumes ---------------------------------------------------------------------------------------------
    def show_background(self, ct_node: Any, *, reset: bool = True) -> None:
        """CT in the background of every slice view (abdomen window, W 400 / L 40 HU)."""
        self.background = ct_node
        if ct_node is not None:
            display = ct_node.GetDisplayNode()
            if display is not None:
                display.SetAutoWindowLevel(False)
                display.SetWindowLevel(400.0, 40.0)
        for view in self.slice_views():
            view.set_background_volume_id(ct_node.GetID() if ct_node is not None else None)
        if reset:
            self.reset()

    def show_overlay(self, node: Any, *, title: str = "") -> dict[str, Any]:
        """Show ``node`` over the CT with its colour bar; None shows the CT only. Returns the legend for the page
        (``title`` with unit, ``min``/``max`` of the window)."""
        for other in ([self.overlay] if self.overlay is not None and self.overlay is not node else []):
            legend = slicer.vtkSlicerColorLogic.GetColorLegendDisplayNode(other)
            if legend is not None:
                legend.SetVisibility(False)
        self.overlay = node
        for view in self.slice_views():
            view.set_foreground_volume_id(node.GetID() if node is not None else None)
            view.set_foreground_opacity(OVERLAY_OPACITY)
        if node is None:
            return {"title": "", "min": None, "max": None, "gradient": ""}
        display = node.GetDisplayNode()
        if display is None:
            node.CreateDefaultDisplayNodes()
            display = node.GetDisplayNode()
        values = slicer.util.arrayFromVolume(node)
        top = float(np.percentile(values[values > 0], 99.5)) if np.any(values > 0) else 1.0
        if L.isDoseVolume(node):
            top = float(np.max(values)) if np.any(values > 0) else 1.0  # dose: the whole range, 0 transparent
        else:
            display.SetAndObserveColorNodeID(ACTIVITY_COLOR_NODE_ID)
        display.SetAutoWindowLevel(False)
        display.SetWindowLevelMinMax(0.0, top)
        # low values are not drawn, so the CT shows through outside the uptake (activity) or the dose wash
        display.SetApplyThreshold(True)
        display.SetLowerThreshold((DOSE_WASH_FLOOR if L.isDoseVolume(node) else ACTIVITY_FLOOR) * top)
        display.SetUpperThreshold(float(np.max(values)) + 1.0)
        L.showColorLegend(node, title=title, labelFormat="%.3g")
        return {"title": title, "min": 0.0, "max": top, "gradient": _css_gradient(display.GetColorNode())}

    # -- segmentation ----------------------------------------------------------------------------------------
    def show_segmentation(self, segmentation_node: Any) -> None:
        """Segment outlines (no fill) in the slice views, surfaces in the 3D view, in the segments' colours."""
        self.segmentation = segmentation_node
        if segmentation_node is None:
            return
        if segmentation_node.GetDisplayNode() is None:
            segmentation_node.CreateDefaultDisplayNodes()
        display = segmentation_node.GetDisplayNode()
        display.SetVisibility2DFill(False)
        display.SetVisibility2DOutline(True)
        display.SetSliceIntersectionThickness(2)
        display.SetOpacity3D(0.6)
        try:
            segmentation_node.CreateClosedSurfaceRepresentation()
        except Exception:  # noqa: BLE001 - no surface converter: the 3D view then shows no surfaces
            log.warning("closed-surface representation not available; the 3D view shows no structures")
        segmentation = segmentation_node.GetSegmentation()
        body = [segmentation.GetNthSegmentID(i) for i in range(segmentation.GetNumberOfSegments())
                if segmentation.GetNthSegment(i).GetName().lower() in ("body", "external")]
        for segment_id in body:  # the body outline frames the slice; its surface would hide everything in 3D
            display.SetSegmentVisibility3D(segment_id, False)

    def set_structure_visible(self, name: str, visible: bool) -> None:
        if self.segmentation is None:
            return
        segment_id = self.segmentation.GetSegmentation().GetSegmentIdBySegmentName(name)
        if segment_id:
            self.segmentation.GetDisplayNode().SetSegmentVisibility(segment_id, bool(visible))

    def jump_to_structure(self, name: str) -> bool:
        """Centre every slice view (and the crosshair) on the centre of a structure; False if unknown."""
        if self.segmentation is None:
            return False
        segment_id = self.segmentation.GetSegmentation().GetSegmentIdBySegmentName(name)
        if not segment_id:
            return False
        center = self.segmentation.GetSegmentCenterRAS(segment_id)
        if center is None:
            return False
        slicer.vtkMRMLSliceNode.JumpAllSlices(self.scene, *center, slicer.vtkMRMLSliceNode.CenteredJumpSlice)
        crosshair = self.scene.GetFirstNodeByClass("vtkMRMLCrosshairNode")
        if crosshair is not None:
            crosshair.SetCrosshairRAS(*center)
        for view in self.app.view_manager.get_views():
            view.schedule_render()
        return True

    def reset(self) -> None:
        for view in self.app.view_manager.get_views():
            view.reset_view()

    def clear(self) -> None:
        self.background = self.overlay = self.segmentation = None
        for view in self.slice_views():
            view.set_background_volume_id(None)
            view.set_foreground_volume_id(None)
