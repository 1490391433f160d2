from dataclasses import dataclass


@dataclass
class ToyConfig:
    marker: str = "toy"  # EDITSERVE_TOY__MARKER: proves the section reaches the editor
