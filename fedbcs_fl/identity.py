"""Who sent a reply: the engine says, never the reply.

A reply may name its site (Flower's site record; ``ClientUpdate.site``), but a name is
only a claim: a bad node that replies as "site-A" must not get the honest site-A's reply
dropped, nor take its place. Each engine has an identity of its own for a client, which
no reply can forge: the simulator's client (one per site, known before round 1) and
Flower's node id. :class:`Enrolment` binds each engine id to one site, once, and names
every reply, accepted or rejected, by that binding:

- the simulator enrols every client as its site before round 1;
- on Flower a node enrols at its first reply as the site it claims, unless another node
  holds that site already; a node not (yet) enrolled is named ``node <id>``;
- a reply that claims another site than its node's is rejected, named by the node's.

Example::

    enrolment = Enrolment()
    enrolment.admit(7, "site-A")  # ("site-A", None): node 7 is site-A from now on
    enrolment.admit(9, "site-A")  # ("node 9", "claims site-A, enrolled by another node")
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping


class Enrolment:
    """Engine ids bound to sites.

    Args:
        sites: bindings known before the first reply, engine id → site (the simulator's).
    """

    def __init__(self, sites: Mapping[Hashable, str] | None = None):
        self.site_of: dict[Hashable, str] = dict(sites or {})

    def name(self, engine_id: Hashable) -> str:
        """The site bound to ``engine_id``, or ``node <id>`` before it enrols."""
        return self.site_of.get(engine_id, f"node {engine_id}")

    def admit(self, engine_id: Hashable, claimed: object) -> tuple[str, str | None]:
        """``(name, problem)`` of a reply from ``engine_id`` that claims site ``claimed``
        (None: no claim). The first acceptable claim of an unbound id binds it."""
        name = self.name(engine_id)
        if claimed is not None and not isinstance(claimed, str):
            return name, f"its site name is a {type(claimed).__name__}, not a string"
        bound = self.site_of.get(engine_id)
        if bound is not None:
            if claimed not in (None, bound):
                return name, f"claims to be {claimed}, but is enrolled as {bound}"
            return name, None
        if claimed is None:
            return name, "names no site"
        if claimed in self.site_of.values():
            return name, f"claims {claimed}, which another node enrolled as"
        self.site_of[engine_id] = claimed
        return claimed, None
