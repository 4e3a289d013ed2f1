"""Backend implementations that live in rig (the live presenter path)."""
