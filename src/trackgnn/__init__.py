"""trackgnn: the Exa.TrkX GNN track-reconstruction pipeline as a Snakemake workflow."""

__version__ = "0.1.0"
