"""A dose engine that forgot its ``compute`` method."""


class EngineWithoutCompute:
    name = "aaa_without_compute"
    description = "lacks compute()"
