"""A twin model that forgot ``exponentials``: the twin-model registry must refuse it when it loads."""


class TwinModelWithoutExponentials:
    name = "aaa_twin_without_exponentials"
    n_params = 3

    def prior(self, structure, radiopharmaceutical, nuclide, overrides):
        return None
