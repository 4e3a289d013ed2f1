"""Running one recording session: the schedule, the trial-by-trial runner, clock alignment."""
