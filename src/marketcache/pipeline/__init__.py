"""Filling the cache from providers: populate (the runner), jobs, provider selection, provider
answers, failover, seams and adjustment basis, restating a series, fundamentals.
"""
