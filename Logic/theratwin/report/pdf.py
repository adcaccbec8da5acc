"""PDF of the report with WeasyPrint (pure-Python layout on Pango), made offline.

- Resources: the report HTML is self-contained (``data:`` URIs); the URL fetcher refuses every other URL
  except the font files below, so nothing is ever fetched from a network.
- Fonts: the DejaVu Sans family shipped inside matplotlib (a declared dependency, ``mpl-data/fonts/ttf``)
  is declared with ``@font-face``, so the PDF does not depend on which fonts the system has; WeasyPrint
  embeds the subsets it uses.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from .._files import atomic_write
from ..errors import ConfigurationError, InvalidInputError

__all__ = ["html_to_pdf", "bundled_font_files"]

# (file, weight, style) of the DejaVu Sans faces in matplotlib's data directory.
_FACES = (
    ("DejaVuSans.ttf", "normal", "normal"),
    ("DejaVuSans-Bold.ttf", "bold", "normal"),
    ("DejaVuSans-Oblique.ttf", "normal", "italic"),
    ("DejaVuSans-BoldOblique.ttf", "bold", "italic"),
)


def bundled_font_files() -> list[Path]:
    """The DejaVu Sans font files of matplotlib used for the PDF (only those that exist)."""
    import matplotlib

    root = Path(matplotlib.get_data_path()) / "fonts" / "ttf"
    return [root / f for f, _, _ in _FACES if (root / f).is_file()]


def _font_face_css() -> str:
    rules = []
    for path in bundled_font_files():
        weight, style = next((w, s) for f, w, s in _FACES if f == path.name)
        rules.append(f'@font-face {{ font-family: "DejaVu Sans"; src: url("{path.as_uri()}"); '
                     f"font-weight: {weight}; font-style: {style}; }}")
    return "\n".join(rules)


def _refuse(url: str) -> InvalidInputError:
    return InvalidInputError(f"The report refers to an external resource ({url[:80]}); only embedded data: URIs "
                             "are allowed, so that the PDF is made offline. Embed the image or remove the reference.")


def _offline_fetcher() -> Any:
    """A URL fetcher that resolves ``data:`` URIs and the bundled font files, and refuses anything else."""
    from weasyprint import urls

    allowed = {p.as_uri() for p in bundled_font_files()}
    if hasattr(urls, "URLFetcher"):  # WeasyPrint >= 67: fetcher objects

        class _Offline(urls.URLFetcher):
            def fetch(self, url: str, headers: Any = None) -> Any:
                if url.startswith("data:") or url in allowed:
                    return super().fetch(url, headers)
                raise _refuse(url)

        return _Offline(allowed_protocols=("data", "file"), fail_on_errors=True)

    def fetch(url: str, *args: Any, **kwargs: Any) -> dict[str, Any]:  # older WeasyPrint: a function
        if url.startswith("data:") or url in allowed:
            return urls.default_url_fetcher(url, *args, **kwargs)
        raise _refuse(url)

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

    Raises
    ------
    InvalidInputError
        When the HTML refers to anything but embedded ``data:`` resources.
    """
    import weasyprint
    from weasyprint import urls

    # WeasyPrint logs every unsupported CSS property at WARNING; they are harmless screen-only properties.
    logging.getLogger("weasyprint").setLevel(logging.ERROR)
    logging.getLogger("fontTools").setLevel(logging.ERROR)
    from weasyprint.text.fonts import FontConfiguration

    fetcher = _offline_fetcher()
    font_config = FontConfiguration()  # @font-face rules are only honoured through a FontConfiguration
    fonts = weasyprint.CSS(string=_font_face_css(), url_fetcher=fetcher, font_config=font_config)
    doc = weasyprint.HTML(string=html, url_fetcher=fetcher, base_url=None)
    fatal = getattr(urls, "FatalURLFetchingError", None)
    try:
        pdf = doc.write_pdf(stylesheets=[fonts], font_config=font_config)
    except BaseException as exc:  # WeasyPrint's fatal fetch error derives from BaseException
        if fatal is not None and isinstance(exc, fatal):
            cause = exc.__cause__
            raise (cause if isinstance(cause, InvalidInputError) else _refuse(str(exc))) from exc
        raise
    if pdf is None:  # pragma: no cover - write_pdf returns bytes when no target is given
        raise ConfigurationError("WeasyPrint returned no PDF for the report.")
    if path is not None:
        atomic_write(path, bytes(pdf))
    return bytes(pdf)
