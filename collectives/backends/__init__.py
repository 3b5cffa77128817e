"""Backends of the collectives layer: one interface, several transports.

A backend works on flat, contiguous arrays and group ranks; argument checks, sequence
numbers, async work, debug checks and error bookkeeping live in ProcessGroup.
"""
