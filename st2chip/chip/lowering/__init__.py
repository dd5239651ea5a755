"""Lowering, one module per named pass; :mod:`st2chip.chip.lower` lists them in order and runs them.

Every pass takes a :class:`~st2chip.chip.lowering.plan.Plan` and returns the next one;
:mod:`~st2chip.chip.lowering.plan` holds the records they pass on.
"""
