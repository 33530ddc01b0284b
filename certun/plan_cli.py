"""Temporary."""
def register(sub):
    pass
