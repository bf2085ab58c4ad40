"""The multi-layer perceptron every model of the pipeline is built from."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import Tensor, nn

from trackgnn.errors import ConfigError

#: Rows per tile of chunked inference. BLAS kernels compute a row of a matrix product in a
#: register tile of a few rows; rows of a partial tile at the end of a matrix take another code
#: path and round differently. Padding every chunk to a multiple of this (a common multiple of
#: the tile heights of x86 sgemm kernels) puts every real row in a full tile, so on the CPU a
#: row's result does not depend on how the rows were chunked.
ROW_TILE = 768

ACTIVATIONS: dict[str, type[nn.Module]] = {
    "tanh": nn.Tanh,
    "relu": nn.ReLU,
    "silu": nn.SiLU,
    "gelu": nn.GELU,
    "sigmoid": nn.Sigmoid,
}


def activation_layer(name: str) -> nn.Module:
    """A fresh activation module by name (``tanh``, ``relu``, ``silu``, ``gelu``, ``sigmoid``)."""
    try:
        return ACTIVATIONS[name]()
    except KeyError:
        known = ", ".join(sorted(ACTIVATIONS))
        raise ConfigError(f"unknown activation '{name}' (known: {known})") from None


def make_mlp(
    in_dim: int,
    hidden: int | Sequence[int],
    out_dim: int,
    n_layers: int | None,
    activation: str = "relu",
    layer_norm: bool = True,
    output_activation: str | None = None,
    output_layer_norm: bool = False,
) -> nn.Sequential:
    """Build ``n_layers`` hidden layers (Linear [+ LayerNorm] + activation) and a Linear output.

    Args:
        in_dim: input features.
        hidden: width of every hidden layer, or one width per hidden layer.
        out_dim: output features.
        n_layers: number of hidden layers; must equal ``len(hidden)`` when ``hidden`` is a
            sequence (or be None then). ``0`` gives a single Linear layer.
        activation: hidden activation name.
        layer_norm: LayerNorm before each hidden activation.
        output_activation: optional activation after the output layer.
        output_layer_norm: LayerNorm on the output (before ``output_activation``).
    """
    if isinstance(hidden, int):
        if n_layers is None:
            raise ConfigError("make_mlp: n_layers is required when hidden is a single width")
        widths = [hidden] * n_layers
    else:
        widths = list(hidden)
        if n_layers is not None and n_layers != len(widths):
            raise ConfigError(
                f"make_mlp: n_layers={n_layers} does not match {len(widths)} hidden widths"
            )
    if in_dim < 1 or out_dim < 1 or any(w < 1 for w in widths):
        raise ConfigError(
            f"make_mlp: sizes must be positive (in {in_dim}, hidden {widths}, out {out_dim})"
        )

    layers: list[nn.Module] = []
    previous = in_dim
    for width in widths:
        layers.append(nn.Linear(previous, width))
        if layer_norm:
            layers.append(nn.LayerNorm(width))
        layers.append(activation_layer(activation))
        previous = width
    layers.append(nn.Linear(previous, out_dim))
    if output_layer_norm:
        layers.append(nn.LayerNorm(out_dim))
    if output_activation is not None:
        layers.append(activation_layer(output_activation))
    return nn.Sequential(*layers)


def apply_in_chunks(
    fn: Callable[[Tensor], Tensor], rows: Tensor, chunk_rows: int, dim: int = 0
) -> Tensor:
    """``fn`` over ``rows`` split along ``dim`` into chunks of at most ``chunk_rows`` rows.

    Chunks are whole multiples of :data:`ROW_TILE` (at least one tile) and the last one is padded
    to a whole tile by repeating its first row; the padding's outputs are dropped. ``fn`` must be
    row-wise (output row i depends only on input row i), its output rows along dim 0. The result
    is then bitwise independent of ``chunk_rows`` on the CPU (within float rounding on CUDA,
    whose kernel choice depends on the matrix shape).
    """
    n_rows = rows.shape[dim]
    chunk = max(ROW_TILE, chunk_rows // ROW_TILE * ROW_TILE)
    outputs = []
    for start in range(0, n_rows, chunk):
        part = rows.narrow(dim, start, min(chunk, n_rows - start))
        n_part = part.shape[dim]
        missing = -n_part % ROW_TILE
        if missing:
            filler = part.narrow(dim, 0, 1).expand(
                *[missing if d == dim % rows.ndim else -1 for d in range(rows.ndim)]
            )
            part = torch.cat([part, filler], dim=dim)
        outputs.append(fn(part)[:n_part])
    return torch.cat(outputs)


#: Feature names whose column holds an azimuth divided by pi (see trackgnn.features).
ANGLE_FEATURES = ("phi",)


def angle_columns(feature_names: Sequence[str] | None) -> list[int]:
    """Columns of ``x`` that hold an angle / pi (``phi``), from the features file's names."""
    if not feature_names:
        return []
    return [i for i, name in enumerate(feature_names) if name in ANGLE_FEATURES]


class PeriodicInput(nn.Module):
    """Replace each angle column (angle / pi) by its cosine and sine.

    phi = +pi and -pi are the same direction but +1 and -1 as a feature; a network cannot map
    a track crossing phi = pi continuously without this. Output width: ``in_dim + len(columns)``.
    """

    def __init__(self, in_dim: int, columns: Sequence[int] = ()) -> None:
        super().__init__()
        columns = sorted(set(int(c) for c in columns))
        if any(c < 0 or c >= in_dim for c in columns):
            raise ConfigError(f"angle columns {columns} outside the {in_dim} input features")
        keep = [c for c in range(in_dim) if c not in columns]
        self.register_buffer("keep", torch.tensor(keep, dtype=torch.long), persistent=False)
        self.register_buffer("angles", torch.tensor(columns, dtype=torch.long), persistent=False)
        self.out_dim = in_dim + len(columns)

    def forward(self, x: Tensor) -> Tensor:
        if self.angles.numel() == 0:
            return x
        angle = torch.pi * x[:, self.angles]
        return torch.cat([x[:, self.keep], torch.cos(angle), torch.sin(angle)], dim=1)
