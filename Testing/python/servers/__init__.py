"""Real servers started by the integration tests (Orthanc PACS ...), with their start/stop helpers."""

__all__: list[str] = []
