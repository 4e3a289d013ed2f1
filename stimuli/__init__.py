"""itloop: stimuli."""
