"""Write the DICOM results of a run: RT Dose per dose/BED map, the SEG of the structures used, the TID 1500 SR.

Files go to ``OUT/dicom/`` with fixed names per kind (``rtdose_cycle1_dose.dcm``, ``rtdose_cumulative_bed.dcm``,
``seg_structures.dcm``, ``sr_cycle1.dcm`` ... ``sr_predicted.dcm``, one TID 1500 SR per cycle and one for the
twin's predictions, all in one series); a re-export replaces TheraTwin's earlier files there (with new
UIDs, so nothing collides with objects already sent to a PACS) and leaves files other stages put there (the
report's Encapsulated PDF) alone. Every file is written atomically, and earlier files are removed only after
the new ones are in place.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

from pydicom.dataset import Dataset

from .._files import atomic_path, make_dir
from ..errors import InvalidInputError
from ..progress import ProgressCallback, report
from ..results import Results, parse_map_name
from .exportcontext import ExportContext
from .rtdose import DoseKind, DoseMapSpec, build_rtdose
from .seg import build_seg
from .sr import SegmentRef, build_sr, sr_parts
from .uids import new_uid

__all__ = ["ExportReport", "dose_map_specs", "export_dicom", "DICOM_SUBDIR", "write_dataset"]

DICOM_SUBDIR = "dicom"
_OWN_FILES = re.compile(r"^(rtdose_.*|seg_structures|sr_.*)\.dcm$")


@dataclass
class ExportReport:
    """What :func:`export_dicom` wrote (paths relative to the output folder) and what it could not."""

    rtdose: list[str] = field(default_factory=list)
    seg: list[str] = field(default_factory=list)
    sr: list[str] = field(default_factory=list)
    all_files: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)


def dose_map_specs(results: Results) -> list[DoseMapSpec]:
    """The maps of ``results`` that become RT Dose objects, cycles first, then cumulative."""
    specs: list[DoseMapSpec] = []
    last_cycle = max(results.cycles) if results.cycles else None
    for key, img in results.maps.items():
        name = parse_map_name(key)
        if name is None or name.kind not in ("dose", "bed"):
            continue
        bed = name.kind == "bed"
        if name.cycle is None:
            kind = DoseKind.CUMULATIVE_BED if bed else DoseKind.CUMULATIVE_DOSE
            specs.append(DoseMapSpec(key, img, kind, last_cycle))
        else:
            kind = DoseKind.CYCLE_BED if bed else DoseKind.CYCLE_DOSE
            specs.append(DoseMapSpec(key, img, kind, name.cycle))
    specs.sort(key=lambda s: (s.kind in (DoseKind.CUMULATIVE_DOSE, DoseKind.CUMULATIVE_BED), s.cycle or 0,
                              s.kind.dose_type == "EFFECTIVE"))
    return specs


def write_dataset(ds: Dataset, path: Path) -> None:
    """Write ``ds`` as a DICOM file (PS3.10 preamble and meta), atomically (see :func:`theratwin._files.atomic_path`)."""
    with atomic_path(path) as tmp:
        ds.save_as(tmp, enforce_file_format=True)


def _derivation(results: Results, kind: DoseKind) -> str:
    stages = ("kinetics", "dosimetry") + (("radiobiology",) if kind.dose_type == "EFFECTIVE" else ())
    parts = [f"{m.stage}: {m.method}" for m in results.methods if m.stage in stages]
    return "TheraTwin " + "; ".join(parts) if parts else "Computed by TheraTwin from quantitative SPECT/PET"


def export_dicom(results: Results, out_dir: str | Path, *, seg_algorithm_type: str = "MANUAL",
                 progress: ProgressCallback | None = None) -> ExportReport:
    """Write RT Dose, SEG and SR objects for ``results`` into ``out_dir/dicom``.

    Parameters
    ----------
    results
        Results of a run; ``results.study`` must be set.
    out_dir
        The run's output folder.
    seg_algorithm_type
        SegmentAlgorithmType of the input segmentation (``MANUAL``, ``SEMIAUTOMATIC``, ``AUTOMATIC``).
    progress
        Optional progress callback.

    Returns
    -------
    ExportReport
        Relative paths of what was written and the reasons for anything left out.
    """
    study = results.study
    if study is None:
        raise InvalidInputError("Results without a study cannot be exported to DICOM (Results.study is None).")
    out = Path(out_dir)
    ddir = make_dir(out / DICOM_SUBDIR)
    # series numbers of earlier exports (including the files replaced now) are avoided, so a re-export never
    # reuses a number an earlier export may already have sent to a PACS
    ctx = ExportContext.for_study(study, existing_files=sorted(ddir.glob("*.dcm")))
    # earlier objects are removed only once the new ones are written: a failure half-way (a full disk) leaves
    # every file either the earlier or the new object, never a folder without dose objects
    earlier = [p for p in ddir.iterdir() if _OWN_FILES.match(p.name)]
    rep = ExportReport(warnings=list(ctx.warnings))

    specs = dose_map_specs(results)
    doses: list[Dataset] = []
    for i, spec in enumerate(specs):
        report(progress, 0.8 * i / max(len(specs), 1), f"RT Dose {spec.key}")
        if spec.cycle is not None and spec.kind in (DoseKind.CYCLE_DOSE, DoseKind.CYCLE_BED):
            sources = ctx.source_images.get(spec.cycle, [])
        else:
            sources = [h for hs in ctx.source_images.values() for h in hs]
        ds = build_rtdose(spec, ctx, series_number=ctx.numbering.next(), source_images=sources,
                          derivation=_derivation(results, spec.kind))
        name = f"rtdose_{spec.key.replace('/', '_')}.dcm"
        write_dataset(ds, ddir / name)
        rep.rtdose.append(f"{DICOM_SUBDIR}/{name}")
        doses.append(ds)

    seg_ds = None
    segments: dict[str, SegmentRef] = {}
    used = set(results.structure_names())
    if study.segmentation is None:
        rep.warnings.append("No segmentation: no SEG and no SR were written.")
    elif study.reference_ct is None or not ctx.reference_ct:
        rep.warnings.append("The reference CT's DICOM files are not available: no SEG and no SR were written "
                            "(a SEG must reference its source images).")
    else:
        structures = [s for s in study.segmentation.structures if s.name in used]
        if not structures:
            rep.warnings.append("No structure has results: no SEG and no SR were written.")
        else:
            report(progress, 0.85, "SEG")
            try:
                seg_ds = build_seg(study.segmentation, structures, ctx, ct_geometry=study.reference_ct.geometry,
                                   series_number=ctx.numbering.next(), algorithm_type=seg_algorithm_type)
            except InvalidInputError as exc:  # e.g. CT files that do not match the in-memory reference CT
                rep.warnings.append(f"No SEG and no SR were written: {exc}")
            else:
                write_dataset(seg_ds, ddir / "seg_structures.dcm")
                rep.seg.append(f"{DICOM_SUBDIR}/seg_structures.dcm")
                segments = {s.name: SegmentRef(i + 1, s) for i, s in enumerate(structures)}
    if seg_ds is not None:
        report(progress, 0.92, "SR")
        sources = [h for hs in ctx.source_images.values() for h in hs]
        series_uid, series_number = new_uid(), ctx.numbering.next()
        for i, part in enumerate(sr_parts(results, list(segments))):
            sr = build_sr(results, seg_ds, segments, ctx, series_number=series_number,
                          evidence=[*doses, *ctx.reference_ct, *sources], part=part,
                          series_instance_uid=series_uid, instance_number=i + 1)
            name = f"sr_{part}.dcm"
            write_dataset(sr, ddir / name)
            rep.sr.append(f"{DICOM_SUBDIR}/{name}")
    written = {Path(f).name for f in (*rep.rtdose, *rep.seg, *rep.sr)}
    for old in earlier:
        if old.name not in written:
            old.unlink(missing_ok=True)
    rep.all_files = sorted(p.relative_to(out).as_posix() for p in ddir.glob("*.dcm"))
    report(progress, 1.0, "DICOM export done")
    return rep
