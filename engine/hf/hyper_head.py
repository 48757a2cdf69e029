"""The hyper-head: turns a query's token states into the q-net's weights and biases.

Pure torch (no transformers), with parameter names equal to the checkpoint's
``query_encoder.<name>`` tensors so that a checkpoint loads with ``load_state_dict``.
The math is in docs/hypencoder.md ("The hypernetwork").
"""

from __future__ import annotations

import math
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from ..qnet import QNet
from ..qnet_config import QNetConfig


class HyperHead(nn.Module):
    """Hyper-head for ``vector_dimensions = [d, h_1, ..., h_L, 1]`` over ``hidden_size`` states.

    Every produced matrix, seen as ``(in, out)`` (a bias of width ``h`` as ``(h, 1)``), has its
    own key and value projections (hidden -> in), ``out`` learned query rows, a projection
    Linear(in, in) and a learned base added to the result. Projections are indexed weights
    first (``0..L``), then biases (``L+1..2L``), as in the checkpoint.
    """

    def __init__(self, hidden_size: int, vector_dimensions: Sequence[int], config: QNetConfig | None = None):
        super().__init__()
        dims = [int(x) for x in vector_dimensions]
        if len(dims) < 2 or dims[-1] != 1 or min(dims) < 1:
            raise ValueError(f"vector_dimensions must be [d, h_1, ..., h_L, 1], got {list(vector_dimensions)}")
        self.vector_dimensions = tuple(dims)
        self.qnet_config = config if config is not None else QNetConfig()
        L = len(dims) - 2
        self.weight_shapes = [(dims[i], dims[i + 1]) for i in range(L + 1)]  # (in, out)
        self.bias_widths = [dims[i + 1] for i in range(L)]
        ins = [i for i, _ in self.weight_shapes] + self.bias_widths
        self.key_projections = nn.ModuleList(nn.Linear(hidden_size, n) for n in ins)
        self.value_projections = nn.ModuleList(nn.Linear(hidden_size, n) for n in ins)
        self.weight_query_embeddings = nn.ParameterList(
            nn.Parameter(torch.zeros(1, o, i)) for i, o in self.weight_shapes
        )
        self.weight_hyper_projection = nn.ModuleList(nn.Linear(i, i) for i, _ in self.weight_shapes)
        self.hyper_base_matrices = nn.ParameterList(
            nn.Parameter(torch.zeros(1, o, i)) for i, o in self.weight_shapes
        )
        self.bias_query_embeddings = nn.ParameterList(
            nn.Parameter(torch.zeros(1, 1, h)) for h in self.bias_widths
        )
        self.bias_hyper_projection = nn.ModuleList(nn.Linear(h, h) for h in self.bias_widths)
        self.hyper_base_vectors = nn.ParameterList(nn.Parameter(torch.zeros(1, h)) for h in self.bias_widths)

    @property
    def num_layers(self) -> int:
        return len(self.bias_widths)

    @staticmethod
    def _attend(queries, key_proj, value_proj, projection, base, states, mask):
        """One produced matrix, as ``(Q, rows, in)``: rows of attention over the tokens.

        The scale is sqrt(rows) -- the ``out`` of the matrix being made, not the key width.
        """
        keys = key_proj(states)  # (Q, T, in)
        values = value_proj(states)  # (Q, T, in)
        logits = torch.matmul(queries, keys.transpose(1, 2)) / math.sqrt(queries.shape[1])  # (Q, rows, T)
        logits = logits.masked_fill(~mask[:, None, :], float("-inf"))
        context = torch.matmul(torch.softmax(logits, dim=-1), values)  # (Q, rows, in)
        hidden = F.layer_norm(F.relu(context), (context.shape[-1],))
        return projection(hidden) + base

    def forward(self, states: torch.Tensor, attention_mask: torch.Tensor) -> QNet:
        """``states`` (Q, T, hidden) and ``attention_mask`` (Q, T) -> a :class:`QNet`."""
        if states.dim() != 3:
            raise ValueError(f"states must be (Q, T, hidden), got shape {tuple(states.shape)}")
        if attention_mask.shape != states.shape[:2]:
            raise ValueError(
                f"attention_mask shape {tuple(attention_mask.shape)} does not match states {tuple(states.shape[:2])}"
            )
        mask = attention_mask.bool()
        if not bool(mask.any(dim=1).all()):
            # A query with no unmasked token would give NaN attention weights.
            raise ValueError("every query needs at least one unmasked token")
        L = self.num_layers
        weights = []
        for i in range(L + 1):
            m = self._attend(
                self.weight_query_embeddings[i], self.key_projections[i], self.value_projections[i],
                self.weight_hyper_projection[i], self.hyper_base_matrices[i], states, mask,
            )
            weights.append(m.transpose(1, 2))  # (Q, out, in) -> the q-net's (Q, in, out)
        biases = []
        for j in range(L):
            v = self._attend(
                self.bias_query_embeddings[j], self.key_projections[L + 1 + j], self.value_projections[L + 1 + j],
                self.bias_hyper_projection[j], self.hyper_base_vectors[j], states, mask,
            )
            biases.append(v[:, 0, :])  # (Q, 1, h) -> (Q, h)
        # Checked for NaN/Inf: half precision can overflow, and a bad q-net must not rank silently.
        return QNet(weights, biases, self.qnet_config)
