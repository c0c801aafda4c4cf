"""Terminal identity (store authority, enrollment, signed roster) and, next, signed links and sync.

``peer.identity`` is built; the mutual-TLS WebSocket links and Yjs sync are the rest of issue 3.
"""
