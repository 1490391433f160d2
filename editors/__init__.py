"""Editing methods. Each lives in its own package with a dataclass config and the same verbs:

    insert(edit_id, prompt, target) -> dict[str, Tensor]   # the edit's state, to persist
    update(edit_id, prompt, target) -> dict[str, Tensor]   # retrain in place
    load(edit_id, tensors, withdrawn=False)                # restore persisted state
    load_many([(edit_id, tensors, withdrawn), ...])        # the same for a whole start -> {id: error}
    withdraw(edit_id)                                      # the edit stops acting; its record stays
    discard(edit_id)                                       # undo an insert that was never stored
    neurons(edit_id) -> int                                # how many units carry the edit

Errors in the user's input (empty target, too many tokens) raise ValueError with the reason.
"""
