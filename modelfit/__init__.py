"""itloop: modelfit."""
