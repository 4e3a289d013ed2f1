"""itloop: analysis."""
