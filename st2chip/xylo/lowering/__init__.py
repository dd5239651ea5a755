"""Xylo's lowering passes, one module each (the list is :data:`st2chip.xylo.lower.PASSES`), over the typed
:class:`~st2chip.xylo.lowering.plan.XyloPlan`."""
