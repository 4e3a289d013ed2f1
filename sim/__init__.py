"""itloop: sim."""
