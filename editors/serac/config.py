from dataclasses import dataclass


@dataclass
class SeracConfig:
    """Settings of the SERAC editor (edit memory + counterfactual model). Which edit's scope holds a
    query is the server's scope model's call (editors/scope), shared by every method."""

    # Counterfactual model: the backbone prompted with the edit in scope ({prompt}/{target}/{query}).
    template: str = "Question: {prompt}\nAnswer: {target}\nQuestion: {query}\nAnswer:"
    # ... and for a chat turn: the edit stated in a system turn ({fact}: editors/statement.py fact()),
    # then the user's question; the answer is the assistant's, in full sentences.
    chat_system: str = "Remember this fact: {fact}"
    # LoRA counterfactual adapter written by `editserve train-serac`; used when the directory holds one.
    adapter_dir: str | None = None
    use_adapter: bool = True
    max_target_tokens: int = 32
    max_prompt_chars: int = 2000
