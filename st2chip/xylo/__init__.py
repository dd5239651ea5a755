"""Xylo (SynSense): st2chip's second chip family.

One canonical NIR graph lowers either to Loihi 2 (:mod:`st2chip.chip`) or to Xylo: the
stacked layers flattened into Xylo's one recurrent hidden population and its output
neurons (:class:`~st2chip.xylo.xylograph.XyloGraph`), the chip's limits in
:mod:`st2chip.xylo.spec` (one JSON resource file per Xylo chip).
"""
