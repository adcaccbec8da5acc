"""Single source of the package version (read by pyproject.toml and recorded in every output)."""

__version__ = "0.1.0"
