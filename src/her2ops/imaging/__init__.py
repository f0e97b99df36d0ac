"""Image I/O: validation, the pyramidal core store, pyramid sampling, synthetic cores, dearraying.

Never imports torch or opens a database session.
"""
