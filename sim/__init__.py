"""itloop: sim -- the simulated monkey (synthetic IT sites with a hidden ground truth).

Modules:

- ``sim.params``: :class:`SimParams`, the ``[sim]`` keys and their rules (``rig.config.SimConfig`` is it).
- ``sim.monkey``: :class:`SimulatedMonkey` -- true rates (evaluation only), spikes for a trial, fixation
  breaks, the presenter -> acquisition clock map.
- ``sim.hidden``: the hidden random networks and the input blur (sensitivity knob).
- ``sim.spikes``: continuous-time spike generation and exact expected window counts.
- ``sim.clocks``: clock map, frame-locked flips, photodiode jitter, a sync-pair line fit.
- ``sim.backend``: :class:`SimBackend`, the in-process ``rig.backend.Backend``.
- ``sim.refimages``: seeded textures the monkey calibrates its drives on.
- throughput: ``python benchmarks/sim_bench.py``.
"""
