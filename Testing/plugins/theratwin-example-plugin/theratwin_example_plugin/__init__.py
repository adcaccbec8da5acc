"""Example TheraTwin plug-in (docs/extending.md): one kinetic model and one dose engine, found by TheraTwin
through the entry points declared in this package's pyproject.toml."""
