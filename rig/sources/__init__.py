"""Acquisition and eye adapters: spike sources, gaze sources, reward drivers (rank 1: import only rig/*.py)."""
