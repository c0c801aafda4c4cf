"""The HQ: a peer of type ``hq`` in every store that enrolls it, landing what the stores hold in
PostgreSQL (docs/hq.md).  Runs as ``meshpos hq run``; needs the ``hq`` extra (psycopg)."""
