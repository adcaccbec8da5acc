"""``Device`` (the software and its version) and ``Provenance`` (software, version and methods) of an analysis.

Provenance has no ``identifier`` in R4, so it is made conditional on the ``meta.tag`` carrying the analysis
key (``_tag`` search).
"""

from __future__ import annotations

from typing import Any

from ..results import RESEARCH_USE_NOTICE
from ._common import ANALYSIS_TAG_SYSTEM, Analysis, search_token
from .codes import IDENTIFIER_BASE, PROVENANCE_PARTICIPANT_SYSTEM, coding

__all__ = ["add_device_and_provenance"]


def add_device_and_provenance(a: Analysis, imaging_refs: list[str]) -> None:
    """Add the Device and, last, the Provenance targeting every result entry added before it."""
    results, key, tag, issued, b = a.results, a.key, a.tag, a.issued, a.builder
    dev_system = f"{IDENTIFIER_BASE}/software"
    dev_value = f"TheraTwin/{results.software_version}"
    device = {
        "resourceType": "Device",
        "identifier": [{"system": dev_system, "value": dev_value}],
        "status": "active",
        "deviceName": [{"name": "TheraTwin", "type": "user-friendly-name"}],
        "type": {"coding": [coding("software")], "text": "Dosimetry software"},
        "version": [{"value": results.software_version}],
        "note": [{"text": RESEARCH_USE_NOTICE}],
    }
    device_ref = b.add(device, system=dev_system, value=dev_value)
    targets = [e["fullUrl"] for e in b.entries
               if e["resource"]["resourceType"] not in ("Patient", "Device", "Endpoint")]
    entities: list[dict[str, Any]] = [{"role": "source", "what": {"reference": r}} for r in imaging_refs]
    for m in results.methods:
        text = f"{m.stage}: {m.method} ({m.software} {m.version})"
        if m.parameters:
            text += "; parameters " + ", ".join(f"{k}={v}" for k, v in m.parameters.items())
        if m.references:
            text += "; references " + " | ".join(m.references)
        entities.append({"role": "derivation", "what": {"display": text[:4000]}})
    prov = {
        "resourceType": "Provenance",
        "meta": {"tag": [tag]},
        "target": [{"reference": r} for r in targets],
        "recorded": issued,
        "activity": {"coding": [coding("dosimetry-analysis")]},
        "agent": [{
            "type": {"coding": [{"system": PROVENANCE_PARTICIPANT_SYSTEM, "code": "assembler",
                                 "display": "Assembler"}]},
            "who": {"reference": device_ref, "display": dev_value},
        }],
    }
    if entities:
        prov["entity"] = entities
    b.add(prov, system=ANALYSIS_TAG_SYSTEM, value=f"{key}/provenance",
          if_none_exist=f"_tag={search_token(ANALYSIS_TAG_SYSTEM, key)}")
