"""The client side of deploys (httpx, no torch): one device or a fleet, over the agent API."""

from edgetl.deploy.client import DeviceClient
from edgetl.deploy.rollout import DeviceResult, deploy_fleet, load_fleet_targets

__all__ = ["DeviceClient", "DeviceResult", "deploy_fleet", "load_fleet_targets"]
