"""Settings of the DICOM reader (plain data, JSON-serialisable; ``PipelineConfig.read`` holds them as a dict).

Counts-based SPECT
------------------
Quantitative SPECT normally arrives in Bq/mL (Real World Value Mapping, or Units BQML). A reconstruction left in
counts (NM without a Bq/mL mapping, or Units ``CNTS``) is accepted only with a calibration the user gives: the
*volume sensitivity* of that camera for that nuclide, in counts per second per MBq, measured on a phantom of known
activity reconstructed with the same protocol (total reconstructed counts / acquisition duration / activity,
decay-corrected over the scan), as in MIRD Pamphlet 26 (Ljungberg et al., J Nucl Med 2016;57:151-62) and the
EANM/MIRD 177Lu SPECT guideline (Ljungberg et al. 2016, section "Calibration"). The activity concentration at the
acquisition start of a voxel of volume V holding N reconstructed counts acquired over T seconds is then

    c = N * lambda / (S * (1 - exp(-lambda * T))) / V        (N * 1/(S * T) / V when the counts are decay-corrected)

A calibration is matched to a series by nuclide and by whichever of manufacturer, model, device serial number and
station name it gives (case-insensitive); the most specific match wins. DoseCalibrationFactor (0054,1322) is never
used as a calibration: PS3.3 C.8.9.4 defines it as the factor *already applied* to the image.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any

from .._config import checked_fields
from ..errors import ConfigurationError
from ..plausibility import PlausibilityConfig

__all__ = ["CameraCalibration", "ReadOptions"]


@dataclass(frozen=True)
class CameraCalibration:
    """Volume sensitivity of one camera for one nuclide (counts-based SPECT/PET), from a phantom measurement.

    Parameters
    ----------
    nuclide
        e.g. ``"Lu-177"``.
    sensitivity_cps_per_MBq
        Reconstructed counts per second per MBq in the field of view (same reconstruction as the patient's).
    manufacturer, model, serial_number, station
        Match DICOM Manufacturer (0008,0070), ManufacturerModelName (0008,1090), DeviceSerialNumber (0018,1000),
        StationName (0008,1010); empty matches any.
    source
        Where the value comes from (phantom, date), recorded in the methods.
    """

    nuclide: str
    sensitivity_cps_per_MBq: float
    manufacturer: str = ""
    model: str = ""
    serial_number: str = ""
    station: str = ""
    source: str = ""

    def __post_init__(self) -> None:
        from .. import nuclides

        s = self.sensitivity_cps_per_MBq
        if not isinstance(s, (int, float)) or not math.isfinite(s) or not 0 < s < 1e7:
            raise ConfigurationError(f"Camera calibration for {self.nuclide}: sensitivity_cps_per_MBq must be a "
                                     f"positive number of counts per second per MBq; got {s!r}.")
        try:
            object.__setattr__(self, "nuclide", nuclides.get(self.nuclide).name)
        except Exception as exc:  # noqa: BLE001 - InvalidInputError names the bad nuclide
            raise ConfigurationError(f"Camera calibration: {exc}") from None

    def specificity(self) -> int:
        """How many camera fields (manufacturer, model, serial number, station) the calibration names; the
        reader prefers the most specific match."""
        return sum(bool(v) for v in (self.manufacturer, self.model, self.serial_number, self.station))

    def matches(self, *, nuclide: str, manufacturer: str, model: str, serial_number: str, station: str) -> bool:
        """True when the calibration is for ``nuclide`` and every camera field it names equals the series'
        (case and surrounding spaces ignored)."""
        pairs = ((self.manufacturer, manufacturer), (self.model, model), (self.serial_number, serial_number),
                 (self.station, station))
        return self.nuclide == nuclide and all(not want or want.strip().lower() == got.strip().lower()
                                               for want, got in pairs)

    def describe(self) -> str:
        """One line for the methods record, e.g. ``"12.3 cps/MBq for Lu-177 on Siemens Symbia SN 1234
        (NM1), phantom 2026-01"``."""
        camera = " ".join(v for v in (self.manufacturer, self.model) if v) or "any camera"
        if self.serial_number:
            camera += f" SN {self.serial_number}"
        if self.station:
            camera += f" ({self.station})"
        return (f"{self.sensitivity_cps_per_MBq:g} cps/MBq for {self.nuclide} on {camera}"
                + (f", {self.source}" if self.source else ""))


@dataclass
class ReadOptions:
    """How :func:`~theratwin.dicom.read_study` reads a folder.

    Attributes
    ----------
    strict
        Refuse every oddity the tolerant reader would accept with a warning.
    timezone
        The site's zone (IANA name such as ``"Europe/Berlin"`` or an offset ``"+01:00"``) for files without
        Timezone Offset From UTC (0008,0201); None: this computer's zone, reported as assumed.
    nuclide
        The radionuclide when the files do not say it (no usable Radionuclide Code Sequence, no unique match of
        Radionuclide Half Life); it must agree with what the files do say.
    counts_calibration_Bq_per_mL
        For PET (or SPECT) in counts (Units CNTS): Bq/mL per count value, when the files do not carry a vendor
        calibration.
    camera_calibrations
        Volume sensitivities for counts-based SPECT (see the module docstring), as :class:`CameraCalibration` or
        dicts with the same fields.
    accept_incomplete_series
        Accept series with unreadable, foreign or missing slices at their ends (or fewer instances than declared),
        reading what remains, with a warning. Gaps inside a volume and conflicting duplicates are still refused.
    without_ct
        ``"refuse"`` (default): every emission time point needs its CT. ``"water"``: a time point without CT
        is used with water density (1 g/mL) and no CT registration, said in every output.
    plausibility
        Thresholds and action of the physical plausibility checks (see :mod:`theratwin.plausibility`).
    """

    strict: bool = False
    timezone: str | None = None
    nuclide: str | None = None
    counts_calibration_Bq_per_mL: float | None = None
    camera_calibrations: list[CameraCalibration] = field(default_factory=list)
    accept_incomplete_series: bool = False
    without_ct: str = "refuse"
    plausibility: PlausibilityConfig = field(default_factory=PlausibilityConfig)

    def __post_init__(self) -> None:
        from .._time import parse_zone

        if self.timezone is not None:
            try:
                parse_zone(self.timezone)
            except ValueError as exc:
                raise ConfigurationError(f"read.timezone: {exc}.") from None
        if self.nuclide is not None:
            from .. import nuclides

            try:
                self.nuclide = nuclides.get(self.nuclide).name
            except Exception as exc:  # noqa: BLE001 - InvalidInputError names the bad nuclide
                raise ConfigurationError(f"read.nuclide: {exc}") from None
        c = self.counts_calibration_Bq_per_mL
        if c is not None and (not isinstance(c, (int, float)) or not math.isfinite(c) or not 0 < c < 1e12):
            raise ConfigurationError(f"read.counts_calibration_Bq_per_mL must be a positive number; got {c!r}.")
        self.camera_calibrations = [c if isinstance(c, CameraCalibration) else _calibration(c)
                                    for c in self.camera_calibrations]
        if self.without_ct not in ("refuse", "water"):
            raise ConfigurationError(f"read.without_ct must be 'refuse' or 'water'; got {self.without_ct!r}.")
        if isinstance(self.plausibility, dict):
            self.plausibility = PlausibilityConfig.from_dict(self.plausibility)

    def zone(self) -> Any:
        """The configured zone as a tzinfo (None when not set)."""
        from .._time import parse_zone

        return parse_zone(self.timezone) if self.timezone else None

    def to_dict(self) -> dict[str, Any]:
        """The JSON form (the ``read`` section of a pipeline configuration); :meth:`from_dict` reads it
        back."""
        d = asdict(self)
        d["plausibility"] = self.plausibility.to_dict()
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any] | None) -> ReadOptions:
        """The reader settings from their JSON form (None or empty: the defaults).

        Raises
        ------
        ConfigurationError
            A key is not a read setting, or a value is invalid (the message names it).
        """
        return cls(**checked_fields(cls, d, "read settings"))


def _calibration(d: Any) -> CameraCalibration:
    if not isinstance(d, dict):
        raise ConfigurationError(f"read.camera_calibrations: each entry must be an object; got {d!r}.")
    try:
        return CameraCalibration(**checked_fields(CameraCalibration, d, "camera calibration fields"))
    except TypeError as exc:
        raise ConfigurationError(f"read.camera_calibrations: {exc}.") from None
