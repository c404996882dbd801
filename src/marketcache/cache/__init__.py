"""The cache: the `UnifiedCache` facade (facade.py) over a storage backend, and the work done on
one series: writes (commit protocol and write profile), the catalog, retention, repair, copy and
the series' state and re-adjustment.
"""
