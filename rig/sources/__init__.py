"""Acquisition and eye adapters: Open Ephys, LSL (rank 1: imports only rig/*.py)."""
