"""Star-relay baseline: the mesh benchmark's workload pushed through one central relay.

Why this exists: the mesh has no central box, and "how much does that cost or save?" only has an
answer next to the conventional design.  The conventional design for Yjs documents is a star: one
relay process (here pycrdt-websocket's ``WebsocketServer``, the Python counterpart of y-websocket)
that every terminal connects to, which applies each update to its own copy of the document and
re-broadcasts it to every other client.

By job: :mod:`.relay` is the relay (its own process) and the benchmark side's handle on it;
:mod:`.channel` a client's WebSocket to it; :mod:`.bare` the bare pycrdt clients; :mod:`.bench`
the star benchmark that runs the mesh benchmark's two phases through them (``python -m
simulations.star``); :mod:`.terminal_client` a real meshpos terminal as the relay's client.  bench_mesh.py and
bench_own_core.py use all of them; the figures are in docs/performance.md.
"""
