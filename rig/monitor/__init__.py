"""The read-only live web page for the experimenter (served on 127.0.0.1 only)."""
