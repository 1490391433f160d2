"""The scope index the rule tests decide with (the packaged MiniLM, untrained), and what it decides."""

from editors.scope.config import ScopeConfig
from editors.scope.index import ScopeIndex
from editors.scope.model import ScopeModel


def untrained_index() -> ScopeIndex:
    return ScopeIndex(ScopeModel.load(ScopeConfig(use_trained=False), None))


def decided(index: ScopeIndex, queries: list[str], earlier: list[str] | None = None) -> list[str | None]:
    """Per query, the id of the edit whose scope holds it, or None."""
    return [d.edit_id if d else None for d in index.decide(queries, earlier)]
