"""Router kinds by name. Adding a router is one module and one line here."""

from __future__ import annotations

import importlib

from routers.protocol import BaseRouter

ROUTERS: dict[str, str] = {
    "random": "routers.kinds.random_router:RandomRouter",
    "mf": "routers.kinds.mf:MFRouter",
    "sw_ranking": "routers.kinds.sw_ranking:SWRankingRouter",
    "bert": "routers.kinds.bert:BertRouter",
    "causal_llm": "routers.kinds.causal_llm:CausalLLMRouter",
    "quality_gap": "routers.kinds.quality_gap:QualityGapRouter",
    "distilled": "routers.kinds.distilled:DistilledRouter",
    "multi": "routers.kinds.multi:MultiModelRouter",
}


def router_class(kind: str) -> type[BaseRouter]:
    try:
        target = ROUTERS[kind]
    except KeyError:
        known = ", ".join(sorted(ROUTERS))
        raise ValueError(f"unknown router kind {kind!r}; known kinds: {known}") from None
    module, _, name = target.partition(":")
    # Imported lazily so that loading one router never pays for another's dependencies.
    return getattr(importlib.import_module(module), name)
