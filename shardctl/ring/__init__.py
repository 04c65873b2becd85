"""Pure consistent hashing, and its SQL twin."""
