"""The engine: work in arrival order, decided by the domain, one store transaction per batch, effects after.

`engine.py` the batch loop and `Unit`; `commit.py` the one writer of a decision; `commands.py` commands
→ signals and campaign actions; `dispatcher.py` the queue's pacing and the scheduler of timers;
`ports.py` what the engine asks of a channel; `loops.py` one policy for a store failure in a
background loop; `ids.py` event ids.
"""
