"""itloop's experiment runtime: config, day files, schedules, sessions, the CLI."""
__version__ = "0.1.0"
