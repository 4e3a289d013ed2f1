"""Simulation only: the simulated sites' true sensitivity (white-box attack) and the simulated monkey's calibration."""
