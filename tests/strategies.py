"""Hypothesis strategies shared by the accountant tests: realistic ranges for every parameter."""

from __future__ import annotations

from hypothesis import strategies as st

eps = st.floats(min_value=0.05, max_value=10.0)
delta = st.sampled_from([1e-3, 1e-5, 1e-7, 1e-10])
C0 = st.floats(min_value=0.1, max_value=50.0)
C1 = st.floats(min_value=0.1, max_value=50.0)
C2 = st.floats(min_value=0.1, max_value=10.0)
gamma = st.floats(min_value=1e-4, max_value=5e-2)
lam = st.one_of(st.just(0.0), st.floats(min_value=0.01, max_value=15.0))
T = st.integers(min_value=1, max_value=400)
sigma = st.floats(min_value=0.05, max_value=50.0)
ratio = st.floats(min_value=0.01, max_value=8.0)  # r = diameter / sigma
