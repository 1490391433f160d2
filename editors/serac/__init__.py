"""SERAC (Mitchell et al., 2022): edit memory + embedding scope classifier + counterfactual model."""

from editors.serac.config import SeracConfig
from editors.serac.model import SeracEditor

__all__ = ["SeracConfig", "SeracEditor"]
