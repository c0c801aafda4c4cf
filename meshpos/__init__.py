"""meshpos: a peer-to-peer terminal mesh for restaurants (the product package)."""

__version__ = "0.1.0"
