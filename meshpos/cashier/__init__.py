"""Cashier operations outside the CRDT: drawer ledgers behind a quorum lock (docs/cashier.md)."""
