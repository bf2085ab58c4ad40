"""Studies of a trained pipeline and of its training (`trackgnn study`, rules in studies.smk).

* :mod:`~trackgnn.studies.scaling`: data-parallel scaling of GNN training (target ``scaling``);
* :mod:`~trackgnn.studies.robustness`: the trained pipeline at other pile-up and noise levels
  (targets ``pileup_study`` and ``noise_study``).
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from typing import Any


def add_study_parser(
    subparsers: Any,
    with_config: Callable[[argparse.ArgumentParser], argparse.ArgumentParser],
    positive_int: Callable[[str], int],
) -> None:
    """Add ``study scaling|pileup|noise measure|report`` to the ``trackgnn`` CLI."""
    from trackgnn.studies.robustness import add_robustness_parsers
    from trackgnn.studies.scaling import add_scaling_parser

    study = subparsers.add_parser("study", help="studies: scaling, pile-up and noise robustness")
    kinds = study.add_subparsers(dest="study", required=True, metavar="STUDY")
    add_robustness_parsers(kinds, with_config)
    add_scaling_parser(kinds, with_config, positive_int)
