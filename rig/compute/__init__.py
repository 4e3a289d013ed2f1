"""Where a day's perturbations are computed (in this process or on Dask/SLURM) and what a run costs."""
