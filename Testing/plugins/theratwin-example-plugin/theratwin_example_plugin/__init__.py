"""Example TheraTwin plug-in (docs/extending.md): one kinetic model, one dose engine and one outcome model, found
by TheraTwin through the entry points declared in this package's pyproject.toml."""
