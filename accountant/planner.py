"""Temporary: being written."""
def plan(*a, **k):
    raise NotImplementedError("accountant under construction")
def guarantee(*a, **k):
    raise NotImplementedError("accountant under construction")
