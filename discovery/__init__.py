"""Finding the store's other terminals on the LAN: mDNS (``_meshpos._tcp``); static peers are dialled by peer.mesh."""
