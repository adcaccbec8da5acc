"""Imports a library that is not installed, as a plug-in with an unmet dependency does."""

import theratwin_library_that_is_not_installed  # noqa: F401


class Model:
    name = "aaa_needs_missing_library"
