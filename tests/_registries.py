"""A registry for server tests: aliases from a dict (and a switch to make it fail), models from a real one."""

from __future__ import annotations

from mlops_core.errors import RegistryError
from mlops_core.registry import Registry


class FakeRegistry:
    """Aliases from a dict, models from a real registry; can be made to fail; counts calls."""

    def __init__(self, real: Registry | None, aliases: dict[str, str]):
        self.real, self.alias_map, self.down = real, dict(aliases), False
        self.alias_calls, self.loads, self.pipeline_loads = 0, [], []

    def aliases(self):
        self.alias_calls += 1
        if self.down:
            raise RegistryError("reading aliases of 'titanic-survival': connection refused "
                                "(https://alice:s3cret@mlflow.example)")
        return dict(self.alias_map)

    def load_compiled(self, version):  # what a server loads first: the compiled artifact
        self.loads.append(str(version))
        return self.real.load_compiled(version)

    def load_model(self, version):  # the pipeline: only when the artifact cannot be served
        self.pipeline_loads.append(str(version))
        return self.real.load_model(version)
