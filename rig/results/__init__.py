"""A day's results as stored: the ``day_DDD.analysis.json`` file and the headline table made from them."""
