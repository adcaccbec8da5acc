"""Pipeline stage ``fhir_export``: write ``fhir-bundle.json`` and push it when a FHIR URL is configured.

Options (``PipelineConfig.stage_options["fhir_export"]``): the fields of :class:`FhirExportOptions` -- those of
:class:`~theratwin.fhir.bundle.BundleOptions` (``timezone``, ``patient_identifier_system``, ``include_reports`` ...)
and the push's retries. A failed push does not stop the run: the bundle waits in ``<out_dir>/outbox/fhir``, a
warning says so, and ``theratwin push`` completes it. With ``PipelineConfig.write_outputs`` off the bundle is built
(``state.fhir_bundle``) but neither written nor pushed.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import TYPE_CHECKING

from .._files import atomic_write
from ..delivery import push_lock
from ..errors import PushError
from ..options import parse_options
from ..pipeline.core import STAGES
from .bundle import BundleOptions, build_bundle, bundle_to_json
from .client import FhirClient
from .push import BUNDLE_FILENAME, push_output_dir

if TYPE_CHECKING:
    from ..pipeline.core import PipelineContext

__all__ = ["FhirExportOptions", "FhirExportStage"]


@dataclass(frozen=True)
class FhirExportOptions(BundleOptions):
    """Options of the ``fhir_export`` stage (``FhirExportStage.Options``): the bundle's and the push's.

    Attributes
    ----------
    push_retries, push_backoff_s
        Retries of a failed push and the first wait between them in seconds (None: the
        :class:`~theratwin.fhir.client.FhirClient` defaults).
    """

    push_retries: int | None = None
    push_backoff_s: float | None = None


class FhirExportStage:
    """Build the FHIR R4 transaction bundle of the run, write it, and push it if ``config.fhir_url``."""

    name = "fhir_export"
    requires: tuple[str, ...] = ()
    Options = FhirExportOptions

    def run(self, context: PipelineContext) -> None:
        """Build the run's FHIR R4 transaction bundle, write it to the output folder and push it when
        ``config.fhir_url`` is set."""
        opts = parse_options(self.Options, context.config.options(self.name), stage=self.name)
        pacs = context.config.pacs_url or ""
        if opts.dicomweb_url is None and pacs.startswith(("http://", "https://")):
            opts = replace(opts, dicomweb_url=pacs)  # where the DICOM export sends the studies
        # recorded before building, so that the bundle's Provenance lists this method too
        context.results.record_method(
            self.name, "FHIR R4 transaction bundle (conditional creates on stable identifiers)",
            {"timezone": opts.timezone or "local", "include_reports": opts.include_reports},
            ["HL7 FHIR R4 (4.0.1), http://hl7.org/fhir/R4/http.html#transaction"],
        )
        context.stage_progress(0.0, "building FHIR bundle")
        bundle = build_bundle(context.results, out_dir=context.out_dir, options=opts)
        context.state.fhir_bundle = bundle
        if context.out_dir is None or not context.config.write_outputs:
            return
        atomic_write(context.out_dir / BUNDLE_FILENAME, bundle_to_json(bundle))
        context.results.outputs["fhir_bundle"] = BUNDLE_FILENAME
        if context.config.fhir_url:
            context.stage_progress(0.5, "pushing FHIR bundle")
            try:
                client = FhirClient(context.config.fhir_url, retries=opts.push_retries, backoff_s=opts.push_backoff_s)
                with push_lock(context.out_dir, wait_s=120.0):  # one push of this folder at a time
                    report = push_output_dir(context.out_dir, context.config.fhir_url, client=client)
            except PushError as exc:  # e.g. bad settings: keep the run, say why
                context.results.warn(self.name, f"FHIR push not done: {exc}", severity="error")
                return
            context.results.extras["fhir_push"] = report.describe()
            if not report.ok:
                context.results.warn(self.name, report.describe(), severity="error")
                context.results.outputs["fhir_outbox"] = "outbox/fhir"
        context.stage_progress(1.0, "FHIR export done")


STAGES.register("fhir_export", FhirExportStage)
