"""The basics every layer may import: the user-error base class, atomic file writes, timestamps.

It imports nothing of dapsearch, so any layer can use it without pulling in another.
"""
