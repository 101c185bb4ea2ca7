"""What every command shares about a run: which device it runs on (more of the run-folder layout
moves here as it is consolidated; see docs/architecture.md)."""

from consistcam.run.device import DEVICE_HELP, resolve_device, run_device

__all__ = ["DEVICE_HELP", "resolve_device", "run_device"]
