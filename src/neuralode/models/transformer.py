"""A Transformer block as the vector field of token sequences (batch, tokens, dim)."""

from __future__ import annotations

import math

import torch
from torch import nn

from .._args import count, is_int, positive_finite, probability
from .dynamics import activation_layer


class TimeEmbedding(nn.Module):
    """Sinusoidal features of t (periods from 2 pi / ``max_frequency`` to 2 pi), mapped to
    ``dim`` by a linear layer: a smooth function of time.

    Arguments:
        dim: the output dimension.
        features: the number of sinusoidal features (even).
        max_frequency: the highest frequency.

    Raises:
        ValueError: ``dim`` not an integer >= 1, ``features`` not an even integer >= 2, or
            ``max_frequency`` not positive and finite.
    """

    def __init__(self, dim: int, features: int = 16, max_frequency: float = 10.0):
        super().__init__()
        dim = count("dim", dim)
        if not (is_int(features) and features >= 2 and features % 2 == 0):
            raise ValueError(f"features must be an even integer >= 2, got {features!r}")
        features = int(features)
        max_frequency = positive_finite("max_frequency", max_frequency)
        frequencies = torch.exp(torch.linspace(0.0, math.log(max_frequency), features // 2))
        self.register_buffer("frequencies", frequencies)
        self.linear = nn.Linear(features, dim)

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        """Embed times.

        Arguments:
            t: the time: a scalar (a tensor or a Python number), or one per sample (batch,).

        Returns:
            The embedding, (*t.shape, dim): sines and cosines of ``t`` times the
                frequencies, mapped linearly.
        """
        if not isinstance(t, torch.Tensor):
            frequencies = self.frequencies
            t = torch.as_tensor(t, dtype=frequencies.dtype, device=frequencies.device)
        angles = t.reshape(*t.shape, 1) * self.frequencies.to(t.dtype)
        features = torch.cat([angles.sin(), angles.cos()], dim=-1)
        return self.linear(features.to(self.linear.weight.dtype))


class TransformerDynamics(nn.Module):
    """f(t, y) = attention + MLP branches of a pre-LayerNorm Transformer block.

    With h = y + e(t) (a time embedding added to every token), a = SelfAttention(LN(h)) and
    m = MLP(LN(h + a)), the vector field is f = a + m: the block's residual update, so one
    Euler step of size 1 is the usual Transformer block. States are (batch, tokens, dim);
    attention mixes tokens within a sample, never across the batch.

    Arguments:
        dim: the token dimension (a multiple of ``heads``).
        heads: the attention heads.
        hidden: the MLP's hidden width (default 4 x dim).
        activation: the MLP's activation.
        dropout: dropout in attention and MLP (0 keeps f deterministic, as solvers need).

    Raises:
        ValueError: ``dim`` or ``heads`` not an integer >= 1, ``dim`` not a multiple of
            ``heads``, ``hidden`` (given) not an integer >= 1, ``dropout`` not a number in
            [0, 1), or an unknown activation.
    """

    def __init__(
        self,
        dim: int,
        heads: int = 4,
        hidden: int | None = None,
        activation: str = "gelu",
        dropout: float = 0.0,
    ):
        super().__init__()
        dim, heads = count("dim", dim), count("heads", heads)
        if dim % heads:
            raise ValueError(
                f"dim must be a positive multiple of heads, got dim={dim}, heads={heads}"
            )
        hidden = 4 * dim if hidden is None else count("hidden", hidden)
        dropout = probability("dropout", dropout)
        self.time = TimeEmbedding(dim)
        self.norm1 = nn.LayerNorm(dim)
        self.attention = nn.MultiheadAttention(dim, heads, dropout=dropout, batch_first=True)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = nn.Sequential(
            nn.Linear(dim, hidden), activation_layer(activation), nn.Linear(hidden, dim)
        )

    def forward(self, t: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """Evaluate the vector field.

        Arguments:
            t: the time, a scalar or one per sample (batch,).
            y: the state, (batch, tokens, dim).

        Returns:
            dy/dt, (batch, tokens, dim).

        Raises:
            ValueError: ``y`` is not 3-D.
        """
        if y.ndim != 3:
            raise ValueError(
                f"TransformerDynamics needs states (batch, tokens, dim), got {tuple(y.shape)}"
            )
        embedding = self.time(t)  # (dim,), or per sample (batch, dim)
        h = y + (embedding.unsqueeze(1) if embedding.ndim == 2 else embedding)
        x = self.norm1(h)
        a = self.attention(x, x, x, need_weights=False)[0]
        m = self.mlp(self.norm2(h + a))
        return a + m
