"""``itloop report``: figures and a summary page for a whole experiment folder."""
