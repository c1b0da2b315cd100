"""Several instances over one store (SPEC §11): who this instance is and which work it owns.

`identity.py` the gateway id kept with the data dir; `lease.py` the lease as a pure core (time in, next
renewal out); `membership.py` the members' leases in the store and the takeover of a dead member's work.
"""
