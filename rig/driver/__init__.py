"""Whole experiments driven step by step: ``itloop simulate`` (every day's steps, then the report)."""
