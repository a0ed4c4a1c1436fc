"""The MessageStore seam: where messages live when memory is not enough (durability, paging).

`SQLiteStore` is the one implementation: see its module docstring for the group-commit contract.
"""

from .sqlite import SQLiteStore, StoreError

__all__ = ["SQLiteStore", "StoreError"]
