"""The page: trame (Vuetify 3) around trame-slicer's views, bound to a :class:`~theratwin_web.session.WorkflowSession`.

Long work (reading DICOM, the pipeline, pushing) runs in one worker thread; its progress callback hands each
update to the event loop (``call_soon_threadsafe``), so the page stays live and the views keep rendering. A
cancel request makes the next progress call raise ``theratwin.progress.Cancelled``. Anything that goes wrong
reaches the page as one readable line (the core's errors name the file, tag or value); the traceback goes to the
server log only.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from trame.app import get_server
from trame.ui.vuetify3 import SinglePageWithDrawerLayout
from trame.widgets import html
from trame.widgets import vuetify3 as v
from trame_slicer.core import LayoutManager, SlicerApp
from trame_slicer.rca_view import register_rca_factories

from theratwin.errors import TheraTwinError
from theratwin.pipeline import DEFAULT_STAGES
from theratwin.progress import Cancelled

from .session import OVERLAY_NONE, WorkflowSession
from .views import SceneDisplay

__all__ = ["TheraTwinWebApp", "WebOptions"]

log = logging.getLogger(__name__)

# the twin and exports need the earlier stages; a physicist re-runs from one of these
RERUN_STAGES = ("kinetics", "dosimetry", "radiobiology", "twin", "report", "dicom_export", "fhir_export")


#: How the page names the built-in dose engines; a plug-in engine shows its registry name.
_DOSE_METHOD_TITLES = {"dvk": "voxel kernels (DVK)", "led": "local deposition"}


def _dose_method_items() -> list[dict[str, str]]:
    """Every dose engine of the registry (built-in and installed plug-ins), as the page's select lists them."""
    from TheraTwinLib import doseEngineChoices

    return [{"title": _DOSE_METHOD_TITLES.get(name, name), "value": name} for name in doseEngineChoices()]

class WebOptions:
    """What the server was started with (see ``theratwin web --help``)."""

    def __init__(self, *, out_dir: Path, input_dir: str | None = None, results_dir: str | None = None,
                 demo: bool = False, pacs_url: str | None = None, fhir_url: str | None = None,
                 data_root: str | None = None, cache_dir: str | None = None) -> None:
        self.out_dir = out_dir
        self.input_dir = input_dir
        self.results_dir = results_dir
        self.demo = demo
        self.pacs_url = pacs_url
        self.fhir_url = fhir_url
        self.data_root = data_root
        self.cache_dir = cache_dir


def _message(exc: BaseException) -> str:
    """One line for the page: the core's own message for its errors, the type and text for anything else."""
    if isinstance(exc, TheraTwinError):
        return str(exc)
    if isinstance(exc, OSError):
        return f"{exc.filename or ''}: {exc.strerror or exc}".lstrip(": ")
    return f"Unexpected error ({type(exc).__name__}: {exc}); details are in the server log."


class TheraTwinWebApp:
    """The TheraTwin page on a trame server (one scene, one user; see the README for teams)."""

    def __init__(self, options: WebOptions, server: Any = None) -> None:
        self.options = options
        self.server = server or get_server(None, client_type="vue3")
        self.state, self.ctrl = self.server.state, self.server.controller
        self.slicer_app = SlicerApp()
        register_rca_factories(self.slicer_app.view_manager, self.server)
        self.layout_manager = LayoutManager(self.slicer_app.scene, self.slicer_app.view_manager, self.server)
        self.layout_manager.register_layout_dict(LayoutManager.default_grid_configuration())
        self.display = SceneDisplay(self.slicer_app)
        self.session = WorkflowSession(self.slicer_app.scene, options.out_dir, data_root=options.data_root,
                                       cache_dir=options.cache_dir)
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="theratwin-worker")
        self._cancel = threading.Event()
        self._loop: asyncio.AbstractEventLoop | None = None
        self.timings: dict[str, float] = {"start": time.perf_counter()}
        self._init_state()
        self._build_ui()
        self.layout_manager.set_layout("Axial Primary")
        self.display.configure_views()
        self.ctrl.on_server_ready.add(self._on_ready)

    # -- state -----------------------------------------------------------------------------------------------
    def _init_state(self) -> None:
        s = self.state
        s.trame__title = "TheraTwin — research use only"
        s.update({
            "busy": "", "progress": 0.0, "progress_message": "", "progress_log": [], "error": "", "info": "",
            "source_folder": self.options.input_dir or "", "results_folder": self.options.results_dir or "",
            "study": {"loaded": False}, "overlays": [{"title": "CT only", "value": OVERLAY_NONE}],
            "overlay": OVERLAY_NONE, "legend": {"title": "", "min": None, "max": None},
            "cycles": [], "cycle": None, "structure_rows": [], "hidden_structures": [],
            "tac_structure": None, "tac_image": "", "dvh_image": "", "plan": {"available": False},
            "completed_stages": [], "stage_seconds": {}, "rerun_stage": "dosimetry", "dose_method": "dvk",
            "pacs_url": self.options.pacs_url or "", "fhir_url": self.options.fhir_url or "",
            "pacs_studies": [], "outbox": [], "push_report": "", "outputs": [], "out_dir": str(self.session.out_dir),
            "tab": "study", "rerun_stages": list(RERUN_STAGES), "run_seconds": None,
            "dose_methods": _dose_method_items(),
        })
        s.change("overlay")(self._on_overlay)
        s.change("cycle")(self._on_cycle)
        s.change("tac_structure")(self._on_tac_structure)
        s.change("hidden_structures")(self._on_hidden)

    def _flush(self, **values: Any) -> None:
        with self.state:
            self.state.update(values)

    # -- worker plumbing ---------------------------------------------------------------------------------------
    def _progress(self, fraction: float, message: str) -> None:
        """Progress callback for the worker: raises ``Cancelled`` on request, else posts to the event loop."""
        if self._cancel.is_set():
            raise Cancelled(message)
        if self._loop is not None:
            self._loop.call_soon_threadsafe(self._show_progress, fraction, message)

    def _show_progress(self, fraction: float, message: str) -> None:
        log_lines = list(self.state.progress_log)
        if message and (not log_lines or log_lines[-1] != message):
            log_lines = (log_lines + [message])[-12:]
        self._flush(progress=round(100.0 * fraction, 1), progress_message=message, progress_log=log_lines)

    async def _work(self, label: str, job: Callable[[], Any], done: Callable[[Any], None]) -> bool:
        """Run ``job`` in the worker thread, then ``done(result)`` on the loop; errors become the page's message."""
        if self.state.busy:
            self._flush(error=f"Busy with '{self.state.busy}': wait for it or cancel it first.")
            return False
        self._loop = asyncio.get_running_loop()
        self._cancel.clear()
        self._flush(busy=label, error="", info="", progress=0.0, progress_message=label, progress_log=[])
        try:
            result = await self._loop.run_in_executor(self._executor, job)
            done(result)
            return True
        except Cancelled:
            self._flush(info=f"{label}: cancelled; the stages completed before are kept.")
        except Exception as exc:  # noqa: BLE001 - every failure is shown, the server keeps running
            if not isinstance(exc, TheraTwinError):
                log.exception("%s failed", label)
            self._flush(error=f"{label}: {_message(exc)}")
        finally:
            self._flush(busy="", progress_message="")
        return False

    # -- loading ---------------------------------------------------------------------------------------------
    def _on_ready(self, **_: Any) -> None:
        from trame_server.utils.asynchronous import create_task

        self.timings["server_ready"] = time.perf_counter()
        create_task(self._open_initial_source())

    async def _open_initial_source(self) -> None:
        if self.options.demo:
            await self.load_demo()
        elif self.options.input_dir:
            await self.load_folder()
        if self.options.results_dir:
            await self.load_results()
        if self.options.pacs_url and not self.options.demo and not self.options.input_dir:
            await self.list_pacs()

    async def load_demo(self) -> None:
        await self._work("Loading the demo patient", lambda: self.session.read_demo(progress=self._progress),
                         self._show_study)

    async def load_folder(self) -> None:
        folder = self.state.source_folder
        await self._work("Reading the DICOM folder",
                         lambda: self.session.read_folder(folder, progress=self._progress), self._show_study)

    async def load_results(self) -> None:
        folder = self.state.results_folder

        def done(_: Any) -> None:
            self.session.load_results_folder(folder)
            self._refresh_results()
            self._flush(study=self.session.study_summary(), tab="results")

        await self._work("Opening saved results", lambda: self.session.check_folder(folder), done)

    async def list_pacs(self) -> None:
        url = self.state.pacs_url
        await self._work("Searching the PACS", lambda: self.session.list_pacs_studies(url),
                         lambda studies: self._flush(pacs_studies=studies))

    async def retrieve_pacs_study(self, study_uid: str) -> None:
        url = self.state.pacs_url
        await self._work("Retrieving from the PACS",
                         lambda: self.session.read_pacs_study(url, study_uid, progress=self._progress),
                         self._show_study)

    def _show_study(self, loaded: Any) -> None:
        self.display.clear()
        self.session.show_study(loaded)
        nodes = self.session.nodes
        self.display.show_segmentation(nodes.segmentation)
        first = nodes.allTimePoints()[0]
        ct = first.GetNodeReference("TheraTwin.CT") or (nodes.cts[0] if nodes.cts else None)
        self.display.show_background(ct if ct is not None else first)
        self._flush(study=self.session.study_summary(), overlays=self.session.overlays(), overlay=first.GetID(),
                    structure_rows=self.session.structure_rows(None), plan={"available": False}, tac_image="", dvh_image="", cycles=[],
                    completed_stages=[], stage_seconds={}, hidden_structures=[])
        self._on_overlay(first.GetID())
        self.timings.setdefault("first_image", time.perf_counter())

    # -- running ---------------------------------------------------------------------------------------------
    async def run_pipeline(self) -> None:
        t0 = time.perf_counter()
        ok = await self._work("Running the pipeline",
                              lambda: self.session.run_pipeline(stages=DEFAULT_STAGES, progress=self._progress),
                              self._show_run)
        if ok:
            self._flush(run_seconds=round(time.perf_counter() - t0, 1))

    async def rerun_from(self) -> None:
        stage = self.state.rerun_stage
        options = {"method": self.state.dose_method} if stage == "dosimetry" else None
        try:
            again = self.session.forget_from(stage, options)
        except TheraTwinError as exc:
            self._flush(error=str(exc))
            return
        if not again:
            self._flush(error=f"Stage '{stage}' has not run yet: run the pipeline first.")
            return
        await self.run_pipeline()

    def cancel(self) -> None:
        if self.state.busy:
            self._cancel.set()
            self._flush(progress_message="cancelling at the next step ...")

    def _show_run(self, run: Any) -> None:
        self.session.show_results(run)
        cycles = self.session.cycles()
        self._refresh_results()
        dose = [o for o in self.session.overlays() if o["title"].startswith("Dose") and "cycle" in o["title"]]
        if dose:
            self._flush(overlay=dose[0]["value"])
            self._on_overlay(dose[0]["value"])
        self._flush(cycle=self.state.cycle if self.state.cycle in cycles else (cycles[0] if cycles else None),
                    tab="results")

    def _refresh_results(self) -> None:
        data = self.session.results_data or {}
        extras = data.get("extras") or {}
        cycles = self.session.cycles()
        cycle = self.state.cycle if self.state.cycle in cycles else (cycles[0] if cycles else None)
        names = [r["structure"] for r in self.session.structure_rows(cycle)] if cycle is not None else []
        tac = self.state.tac_structure if self.state.tac_structure in names else (
            "kidneys" if "kidneys" in names else (names[0] if names else None))
        self._flush(overlays=self.session.overlays(), cycles=cycles, cycle=cycle,
                    structure_rows=self.session.structure_rows(cycle) if cycle is not None else [],
                    plan=self.session.plan(), completed_stages=extras.get("completed_stages", []),
                    stage_seconds=extras.get("stage_seconds", {}), tac_structure=tac,
                    tac_image=self.session.tac_image(tac) if tac else "",
                    dvh_image=self.session.dvh_image(cycle) if cycle is not None else "",
                    outputs=self.session.outputs(), outbox=self.session.outbox_state(),
                    out_dir=str(self.session.out_dir))

    # -- export ----------------------------------------------------------------------------------------------
    async def push(self) -> None:
        pacs, fhir = self.state.pacs_url.strip(), self.state.fhir_url.strip()

        def done(report: Any) -> None:
            self._flush(push_report=report.describe(), outbox=self.session.outbox_state(),
                        info="Push complete." if report.ok else "",
                        error="" if report.ok else "Push incomplete: what failed waits in the outbox; push again.")

        await self._work("Pushing results", lambda: self.session.push(pacs, fhir, progress=self._progress), done)
        self._flush(outbox=self.session.outbox_state())

    # -- view reactions ----------------------------------------------------------------------------------------
    def _on_overlay(self, overlay: str | None = None, **_: Any) -> None:
        node = self.slicer_app.scene.GetNodeByID(overlay) if overlay else None
        legend = self.display.show_overlay(node, title=self.session.overlay_title(node) if node else "")
        self._flush(legend=legend)

    def _on_cycle(self, cycle: int | None = None, **_: Any) -> None:
        if cycle is None or self.session.results_data is None:
            return
        self._flush(structure_rows=self.session.structure_rows(cycle), dvh_image=self.session.dvh_image(cycle))

    def _on_tac_structure(self, tac_structure: str | None = None, **_: Any) -> None:
        if tac_structure and self.session.results_data is not None:
            self._flush(tac_image=self.session.tac_image(tac_structure))

    def _on_hidden(self, hidden_structures: list[str] | None = None, **_: Any) -> None:
        hidden = set(hidden_structures or [])
        for row in self.state.structure_rows:
            self.display.set_structure_visible(row["structure"], row["structure"] not in hidden)

    def jump_to(self, name: str) -> None:
        self.display.jump_to_structure(name)
        self._flush(tac_structure=name)

    # -- layout ----------------------------------------------------------------------------------------------
    def _build_ui(self) -> None:
        with SinglePageWithDrawerLayout(self.server, full_height=True) as layout:
            self.ui = layout
            layout.title.set_text("TheraTwin")
            layout.root.theme = "light"
            layout.drawer.width = 560
            layout.drawer.permanent = True
            with layout.toolbar:
                v.VSpacer()
                v.VChip("RESEARCH USE ONLY — not for clinical decisions", color="error", variant="flat",
                        size="small", classes="mr-2")
                v.VProgressCircular(v_if="busy", indeterminate=True, size=20, classes="mr-2")
                html.Span("{{ busy }}", v_if="busy", classes="text-caption mr-4", id="tt-busy")
            with layout.drawer:
                self._drawer()
            with layout.content, html.Div(style="display: flex; flex-direction: column; height: calc(100vh - 88px);"
                                                 " padding: 8px;"):
                self._main_area()

    def _alerts(self) -> None:
        v.VAlert(text=("error",), v_if="error", type="error", density="compact", closable=True,
                 click_close="error = ''", id="tt-error", classes="mb-2")
        v.VAlert(text=("info",), v_if="info", type="info", density="compact", closable=True,
                 click_close="info = ''", id="tt-info", classes="mb-2")
        with html.Div(v_if="busy", id="tt-progress", classes="mb-2"):
            v.VProgressLinear(model_value=("progress",), height=14, color="primary")
            html.Div("{{ progress_message }}", classes="text-caption", id="tt-progress-message")

    def _drawer(self) -> None:
        with v.VTabs(v_model=("tab",), density="compact", grow=True):
            for value, title in (("study", "Study"), ("run", "Run"), ("results", "Plots"), ("twin", "Twin plan"),
                                 ("export", "Export")):
                v.VTab(title, value=value, id=f"tt-tab-{value}")
        with v.VWindow(v_model=("tab",), classes="pa-3"):
            with v.VWindowItem(value="study"):
                self._study_panel()
            with v.VWindowItem(value="run"):
                self._run_panel()
            with v.VWindowItem(value="results"):
                self._plots_panel()
            with v.VWindowItem(value="twin"):
                self._twin_panel()
            with v.VWindowItem(value="export"):
                self._export_panel()

    def _study_panel(self) -> None:
        v.VBtn("Demo patient", click=self.load_demo, disabled=("!!busy",), color="primary", id="tt-load-demo",
               classes="mb-3", block=True)
        with html.Div(classes="d-flex align-center mb-2"):
            v.VTextField(v_model=("source_folder",), label="DICOM folder on the server", density="compact",
                         hide_details=True, id="tt-folder")
            v.VBtn("Load", click=self.load_folder, disabled=("!!busy",), classes="ml-2", id="tt-load-folder")
        with html.Div(classes="d-flex align-center mb-2"):
            v.VTextField(v_model=("results_folder",), label="Saved results (output folder)", density="compact",
                         hide_details=True, id="tt-results-folder")
            v.VBtn("Open", click=self.load_results, disabled=("!!busy",), classes="ml-2", id="tt-open-results")
        with html.Div(classes="d-flex align-center mb-2"):
            v.VTextField(v_model=("pacs_url",), label="PACS (DICOMweb URL or dimse://AET@host:port)",
                         density="compact", hide_details=True, id="tt-pacs-url")
            v.VBtn("Studies", click=self.list_pacs, disabled=("!!busy || !pacs_url",), classes="ml-2",
                   id="tt-pacs-list")
        with v.VList(v_if="pacs_studies.length", density="compact", id="tt-pacs-studies"):
            with v.VListItem(v_for="s in pacs_studies", key="s.StudyInstanceUID",
                             click=(self.retrieve_pacs_study, "[s.StudyInstanceUID]")):
                v.VListItemTitle("{{ s.PatientID }} — {{ s.StudyDate }} {{ s.StudyDescription }}")
                v.VListItemSubtitle("{{ s.StudyInstanceUID }}")
        v.VDivider(classes="my-2")
        with html.Div(v_if="study.loaded", id="tt-study"):
            html.Div("Patient: {{ study.patient }}", classes="text-subtitle-2", id="tt-patient")
            html.Div("Source: {{ study.source }}", classes="text-caption mb-1")
            with html.Div(v_for="c in study.cycles", key="c.cycle", classes="mb-1"):
                html.Div("Cycle {{ c.cycle }}: {{ c.text }}", classes="text-body-2")
                html.Div("time points: {{ c.time_points.join(', ') }}", classes="text-caption")
            html.Div("Structures: {{ (study.structures || []).join(', ') }}", classes="text-caption mb-1")
            with v.VAlert(v_if="study.warnings && study.warnings.length", type="warning", density="compact",
                          variant="tonal", classes="my-1"):
                html.Div("{{ w }}", v_for="w in study.warnings", key="w", classes="text-caption")
            with v.VExpansionPanels(v_if="study.report", variant="accordion", classes="mt-2"):
                with v.VExpansionPanel(title="What was found (as 'theratwin run' reports it)"):
                    with v.VExpansionPanelText():
                        html.Pre("{{ study.report }}", style="font-size: 11px; white-space: pre-wrap;")
        html.Div("No study loaded.", v_if="!study.loaded", classes="text-caption")

    def _run_panel(self) -> None:
        with html.Div(classes="d-flex mb-2"):
            v.VBtn("Run pipeline", click=self.run_pipeline, disabled=("!!busy || !study.loaded",), color="primary",
                   id="tt-run", classes="mr-2")
            v.VBtn("Cancel", click=self.cancel, disabled=("!busy",), color="warning", id="tt-cancel")
        html.Div("Stages: " + ", ".join(DEFAULT_STAGES), classes="text-caption mb-2")
        with html.Div(v_if="busy", classes="mb-2"):
            html.Div("{{ line }}", v_for="line in progress_log", key="line", classes="text-caption")
        with html.Div(v_if="completed_stages.length", id="tt-completed"):
            html.Div("Completed:", classes="text-subtitle-2")
            html.Div("{{ s }} — {{ stage_seconds[s] }} s", v_for="s in completed_stages", key="s",
                     classes="text-caption")
            html.Div("Whole run from the page: {{ run_seconds }} s", v_if="run_seconds", classes="text-caption",
                     id="tt-run-seconds")
        v.VDivider(classes="my-2")
        html.Div("Re-run from a stage (earlier stages are kept)", classes="text-subtitle-2")
        with html.Div(classes="d-flex align-center"):
            v.VSelect(v_model=("rerun_stage",), items=("rerun_stages",), density="compact", hide_details=True,
                      label="stage", id="tt-rerun-stage")
            v.VSelect(v_if="rerun_stage === 'dosimetry'", v_model=("dose_method",), density="compact",
                      hide_details=True, label="dose method", classes="ml-2",
                      items=("dose_methods",), id="tt-dose-method")
            v.VBtn("Re-run", click=self.rerun_from, disabled=("!!busy || !completed_stages.length",),
                   classes="ml-2", id="tt-rerun")

    def _plots_panel(self) -> None:
        html.Div("Time-activity curve", classes="text-subtitle-2")
        v.VSelect(v_model=("tac_structure",), items=("structure_rows.map(r => r.structure)",), density="compact",
                  hide_details=True, label="structure", id="tt-tac-structure", classes="mb-1")
        html.Img(v_if="tac_image", src=("tac_image",), style="width: 100%;", id="tt-tac",
                 alt="time-activity curve with fit and uncertainty band")
        html.Div("Dose-volume histograms, cycle {{ cycle }}", classes="text-subtitle-2 mt-2")
        html.Img(v_if="dvh_image", src=("dvh_image",), style="width: 100%;", id="tt-dvh",
                 alt="cumulative dose-volume histograms")
        html.Div("Run the pipeline to see the curves.", v_if="!tac_image && !dvh_image", classes="text-caption")

    def _twin_panel(self) -> None:
        html.Div("The twin has not run.", v_if="!plan.available", classes="text-caption")
        with html.Div(v_if="plan.available", id="tt-plan"):
            with html.Div(v_if="plan.treatment", id="tt-plan-treatment", classes="mb-2"):
                html.Div("Plan of the remaining cycles", classes="text-subtitle-2")
                html.Div("{{ plan.treatment.headline }}", classes="text-body-1", id="tt-plan-headline")
                html.Div("cycle {{ a.cycle }}: {{ a.activity_MBq.toFixed(0) }} MBq", v_for="a in plan.treatment.activities",
                         key="a.cycle", classes="text-caption")
                html.Div("Closest to its limit: {{ plan.treatment.closest_to_limit }}",
                         v_if="plan.treatment.closest_to_limit", classes="text-caption")
            html.Div("Cycle {{ plan.cycle }}: recommended activity {{ plan.activity_MBq }} MBq "
                     "(confidence {{ plan.confidence }})", classes="text-subtitle-1", id="tt-plan-activity")
            html.Div("Binding constraint: {{ plan.binding }} — {{ plan.status_text }}", classes="text-body-2 mb-2",
                     id="tt-plan-binding")
            with v.VTable(density="compact", classes="text-caption"):
                with html.Thead(), html.Tr():
                    for head in ("Organ", "Limit", "Predicted cumulative (90 % interval)", "At confidence",
                                 "Toxicity probability"):
                        html.Th(head)
                with html.Tbody():
                    with html.Tr(v_for="o in plan.organs", key="o.structure",
                                 style=("o.binding ? 'font-weight: bold' : ''",)):
                        html.Td("{{ o.structure }}")
                        html.Td("{{ o.quantity }} {{ o.limit_Gy }} Gy")
                        html.Td("{{ o.predicted_cumulative_Gy ? o.predicted_cumulative_Gy.mean.toFixed(2) + ' ['"
                                " + o.predicted_cumulative_Gy.low.toFixed(2) + '–' + "
                                "o.predicted_cumulative_Gy.high.toFixed(2) + '] Gy' : '–' }}")
                        html.Td("{{ o.at_confidence_Gy != null ? o.at_confidence_Gy.toFixed(2) + ' Gy' : '–' }}")
                        html.Td("{{ o.toxicity_probability ? o.toxicity_probability.mean.toExponential(1) : '–' }}")
            html.Div("Predicted lesion dose after the recommended cycle (90 % interval):",
                     classes="text-body-2 mt-2")
            html.Div("{{ l.structure }}: {{ l.dose_Gy.mean.toFixed(1) }} [{{ l.dose_Gy.low.toFixed(1) }}–"
                     "{{ l.dose_Gy.high.toFixed(1) }}] Gy", v_for="l in plan.lesions", key="l.structure",
                     classes="text-caption")
            html.Div("Responder probability: {{ plan.response.mean.toFixed(2) }} [{{ plan.response.low.toFixed(2) }}"
                     "–{{ plan.response.high.toFixed(2) }}]", v_if="plan.response", classes="text-body-2 mt-2")
            html.Div("{{ plan.notice }}", classes="text-caption text-error mt-2")

    def _export_panel(self) -> None:
        html.Div("Outputs in {{ out_dir }}", classes="text-subtitle-2")
        html.Div("{{ f }}", v_for="f in outputs", key="f", classes="text-caption")
        v.VDivider(classes="my-2")
        v.VTextField(v_model=("pacs_url",), label="PACS (DICOMweb URL or dimse://AET@host:port)", density="compact",
                     id="tt-push-pacs", classes="mb-1")
        v.VTextField(v_model=("fhir_url",), label="FHIR R4 base URL", density="compact", id="tt-push-fhir")
        html.Div("Credentials come from the server's environment (THERATWIN_PACS_USER/_PASSWORD/_TOKEN, "
                 "THERATWIN_FHIR_...), never from this page.", classes="text-caption mb-2")
        v.VBtn("Push", click=self.push, disabled=("!!busy || !outputs.length",), color="primary", id="tt-push")
        html.Pre("{{ push_report }}", v_if="push_report", id="tt-push-report",
                 style="font-size: 11px; white-space: pre-wrap;")
        html.Div("Outbox", classes="text-subtitle-2 mt-2")
        with v.VTable(density="compact", classes="text-caption", id="tt-outbox"):
            with html.Thead(), html.Tr():
                for head in ("Channel", "Item", "Destination", "Status", "Attempts", "Last error"):
                    html.Th(head)
            with html.Tbody():
                with html.Tr(v_for="o in outbox", key="o.channel + o.key + o.destination", classes="tt-outbox-row",
                             raw_attrs=[':data-status="o.status"']):
                    html.Td("{{ o.channel }}")
                    html.Td("{{ o.key }}", style="max-width: 140px; overflow: hidden; text-overflow: ellipsis;")
                    html.Td("{{ o.destination }}")
                    html.Td("{{ o.status }}")
                    html.Td("{{ o.attempts }}")
                    html.Td("{{ o.last_error }}")

    def _main_area(self) -> None:
        self._alerts()
        with html.Div(classes="d-flex align-center mb-1", style="gap: 8px;"):
            v.VSelect(v_model=("overlay",), items=("overlays",), label="Overlay on the CT", density="compact",
                      hide_details=True, style="max-width: 320px;", id="tt-overlay")
            v.VSelect(v_model=("cycle",), items=("cycles",), label="Cycle", density="compact", hide_details=True,
                      style="max-width: 110px;", id="tt-cycle")
            with html.Div(v_if="legend.title", id="tt-legend", classes="d-flex align-center text-caption"):
                html.Span("{{ legend.min != null ? legend.min.toPrecision(3) : '' }}", classes="mr-1")
                html.Div(style=("`width: 140px; height: 12px; border: 1px solid #999; background: ${legend.gradient}`",))
                html.Span("{{ legend.max != null ? legend.max.toPrecision(3) : '' }} {{ legend.title }}",
                          classes="ml-1", id="tt-legend-title")
            v.VSpacer()
            v.VBtn("Reset views", click=self.display.reset, size="small", variant="tonal")
        with html.Div(style="flex: 0 0 62%; min-height: 360px; position: relative;", id="tt-views"):
            self.layout_manager.initialize_layout_grid(self.ui)
        with html.Div(style="flex: 1 1 auto; overflow: auto; min-height: 120px;", classes="mt-2"):
            self._structure_table()

    def _structure_table(self) -> None:
        columns = (("Structure", ""), ("Show", ""), ("Volume", "mL"), ("TIA", "MBq·h"), ("Method", ""),
                   ("Mean dose", "Gy"), ("BED", "Gy"), ("Cumulative", "Gy"), ("Limit", "Gy"), ("Of limit", "%"),
                   ("Flags", ""))
        with v.VTable(density="compact", fixed_header=True, height="100%", id="tt-structure-table",
                      classes="text-caption"):
            with html.Thead(), html.Tr():
                for name, unit in columns:
                    html.Th(f"{name} ({unit})" if unit else name)
            with html.Tbody():
                with html.Tr(v_for="r in structure_rows", key="r.structure", classes="tt-structure-row",
                             raw_attrs=[':data-structure="r.structure"']):
                    with html.Td():
                        html.Span(style=("`display:inline-block;width:10px;height:10px;margin-right:4px;"
                                         "background:${r.color}`",))
                        html.A("{{ r.structure }}", click=(self.jump_to, "[r.structure]"), style="cursor: pointer;",
                               title="centre the views on this structure")
                    with html.Td():
                        html.Input(type="checkbox", checked=("!hidden_structures.includes(r.structure)",),
                                   change=("hidden_structures = $event.target.checked ? hidden_structures.filter("
                                           "s => s !== r.structure) : [...hidden_structures, r.structure]"))
                    html.Td("{{ r.volume_mL != null ? r.volume_mL.toFixed(1) : '–' }}")
                    html.Td("{{ r.tia_MBq_h != null ? r.tia_MBq_h.toPrecision(4) + (r.tia_sd_MBq_h != null ? ' ± ' "
                            "+ r.tia_sd_MBq_h.toPrecision(2) : '') : '–' }}")
                    html.Td("{{ r.tia_method }}")
                    html.Td("{{ r.mean_dose_Gy != null ? r.mean_dose_Gy.toPrecision(3) : '–' }}",
                            classes="tt-mean-dose", raw_attrs=[':data-value="r.mean_dose_Gy"'])
                    html.Td("{{ r.bed_Gy != null ? r.bed_Gy.toPrecision(3) : '–' }}")
                    html.Td("{{ r.cumulative_vs_limit_Gy != null ? r.cumulative_vs_limit_Gy.toPrecision(3) + ' ' + "
                            "r.limit_quantity : (r.cumulative_dose_Gy != null ? r.cumulative_dose_Gy.toPrecision(3)"
                            " : '–') }}")
                    html.Td("{{ r.limit_Gy != null ? r.limit_quantity + ' ' + r.limit_Gy : '–' }}")
                    html.Td("{{ r.fraction_of_limit != null ? (100 * r.fraction_of_limit).toFixed(0) : '–' }}",
                            style=("r.fraction_of_limit > 1 ? 'color: #c00; font-weight: bold' : ''",))
                    html.Td("{{ r.flags.length ? r.flags.join('; ') : '' }}", style="max-width: 260px;")
            with html.Tbody(v_if="!structure_rows.length"):
                with html.Tr(), html.Td(colspan=len(columns)):
                    html.Span("Structures and their results appear here after a run "
                              "(or open saved results).", id="tt-no-results")
