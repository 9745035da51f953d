"""Configuration of the Mamba blocks of Samba-ASR (samba-asr.md §3), as frozen dataclasses.

Derived sizes are properties; nothing mutates a config after construction, and ``asdict(config)``
travels inside exported weights.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

__all__ = ["MambaConfig"]


@dataclass(frozen=True)
class MambaConfig:
    """One Mamba-1 mixer (the defaults are those of the Mamba reference implementation)."""

    d_model: int  # width of the residual stream
    d_state: int = 16  # N in the paper: state size per channel
    d_conv: int = 4  # width of the causal depthwise convolution
    expand: int = 2  # D = expand · d_model channels inside the block
    dt_rank: int = 0  # R: rank of the Δ projection; 0 means ceil(d_model / 16)
    dt_min: float = 1e-3  # range of the initial step sizes Δ (log-uniform)
    dt_max: float = 0.1
    dt_init_floor: float = 1e-4  # initial Δ never below this
    dt_scale: float = 1.0  # dt_proj.weight ~ U(±dt_scale / √R)
    conv_bias: bool = True
    bias: bool = False  # biases of in_proj and out_proj

    def __post_init__(self) -> None:
        for name in ("d_model", "d_state", "d_conv", "expand"):
            if getattr(self, name) < 1:
                raise ValueError(f"MambaConfig.{name} must be >= 1, got {getattr(self, name)}")
        if self.dt_rank < 0:
            raise ValueError(f"MambaConfig.dt_rank must be >= 0 (0 = auto), got {self.dt_rank}")
        if not 0 < self.dt_min <= self.dt_max:
            raise ValueError(f"MambaConfig needs 0 < dt_min <= dt_max, got {self.dt_min}, {self.dt_max}")

    @property
    def d_inner(self) -> int:
        """D, the number of SSM channels."""
        return self.expand * self.d_model

    @property
    def rank(self) -> int:
        """R, the rank of the Δ projection."""
        return self.dt_rank or math.ceil(self.d_model / 16)
