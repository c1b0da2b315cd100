"""The backend's side of the bus, as `telgate` subcommands: what a campaign backend runs, not the gateway.

`submit.py` the command window (the reference client of SPEC §3's flow control); `importer.py` a contact
file as bulk commands; `watch.py` a live table from the events; `demo.py` the whole thing on embedded
defaults.
"""
