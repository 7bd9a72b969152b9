"""Site files for tests: a plant with one pump ``p1``, below its own site head (site, sources, asset types)."""

from __future__ import annotations

import textwrap

ONE_PUMP = """nodes:
  - id: {site}
    kind: site
{gateway}    children:
      - id: {area}
        kind: area
        children:
          - id: p1
            kind: machine
            type: pump
            bindings:
{bindings}"""


def one_pump_site(head: str, bindings: str, *, site: str = "plant", area: str = "area", gateway: str = "") -> str:
    """``head`` followed by the nodes of site ``site``: area ``area`` holds pump ``p1`` with ``bindings`` (one
    ``property: {...}`` a line); owned by ``gateway`` when one is named. Braces in the text are left as given,
    so a head and bindings written for ``str.format`` stay so."""
    owner = f"    gateway: {gateway}\n" if gateway else ""
    nodes = ONE_PUMP.format(site=site, area=area, gateway=owner, bindings=textwrap.indent(bindings, " " * 14))
    return head + nodes
