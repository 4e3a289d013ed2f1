"""The PsychoPy RSVP presenter: a separate process that shows the stimuli (DESIGN 4, 5).

Run it as ``itloop present --endpoint tcp://CONTROLLER:PORT`` or ``python -m rig.presenter``.
Pure parts (``geometry``, ``timing``) import no PsychoPy; ``stage`` (window and stimuli),
``trial`` (the frame loop) and ``server`` (the protocol loop) do.
"""
