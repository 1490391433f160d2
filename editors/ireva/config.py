from dataclasses import dataclass


@dataclass
class IrevaConfig:
    """Settings of the iReVa key-value adaptor. Defaults were chosen on zsre_mend_train-1k (docs/ireva.md)."""

    layer: int = -1  # MLP the adaptor sits beside; negative counts from the top (-1 = last block)
    theta: float = 0.85  # margin on the centred cosine between the input and a key
    ramp: float = 0.02  # activation rises linearly from theta to full strength at theta + ramp
    # Scale on a neuron's calibrated value when the scope gate lets it write: its value was calibrated on
    # its own prompt, and a paraphrase or a chat turn needs more push (3 chosen on zsRE/CounterFact dev).
    alpha: float = 3.0
    logit_margin: float = 5.0  # a neuron's value is scaled until its token leads the runner-up by this
    max_scale: float = 1e5
    max_target_tokens: int = 32
    # Retrofit (optional): Adam on the new neurons only, L_edit + a * L_rec + b * L_irr.
    # The paper's a = b = 1e-3 and lr 5e-2 suit raw dot products in the thousands; ours are cosines.
    retrofit_steps: int = 10
    retrofit_lr: float = 1e-2
    rec_weight: float = 1.0
    irr_weight: float = 1.0
