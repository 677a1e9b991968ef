"""Data: conditions (palettes, sketches, depth), dataset readers, the synthetic world, degradations.

Import the submodules directly (``piti.data.conditions``, ``piti.data.datasets``,
``piti.data.synth``, ``piti.data.prepare``, ``piti.data.degrade``); this package
imports nothing eagerly.
"""
