"""The reading-room workflow on one MRML scene, without any user interface.

A :class:`WorkflowSession` holds what one user works on: the scene (Slicer's MRML, filled through
``TheraTwinLib`` exactly as the Slicer modules fill it), the study's nodes, the kept pipeline run and its results.
Every step is split into the part that may run in a worker thread (reading DICOM, running the pipeline, pushing)
and the part that changes the scene, which the server runs on its event loop (VTK and MRML are not thread-safe):
:meth:`read_folder` / :meth:`show_study`, :meth:`run_pipeline` / :meth:`show_results`, :meth:`push`.

No science here: numbers come from the core's results (``Results.to_dict()``, what ``results.json`` holds),
figures from ``theratwin.report.figures``, the plan from :func:`theratwin_web.plan.twin_plan`.
"""

from __future__ import annotations

import json
import logging
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import TheraTwinLib as L
from theratwin.errors import InvalidInputError
from theratwin.results import CUMULATIVE, parse_map_name

from .plan import twin_plan

__all__ = ["WorkflowSession", "LoadedFolder", "OVERLAY_NONE", "Progress"]

log = logging.getLogger(__name__)

Progress = Callable[[float, str], None]

#: Overlay key meaning "CT only".
OVERLAY_NONE = ""

# Titles (with units) of the colour bars, by the part of a results.maps key after "/"
_MAP_TITLES = {"tia": "TIA (Bq·h/mL)", "dose": "Dose (Gy)", "bed": "BED (Gy)", "eqd2": "EQD2 (Gy)"}


@dataclass
class LoadedFolder:
    """What :meth:`WorkflowSession.read_folder` found: the inventory (as ``theratwin run`` reports it) and the
    study read from it."""

    folder: Path
    inventory: Any
    study: Any
    label: str
    stage_options: dict[str, dict[str, Any]] = field(default_factory=dict)
    truth: dict[str, Any] | None = None


class WorkflowSession:
    """One user's study, run and results on one MRML scene.

    Parameters
    ----------
    scene
        The ``vtkMRMLScene`` the views show.
    out_dir
        Where runs write their outputs (``results.json``, ``dicom/``, report, FHIR bundle) and where the outbox is.
    data_root
        When set, folders outside it are refused (a server reachable by others must not read any path).
    cache_dir
        Demo patient cache (default ``$THERATWIN_CACHE`` or ``~/.cache/theratwin``).
    """

    def __init__(self, scene: Any, out_dir: str | Path, *, data_root: str | Path | None = None,
                 cache_dir: str | Path | None = None) -> None:
        self.scene = scene
        self.out_dir = Path(out_dir)
        self.data_root = Path(data_root).resolve() if data_root is not None else None
        self.cache_dir = cache_dir
        self.loaded: LoadedFolder | None = None
        self.nodes: Any = None  # TheraTwinLib.StudyNodes
        self.run: Any = None  # TheraTwinLib.PipelineRun
        self.results_data: dict[str, Any] | None = None  # results.json content of the last run or --results
        self.map_nodes: dict[str, Any] = {}
        self.stage_options: dict[str, dict[str, Any]] = {}
        self._summary: dict[str, Any] = {"loaded": False}
        self._structures: list[dict[str, Any]] = []

    # -- reading (worker thread) ------------------------------------------------------------------------------
    def check_folder(self, folder: str | Path) -> Path:
        """The folder as a resolved path, or :class:`~theratwin.errors.InvalidInputError` saying what is wrong."""
        text = str(folder).strip()
        if not text:
            raise InvalidInputError("No folder given: type the path of a folder of DICOM files on the server.")
        path = Path(text).expanduser().resolve()
        if self.data_root is not None and not path.is_relative_to(self.data_root):
            raise InvalidInputError(f"{path} is outside the data folder this server may read ({self.data_root}).")
        if not path.exists():
            raise InvalidInputError(f"{path}: no such folder on the server.")
        if not path.is_dir():
            raise InvalidInputError(f"{path} is a file; give the folder that holds the patient's DICOM files.")
        return path

    def read_folder(self, folder: str | Path, *, progress: Progress | None = None, label: str = "") -> LoadedFolder:
        """Scan and read a folder of DICOM (one patient): the inventory first, so its problems are reported the
        way ``theratwin run`` reports them, then the study. Raises a ``TheraTwinError`` naming the file/tag."""
        from theratwin.dicom import read_study, scan
        from theratwin.progress import scaled

        path = self.check_folder(folder)
        inventory = scan(path, progress=scaled(progress, 0.0, 0.3))
        if not inventory.series:
            skipped = f"; {len(inventory.skipped)} file(s) were not readable DICOM, e.g. {inventory.skipped[0][0]}: " \
                      f"{inventory.skipped[0][1]}" if inventory.skipped else ""
            raise InvalidInputError(f"{path}: no DICOM series found{skipped}. Choose the folder with the patient's "
                                    "SPECT/PET, CT and SEG files.")
        if inventory.problems:
            raise inventory.problems[0]
        study = read_study(path, progress=scaled(progress, 0.3, 1.0))
        return LoadedFolder(path, inventory, study, label or str(path))

    def read_demo(self, *, progress: Progress | None = None) -> LoadedFolder:
        """Build (or reuse) the demo patient and read it as ``theratwin demo`` does (same pipeline settings);
        its ground truth goes to ``out_dir/demo-truth.json`` with the run's outputs."""
        from theratwin.demo import build_demo
        from theratwin.pipeline import demo_config
        from theratwin.progress import scaled

        demo = build_demo(self.cache_dir, progress=scaled(progress, 0.0, 0.5))
        loaded = self.read_folder(demo.dicom_dir, progress=scaled(progress, 0.5, 1.0), label="demo patient")
        loaded.stage_options = demo_config().stage_options
        loaded.truth = demo.truth
        return loaded

    def read_pacs_study(self, pacs_url: str, study_uid: str, *, progress: Progress | None = None) -> LoadedFolder:
        """Retrieve a study (WADO-RS / C-GET, credentials from the environment) into ``out_dir/retrieved`` and
        read it."""
        from theratwin.dicom.pacs import open_pacs
        from theratwin.progress import report

        dest = self.out_dir / "retrieved" / study_uid
        report(progress, 0.0, f"retrieving study {study_uid}")
        with open_pacs(pacs_url) as client:
            files = client.fetch_study(study_uid, dest)
        if not files:
            raise InvalidInputError(f"{pacs_url}: study {study_uid} has no instances.")
        return self.read_folder(dest, progress=progress, label=f"PACS study {study_uid}")

    @staticmethod
    def list_pacs_studies(pacs_url: str, patient_id: str | None = None) -> list[dict[str, str]]:
        """QIDO-RS (or C-FIND) study list of a PACS."""
        from theratwin.dicom.pacs import open_pacs

        with open_pacs(pacs_url) as client:
            return client.find_studies(patient_id=patient_id or None)

    # -- the scene (event loop) -------------------------------------------------------------------------------
    def show_study(self, loaded: LoadedFolder) -> None:
        """Replace the scene's study by ``loaded`` (through ``TheraTwinLib.addStudyToScene``)."""
        self.clear()
        self.loaded = loaded
        self.stage_options = {k: dict(v) for k, v in loaded.stage_options.items()}
        self.nodes = L.addStudyToScene(self.scene, loaded.study)
        # the scene holds the images now: keep only what the page shows of the study (a second copy of every
        # volume would cost as much memory again)
        self._summary = self._summarise(loaded)
        seg = loaded.study.segmentation
        self._structures = [] if seg is None else [
            {"structure": s.name, "color": "#{:02x}{:02x}{:02x}".format(*s.color_rgb), "volume_mL": seg.volume_mL(s.name),
             "tia_method": "", "flags": []} for s in seg.structures]
        loaded.study = None

    def clear(self) -> None:
        """Remove the study, its maps and the kept run from the scene."""
        if self.nodes is not None:
            for node in [*self.nodes.allTimePoints(), *self.nodes.cts, self.nodes.segmentation,
                         *self.map_nodes.values()]:
                if node is not None and node.GetScene() is not None:
                    self.scene.RemoveNode(node)
        self.nodes = self.loaded = self.run = self.results_data = None
        self.map_nodes = {}
        self._summary, self._structures = {"loaded": False}, []
        L.clearPipelineCache()

    # -- running (worker thread) ------------------------------------------------------------------------------
    def run_pipeline(self, *, stages: Sequence[str] | None = None, progress: Progress | None = None) -> Any:
        """Run (or continue) the pipeline on the scene's nodes, writing outputs into ``out_dir``; pushing is a
        separate step (:meth:`push`). Reads the nodes only: safe in a worker while the views render."""
        if self.nodes is None:
            raise InvalidInputError("No study loaded: load the demo patient, a DICOM folder or a PACS study first.")
        self.out_dir.mkdir(parents=True, exist_ok=True)
        truth = None if self.loaded is None else self.loaded.truth
        # the demo's truth is one of the run's files (written and listed in its manifest when the run seals)
        extra = None if truth is None else {"demo-truth.json": json.dumps(truth, indent=2)}
        return L.runPipelineOnNodes(self.nodes.allTimePoints(), segmentationNode=self.nodes.segmentation,
                                    stages=stages, stageOptions=self.stage_options, outDir=self.out_dir,
                                    progress=progress, outputFiles=extra)

    def forget_from(self, stage: str, options: dict[str, Any] | None = None) -> list[str]:
        """Make the next :meth:`run_pipeline` run ``stage`` and the stages after it again (with ``options`` for
        that stage), keeping the earlier stages' results. Returns the stages that will run again."""
        if self.run is None:
            raise InvalidInputError("Nothing has run yet: run the pipeline first.")
        if options:
            self.stage_options.setdefault(stage, {}).update(options)
        return L.forgetStages(self.run, stage)

    # -- results into the scene (event loop) ------------------------------------------------------------------
    def show_results(self, run: Any) -> None:
        """Keep ``run`` and put its maps into volume nodes (dose and BED as SlicerRT dose volumes)."""
        self.run = run
        self.results_data = run.results.to_dict()
        for key in run.results.maps:
            self.map_nodes[key] = L.showMap(self.scene, run.results, key, volumeNode=self.map_nodes.get(key))

    def load_results_folder(self, folder: str | Path) -> None:
        """Show the saved results of ``theratwin demo``/``run`` (``results.json`` and the RT Dose maps of its
        ``dicom/`` folder) without running anything."""
        from pydicom import dcmread

        from theratwin.dicom.rtdose import rtdose_to_image

        path = self.check_folder(folder)
        results_json = path / "results.json"
        if not results_json.is_file():
            raise InvalidInputError(f"{path} has no results.json: give an output folder of 'theratwin demo' or "
                                    "'theratwin run'.")
        try:
            self.results_data = json.loads(results_json.read_text())
        except (OSError, ValueError) as exc:
            raise InvalidInputError(f"{results_json}: not readable as JSON ({exc}).") from None
        self.out_dir = path
        for rel in (self.results_data.get("outputs") or {}).get("rtdose", []):
            key = Path(rel).stem.removeprefix("rtdose_").replace("_", "/", 1)
            image = rtdose_to_image(dcmread(path / rel))
            node = L.volumeNodeFromImage(self.scene, image, L.mapNodeName(key))
            node.SetAttribute("TheraTwin.MapKey", key)
            L.markAsDoseVolume(node, unit="Gy")
            self.map_nodes[key] = node

    # -- what the page shows ----------------------------------------------------------------------------------
    def study_summary(self) -> dict[str, Any]:
        """Patient, cycles and time points as found (the inventory ``theratwin run`` prints), with warnings."""
        if self.loaded is None:
            data = self.results_data or {}
            study = data.get("study") or {}
            return {"loaded": bool(data), "source": str(self.out_dir), "patient": study.get("patient_id", ""),
                    "cycles": [{"cycle": int(k), "text": f"{c.get('administered_MBq', 0):.0f} MBq "
                                f"{c.get('radiopharmaceutical', '')} ({c.get('nuclide', '')})",
                                "time_points": [f"{t:.1f} h" for t in c.get("time_points_h", [])]}
                               for k, c in (data.get("cycles") or {}).items()],
                    "structures": [s["name"] for s in study.get("structures", [])], "warnings": [], "report": ""}
        return self._summary

    @staticmethod
    def _summarise(loaded: LoadedFolder) -> dict[str, Any]:
        inv, study = loaded.inventory, loaded.study
        patient = study.patient
        cycles = []
        for c in study.cycles:
            a = c.administration
            cycles.append({"cycle": c.number,
                           "text": f"{a.activity_MBq:.0f} MBq {a.radiopharmaceutical} ({a.nuclide}), "
                                   f"{a.start:%Y-%m-%d %H:%M}",
                           "time_points": [f"{t:.1f} h" + ("" if tp.ct is not None else " (no CT)")
                                           for t, tp in zip(c.times_h, c.time_points, strict=True)]})
        warnings = list(inv.warnings) + [f"{s.modality} '{s.description}': {w}" for s in inv.series
                                         for w in s.warnings]
        warnings += [f"skipped {p}: {why}" for p, why in inv.skipped]
        return {"loaded": True, "source": loaded.label,
                "patient": f"{patient.patient_id} ({patient.name or 'no name'})",
                "cycles": cycles,
                "structures": study.segmentation.names if study.segmentation is not None else [],
                "warnings": warnings, "report": inv.describe()}

    def cycles(self) -> list[int]:
        return sorted(int(k) for k in (self.results_data or {}).get("cycles", {}))

    def structure_colors(self) -> dict[str, str]:
        """Hex colour of every structure: the segmentation's (the same as in the views and the SEG)."""
        structures = ((self.results_data or {}).get("study") or {}).get("structures") or []
        colors = {s["name"]: "#{:02x}{:02x}{:02x}".format(*s["color_rgb"]) for s in structures if s.get("color_rgb")}
        colors.update({s["structure"]: s["color"] for s in self._structures})
        return colors

    def structure_rows(self, cycle: int | None) -> list[dict[str, Any]]:
        """One row per structure of ``cycle``: the values of ``results.json`` (units in the keys), the limit
        comparison the radiobiology stage wrote (``limit.fraction_of_limit``) and the stage warnings."""
        data = self.results_data or {}
        colors = self.structure_colors()
        if not data:
            # before a run: the structures of the segmentation, for their colours, visibility and volumes
            return [dict(s) for s in self._structures]
        c = (data.get("cycles") or {}).get(str(cycle)) or {}
        warnings: dict[str, list[str]] = {}
        for w in data.get("warnings") or []:
            if w.get("severity") != "info" and w.get("structure") and w.get("cycle") in (None, cycle):
                warnings.setdefault(w["structure"], []).append(f"{w.get('stage')}: {w.get('message')}")
        rows = []
        for name, s in (c.get("structures") or {}).items():
            limit = s.get("limit") or {}
            fraction = limit.get("fraction_of_limit")
            flags = list(warnings.get(name, []))
            if isinstance(fraction, (int, float)) and fraction > 1.0:
                flags.insert(0, f"cumulative {limit.get('quantity')} above the {limit.get('value_Gy')} Gy limit")
            rows.append({
                "structure": name, "color": colors.get(name, "#888888"),
                "volume_mL": s.get("volume_mL"), "mass_g": s.get("mass_g"),
                "tia_MBq_h": s.get("tia_MBq_h"), "tia_sd_MBq_h": s.get("tia_sd_MBq_h"),
                "tia_method": s.get("tia_method") or "", "effective_half_life_h": s.get("effective_half_life_h"),
                "mean_dose_Gy": s.get("mean_dose_Gy"), "mean_dose_sd_Gy": s.get("mean_dose_sd_Gy"),
                "dose_method": s.get("dose_method") or "", "bed_Gy": s.get("bed_Gy"), "eqd2_Gy": s.get("eqd2_Gy"),
                "cumulative_dose_Gy": s.get("cumulative_dose_Gy"), "cumulative_bed_Gy": s.get("cumulative_bed_Gy"),
                "limit_quantity": limit.get("quantity", ""), "limit_Gy": limit.get("value_Gy"),
                "cumulative_vs_limit_Gy": limit.get("cumulative_value_Gy"), "fraction_of_limit": fraction,
                "flags": flags,
            })
        return rows

    def plan(self) -> dict[str, Any]:
        return twin_plan((self.results_data or {}).get("twin"))

    def tac_image(self, structure: str) -> str:
        """TAC figure of ``structure`` over every cycle (measured ± SD, fitted model, band, method) as a data URI;
        empty when the kinetics stage has not filled its curve."""
        from theratwin.report.figures import figure_png, png_data_uri, tac_figure

        data = self.results_data or {}
        cycles = [{"cycle": int(k), "nuclide": c.get("nuclide"), **(c.get("structures") or {}).get(structure, {})}
                  for k, c in (data.get("cycles") or {}).items()]
        fig = tac_figure(structure, cycles, color=self.structure_colors().get(structure, "#0072B2"))
        return png_data_uri(figure_png(fig)) if fig is not None else ""

    def dvh_image(self, cycle: int, structures: Sequence[str] | None = None) -> str:
        """Cumulative DVHs of ``cycle`` (organs and lesions in two panels) as a data URI."""
        from theratwin.report.figures import dvh_figure, figure_png, png_data_uri

        data = self.results_data or {}
        c = (data.get("cycles") or {}).get(str(cycle)) or {}
        kinds = {s["name"]: s.get("role") for s in ((data.get("study") or {}).get("structures") or [])}
        curves = [(n, cycle, s.get("dvh")) for n, s in (c.get("structures") or {}).items()
                  if s.get("dvh") and (structures is None or n in structures) and kinds.get(n) != "body"]
        panels = {n: "lesions" if kinds.get(n) == "lesion" else "organs" for n, _, _ in curves}
        fig = dvh_figure(curves, self.structure_colors(), panels)
        return png_data_uri(figure_png(fig)) if fig is not None else ""

    def overlays(self) -> list[dict[str, str]]:
        """What can be shown over the CT: each time point (activity) and each results map."""
        items = [{"title": "CT only", "value": OVERLAY_NONE}]
        if self.nodes is not None:
            for _cycle, nodes in sorted(self.nodes.timePoints.items()):
                items += [{"title": f"Activity: {n.GetName()}", "value": n.GetID()} for n in nodes]
        for key, node in self.map_nodes.items():
            name = parse_map_name(key)
            kind = name.kind if name is not None else key
            where = "" if name is None else CUMULATIVE if name.cumulative else f"cycle {name.cycle}"
            title = _MAP_TITLES.get(kind, kind)
            items.append({"title": f"{title.split(' (')[0]} {where}".strip(), "value": node.GetID()})
        return items

    @staticmethod
    def overlay_title(node: Any) -> str:
        """Colour-bar title of an overlay node, with its unit."""
        key = node.GetAttribute("TheraTwin.MapKey")
        if key:
            name = parse_map_name(key)
            return _MAP_TITLES.get(name.kind if name is not None else key,
                                   f"{key} ({node.GetAttribute(L.UNIT_ATTRIBUTE)})")
        return f"Activity ({node.GetAttribute(L.UNIT_ATTRIBUTE) or 'Bq/mL'})"

    # -- export and push (worker thread) ----------------------------------------------------------------------
    def push(self, pacs_url: str | None, fhir_url: str | None, *, progress: Progress | None = None) -> Any:
        """Send ``out_dir``'s DICOM objects and FHIR bundle (``theratwin.push.push_directory``; what fails waits
        in ``out_dir/outbox`` and goes with the next push). Returns the :class:`~theratwin.push.PushReport`."""
        from theratwin.push import push_directory

        if not (self.out_dir / "dicom").is_dir() and not (self.out_dir / "fhir-bundle.json").is_file():
            raise InvalidInputError(f"{self.out_dir} holds no exported results yet: run the pipeline through "
                                    "'dicom_export' first.")
        if not pacs_url and not fhir_url:
            raise InvalidInputError("Nothing to push to: give a PACS URL and/or a FHIR URL.")
        return push_directory(self.out_dir, pacs_url=pacs_url or None, fhir_url=fhir_url or None, progress=progress)

    def outbox_state(self) -> list[dict[str, Any]]:
        """Every outbox record of ``out_dir`` (channel, key, destination, status, attempts, last error)."""
        from theratwin.dicom.outbox import Outbox
        from theratwin.push import OUTBOX_DIR

        root = self.out_dir / OUTBOX_DIR
        if not root.is_dir():
            return []
        box = Outbox(root)
        rows = []
        for channel in sorted(p.name for p in root.iterdir() if p.is_dir()):
            for item in box.items(channel):
                rows.append({"channel": channel, "key": item.key, "destination": item.destination,
                             "status": item.status, "attempts": item.attempts, "last_error": item.last_error,
                             "sent_at": item.sent_at})
        return rows

    def outputs(self) -> list[str]:
        """Files of the last run (relative to ``out_dir``)."""
        outputs = (self.results_data or {}).get("outputs") or {}
        files = set()
        for value in outputs.values():
            files.update(value if isinstance(value, list) else [value])
        return sorted(str(f) for f in files)


def temporary_out_dir() -> Path:
    """A fresh output folder for a server started without ``--out``."""
    return Path(tempfile.mkdtemp(prefix="theratwin-web-"))


__all__ += ["temporary_out_dir"]
