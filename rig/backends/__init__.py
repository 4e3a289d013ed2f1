"""Backends (DESIGN section 4): the simulated monkey wiring, the PsychoPy presenter, replay; ``factory.make_backend``."""
