"""Finding other terminals: mDNS (``_meshpos._tcp``) and static peers (filled in by the discovery issue)."""
