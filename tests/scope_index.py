"""The scope index the rule tests decide with (the packaged MiniLM, untrained), and what it decides."""

from editors.scope.config import ScopeConfig
from editors.scope.index import ScopeIndex
from editors.scope.model import ScopeModel


def untrained_index(*edits: tuple[str, str, str]) -> ScopeIndex:
    """The index holding `edits`, each (edit id, prompt, target), as iReVa's."""
    index = ScopeIndex(ScopeModel.load(ScopeConfig(use_trained=False), None))
    for edit_id, prompt, target in edits:
        index.put(edit_id, "ireva", prompt, target=target)
    return index


def decided(index: ScopeIndex, queries: list[str], earlier: list[str] | None = None) -> list[str | None]:
    """Per query, the id of the edit whose scope holds it, or None."""
    return [d.edit_id if d else None for d in index.decide(queries, earlier)]
