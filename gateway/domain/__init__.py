"""The pure domain: statuses, signals, transition tables and decide(). No I/O, no clock."""
