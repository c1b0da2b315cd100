"""The service wiring: the composition root, the command line, HTTP and the process's allocator policy.

`app.py` builds every part from the settings and owns startup, drain and shutdown; `cli.py` is
`telgate`; `http.py` health, readiness, metrics, the read API and the webhook routes; `memory.py`
glibc's mmap threshold for bulk-sized buffers.
"""
