"""The names of FSR's gates (:class:`~fedbcs_ops.FSR`'s ``gate``), in a module that
imports no torch: ``fedbcs train --help`` lists them without importing it (issue 18)."""

GATES = ("static", "adaptive")
