"""The client side of deploys (httpx, no torch): one device or a fleet, over the agent API.

The package is also callable, so the Python API reads ``edgetl.deploy(bundle,
device=…, token=…)`` (:func:`edgetl.deploy.deployment.deploy`) while
``edgetl.deploy.rollout`` and friends stay importable: a submodule import sets
``edgetl.deploy`` to this package, so the function cannot live beside it.
"""

import sys
import types

from edgetl.deploy.client import DeviceClient
from edgetl.deploy.rollout import DeviceResult, deploy_fleet, load_fleet_targets

__all__ = ["DeviceClient", "DeviceResult", "deploy_fleet", "load_fleet_targets"]


class _CallableModule(types.ModuleType):
    def __call__(self, *args, **kwargs):
        """:func:`edgetl.deploy.deployment.deploy`: install a bundle on a device or a fleet."""
        from edgetl.deploy.deployment import deploy

        return deploy(*args, **kwargs)


sys.modules[__name__].__class__ = _CallableModule
