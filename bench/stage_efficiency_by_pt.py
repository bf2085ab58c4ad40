"""Truth-edge efficiency by particle pT after each stage of a finished run.

For the primaries' truth edges of the given events: the fraction present in the embedding's
radius graph, kept by the filter, and scored at or above the GNN cut. A pT-dependent loss at
one stage shows as a trend down its column.

Usage: ``python bench/stage_efficiency_by_pt.py --run results/default --events 1018 1019 1020
1021 --cut 0.9``. A second table splits the GNN's column by the particle's |eta| (barrel,
endcaps), where a trend with pT can come from where the particles of each pT are.
"""

from __future__ import annotations

import argparse

import numpy as np

from trackgnn.event_data import load_graph, load_hits
from trackgnn.graph.truth import truth_edge_mask

PT_BINS = np.array([0.5, 0.75, 1.0, 1.5, 2.0, 3.0, 5.0, 100.0])
ETA_BINS = np.array([0.0, 1.0, 2.0, 2.5, 3.0, 4.5])
STAGES = ("graph", "filter", "gnn")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", required=True, help="the run directory, e.g. results/default")
    parser.add_argument("--events", type=int, nargs="+", required=True, help="event ids")
    parser.add_argument("--cut", type=float, default=0.9, help="GNN score cut")
    args = parser.parse_args()
    n_bins = len(PT_BINS) - 1
    total = np.zeros(n_bins)
    found = {stage: np.zeros(n_bins) for stage in STAGES}
    n_eta = len(ETA_BINS) - 1
    # GNN-kept truth edges among those the filter kept, by (pT, |eta|) cell
    cell_total, cell_found = np.zeros((n_bins, n_eta)), np.zeros((n_bins, n_eta))
    for event_id in args.events:
        name = f"event{event_id:09d}.pt"
        hits = load_hits(f"{args.run}/features/{name}")
        primary = hits.primary[hits.truth_edges[0]]
        truth = hits.truth_edges[:, primary]
        pt_bin = np.digitize(hits.pt[truth[0]].numpy(), PT_BINS) - 1
        inside = (pt_bin >= 0) & (pt_bin < n_bins)
        total += np.bincount(pt_bin[inside], minlength=n_bins)[:n_bins]
        eta_bin = np.digitize(np.abs(hits.particle_eta[truth[0]].numpy()), ETA_BINS) - 1
        inside_cell = inside & (eta_bin >= 0) & (eta_bin < n_eta)
        present_by_stage = {}
        for stage in STAGES:
            graph = load_graph(f"{args.run}/{stage}/{name}")
            edges = graph.edge_index
            if stage == "gnn":
                edges = edges[:, graph.scores >= args.cut]
            # A truth edge is found when the stage kept it in either orientation.
            present = truth_edge_mask(truth, edges, hits.n_hits).numpy()
            present_by_stage[stage] = present
            found[stage] += np.bincount(pt_bin[inside], weights=present[inside], minlength=n_bins)[
                :n_bins
            ]
        cells = (pt_bin * n_eta + eta_bin)[inside_cell & present_by_stage["filter"]]
        kept = present_by_stage["gnn"][inside_cell & present_by_stage["filter"]]
        cell_total += np.bincount(cells, minlength=n_bins * n_eta).reshape(n_bins, n_eta)
        cell_found += np.bincount(cells, weights=kept, minlength=n_bins * n_eta).reshape(
            n_bins, n_eta
        )
    print("pT (GeV)      truth edges  " + "  ".join(f"{s:>6}" for s in STAGES))
    for j in range(n_bins):
        ratios = "  ".join(f"{found[s][j] / max(total[j], 1):6.4f}" for s in STAGES)
        print(f"{PT_BINS[j]:5.2f}-{PT_BINS[j + 1]:<7.2f} {int(total[j]):11d}  {ratios}")
    print("\nGNN efficiency on the filter's truth edges by particle |eta| (edges in brackets)")
    print(
        "pT (GeV)     "
        + "".join(f"{ETA_BINS[k]:>8.1f}-{ETA_BINS[k + 1]:<7.1f}" for k in range(n_eta))
    )
    for j in range(n_bins):
        row = "".join(
            f"{cell_found[j, k] / max(cell_total[j, k], 1):7.3f}({int(cell_total[j, k]):6d})  "
            for k in range(n_eta)
        )
        print(f"{PT_BINS[j]:5.2f}-{PT_BINS[j + 1]:<7.2f}{row}")


if __name__ == "__main__":
    main()
