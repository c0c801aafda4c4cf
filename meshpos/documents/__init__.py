"""Typed API over the terminal's Yjs documents (orders per business day, tables, inventory).

Callers never touch raw CRDT maps: every write goes through a model method that validates first
and mutates inside one pycrdt transaction, and every read returns plain Python values with the
JS-number/bytes conversions already done.
"""

from meshpos.documents.host import DamagedDocument, DocumentHost, Model
from meshpos.documents.inventory import InventoryDoc
from meshpos.documents.orders import ORDER_STAGES, OrdersDoc
from meshpos.documents.tables import TABLE_STATUSES, TablesDoc

__all__ = [
    "ORDER_STAGES",
    "TABLE_STATUSES",
    "DamagedDocument",
    "DocumentHost",
    "InventoryDoc",
    "Model",
    "OrdersDoc",
    "TablesDoc",
]
