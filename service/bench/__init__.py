"""``fintegrate bench``: the platform measured against plain baselines in the same run.

Each benchmark starts what it measures on loopback (fresh databases, the real API, the
baselines), drives it in alternating rounds and reports per-round figures, the median of
the per-round ratios with their range, and each target's verdict.
"""
