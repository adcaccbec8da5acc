"""Deliberately broken TheraTwin plug-in (tests only)."""
