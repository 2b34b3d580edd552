"""CDPA's fusions by name (:class:`~fedbcs_models.CDPAHead`): for a stream of L levels,
the partner p(l) of each shallow level l < L-1, the deepest (``"deepest"``, the released
code) or the next deeper (``"adjacent"``, eq. 10). Apart from the head, in a module that
imports no torch: ``fedbcs train --help`` lists the names without importing it (issue 18).
"""

FUSIONS = {
    "deepest": lambda levels: [levels - 1] * (levels - 1),
    "adjacent": lambda levels: list(range(1, levels)),
}
