"""PDF of the report with WeasyPrint (pure Python layout on Pango; fonts from the system's fontconfig,
no network access: ``data:`` URIs only, and a URL fetcher that refuses anything else)."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from ..errors import ConfigurationError, InvalidInputError

__all__ = ["html_to_pdf"]


def _offline_fetcher() -> Any:
    """A URL fetcher that resolves only ``data:`` URIs (the report is self-contained; anything else is a bug)."""
    from weasyprint import urls

    if hasattr(urls, "URLFetcher"):  # WeasyPrint >= 67: fetcher objects with a protocol allow-list
        return urls.URLFetcher(allowed_protocols=("data",), fail_on_errors=True)

    def fetch(url: str, *args: Any, **kwargs: Any) -> dict[str, Any]:  # older WeasyPrint: a function
        if url.startswith("data:"):
            return urls.default_url_fetcher(url, *args, **kwargs)
        raise InvalidInputError(f"The report refers to an external resource ({url[:80]}); it must be "
                                "self-contained.")

    return fetch


def html_to_pdf(html: str, path: str | Path | None = None) -> bytes:
    """Lay out the report HTML as an A4 PDF.

    Parameters
    ----------
    html
        The self-contained report HTML (from :func:`theratwin.report.render_html`).
    path
        Where to write the PDF (optional).

    Returns
    -------
    bytes
        The PDF document.
    """
    import weasyprint

    # WeasyPrint logs every unsupported CSS property at WARNING; they are harmless screen-only properties.
    logging.getLogger("weasyprint").setLevel(logging.ERROR)
    logging.getLogger("fontTools").setLevel(logging.ERROR)
    from weasyprint import urls

    doc = weasyprint.HTML(string=html, url_fetcher=_offline_fetcher(), base_url=None)
    fatal = getattr(urls, "FatalURLFetchingError", None)
    try:
        pdf = doc.write_pdf()
    except BaseException as exc:  # WeasyPrint's fatal fetch error derives from BaseException
        if fatal is not None and isinstance(exc, fatal):
            raise InvalidInputError(
                f"The report HTML refers to an external resource ({exc}); only embedded data: URIs are allowed, "
                "so that the PDF is made offline. Embed the image or remove the reference."
            ) from exc
        raise
    if pdf is None:  # pragma: no cover - write_pdf returns bytes when no target is given
        raise ConfigurationError("WeasyPrint returned no PDF for the report.")
    if path is not None:
        p = Path(path)
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(pdf)
    return bytes(pdf)
