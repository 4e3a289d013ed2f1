"""The experiment's daily steps: preflight, fit, plan (with the beyond-the-plan stimuli), record, analyze."""
