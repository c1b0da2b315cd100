"""Metrics: one recorder the engine and adapters report to, and its exporters. Knows no contacts."""
