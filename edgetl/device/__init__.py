"""Device side (no torch): agent, install state machine, camera pipeline."""
