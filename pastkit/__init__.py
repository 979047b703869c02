"""pastkit: Parametric Skill Transfer (PaST) as a research kit.

The core object is the skill vector v = θ_rl − θ_sft (paper Sec. 4.2), injected as θ_T + λ·v.
"""

__version__ = "0.1.0"

from .checkpoint import Checkpoint, CheckpointError, LoraAdapter
from .skill_vector import SkillVector, inject

__all__ = ["Checkpoint", "CheckpointError", "LoraAdapter", "SkillVector", "__version__", "inject"]
