"""Radiobiology: BED (Dale), EQD2, gEUD and the tissue parameter/limit table.

>>> import theratwin as tt
>>> round(tt.radiobiology.bed(20.0, alpha_beta_Gy=2.6, repair_half_time_h=2.8, effective_half_life_h=50.0), 3)
28.159
"""

from .bed import bed, bed_multiexponential, eqd2, geud, protraction_factor
from .tissues import (
    REFERENCES,
    TISSUES,
    TUMOUR_INDICATIONS,
    TissueParameters,
    indication_for,
    tissue_parameters,
)

__all__ = [
    "bed",
    "bed_multiexponential",
    "eqd2",
    "geud",
    "protraction_factor",
    "TissueParameters",
    "TISSUES",
    "REFERENCES",
    "tissue_parameters",
    "TUMOUR_INDICATIONS",
    "indication_for",
]
