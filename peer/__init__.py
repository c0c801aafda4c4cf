"""Terminal identity, signed links and sync between terminals (filled in by the links issue)."""
