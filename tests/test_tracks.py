"""Track building: connected components (SciPy and torch), walk-through, submission files."""

from __future__ import annotations

import itertools

import numpy as np
import pandas as pd
import pytest
import torch

from trackgnn.errors import TrackGNNError
from trackgnn.graph.components import (
    build_tracks,
    connected_components,
    submission_track_ids,
    walkthrough_edges,
    write_submission,
)


def union_find_labels(num_nodes: int, edges: np.ndarray) -> np.ndarray:
    """Reference: smallest node index of each node's component, by plain union-find."""
    parent = list(range(num_nodes))

    def find(node: int) -> int:
        while parent[node] != node:
            parent[node] = parent[parent[node]]
            node = parent[node]
        return node

    for u, v in edges.T:
        ru, rv = find(int(u)), find(int(v))
        if ru != rv:
            parent[max(ru, rv)] = min(ru, rv)
    return np.array([find(n) for n in range(num_nodes)])


def random_graph(rng: np.random.Generator, num_nodes: int, num_edges: int) -> torch.Tensor:
    edges = rng.integers(0, num_nodes, size=(2, num_edges))
    return torch.from_numpy(edges)


@pytest.mark.parametrize("backend", ["scipy", "torch"])
@pytest.mark.parametrize(("num_nodes", "num_edges"), [(1, 0), (50, 0), (200, 120), (300, 900)])
def test_connected_components_match_union_find(backend, num_nodes, num_edges):
    rng = np.random.default_rng(num_nodes + num_edges)
    edge_index = random_graph(rng, num_nodes, num_edges)  # includes self-loops and repeats
    labels = connected_components(num_nodes, edge_index, backend=backend)
    expected = union_find_labels(num_nodes, edge_index.numpy())
    np.testing.assert_array_equal(labels.numpy(), expected)


def test_torch_components_on_long_chain_in_adversarial_order():
    # A path whose node numbers zig-zag stresses hooking (roots are far from the minimum).
    num_nodes = 4001
    order = torch.from_numpy(np.random.default_rng(3).permutation(num_nodes))
    edge_index = torch.stack([order[:-1], order[1:]])
    labels = connected_components(num_nodes, edge_index, backend="torch")
    assert torch.equal(labels, torch.zeros(num_nodes, dtype=torch.long))


def test_components_ignore_edge_direction():
    edge_index = torch.tensor([[1, 3, 4], [0, 2, 3]])
    for backend in ("scipy", "torch"):
        labels = connected_components(6, edge_index, backend=backend)
        assert labels.tolist() == [0, 0, 2, 2, 2, 5]


def chain_edges(nodes: list[int]) -> list[tuple[int, int]]:
    return list(itertools.pairwise(nodes))


def test_build_tracks_cuts_scores_and_dissolves_short_tracks():
    # Hits 0-3 one particle, 4-6 another, 7-8 a pair, 9 isolated.
    edges = [*chain_edges([0, 1, 2, 3]), *chain_edges([4, 5, 6]), (7, 8), (3, 4), (6, 9)]
    scores = [0.9, 0.8, 0.95, 0.7, 0.6, 0.99, 0.5, 0.2]
    edge_index = torch.tensor(edges).T
    labels = build_tracks(10, edge_index, torch.tensor(scores), score_cut=0.5, min_length=3)
    # (3, 4) at exactly the cut is dropped (kept edges are strictly above), (6, 9) below it.
    assert labels.tolist() == [0, 0, 0, 0, 1, 1, 1, -1, -1, -1]
    labels = build_tracks(10, edge_index, torch.tensor(scores), score_cut=0.5, min_length=2)
    assert labels.tolist() == [0, 0, 0, 0, 1, 1, 1, 2, 2, -1]
    labels = build_tracks(10, edge_index, torch.tensor(scores), score_cut=0.4, min_length=3)
    assert labels.tolist() == [0] * 7 + [-1, -1, -1]


def test_build_tracks_without_scores_keeps_all_edges_and_backends_agree():
    rng = np.random.default_rng(7)
    edge_index = random_graph(rng, 500, 400)
    scores = torch.from_numpy(rng.random(400)).float()
    for method in ("components", "walkthrough"):
        by_scipy = build_tracks(500, edge_index, scores, 0.3, 3, method, backend="scipy")
        by_torch = build_tracks(500, edge_index, scores, 0.3, 3, method, backend="torch")
        assert torch.equal(by_scipy, by_torch)
    all_edges = build_tracks(500, edge_index, None, min_length=1)
    expected = union_find_labels(500, edge_index.numpy())
    # min_length=1: every component is a track, numbered in order of its lowest node.
    np.testing.assert_array_equal(all_edges.numpy(), np.unique(expected, return_inverse=True)[1])


def test_walkthrough_splits_branch_at_highest_scoring_continuation():
    # 0 -> 1 -> 2 -> 3 is the real track; at hit 1 a fake branch 1 -> 4 -> 5 scores lower.
    edge_index = torch.tensor([[0, 1, 2, 1, 4], [1, 2, 3, 4, 5]])
    scores = torch.tensor([0.9, 0.8, 0.9, 0.7, 0.9])
    components = build_tracks(6, edge_index, scores, 0.5, 2, "components")
    assert components.tolist() == [0] * 6
    walked = build_tracks(6, edge_index, scores, 0.5, 2, "walkthrough")
    assert walked.tolist() == [0, 0, 0, 0, 1, 1]
    # Two hits competing for one predecessor: the better edge wins, the other hit starts anew.
    merge = torch.tensor([[0, 1, 2], [2, 2, 3]])
    walked = build_tracks(4, merge, torch.tensor([0.6, 0.9, 0.9]), 0.5, 1, "walkthrough")
    assert walked.tolist() == [0, 1, 1, 1]


def longest_path_walk_reference(
    num_nodes: int, edge_index: np.ndarray, scores: np.ndarray
) -> np.ndarray:
    """Plain-Python walkthrough: longest paths by memoised recursion, then mutual choices."""
    edges = [(int(u), int(v), e) for e, (u, v) in enumerate(edge_index.T) if u != v]
    # rank by score, equal scores by edge order (the later edge ranks higher)
    rank = {e: i for i, e in enumerate(sorted((e for _, _, e in edges), key=lambda e: scores[e]))}

    def longest(node: int, forward: bool, memo: dict[int, int]) -> int:
        if node not in memo:
            nxt = (
                [v for u, v, _ in edges if u == node]
                if forward
                else [u for u, v, _ in edges if v == node]
            )
            memo[node] = max((longest(n, forward, memo) + 1 for n in nxt), default=0)
        return memo[node]

    out_of: dict[int, int] = {}
    into: dict[int, int] = {}
    selected = np.zeros(edge_index.shape[1], bool)
    remaining = edges
    while remaining:
        successor: dict[int, tuple] = {}
        predecessor: dict[int, tuple] = {}
        for u, v, e in remaining:
            key = (longest(v, True, out_of), rank[e])
            if u not in successor or key > successor[u][0]:
                successor[u] = (key, e)
            key = (longest(u, False, into), rank[e])
            if v not in predecessor or key > predecessor[v][0]:
                predecessor[v] = (key, e)
        accepted = [
            (u, v, e) for u, v, e in remaining if successor[u][1] == e and predecessor[v][1] == e
        ]
        if not accepted:
            break
        for _, _, e in accepted:
            selected[e] = True
        has_out = {u for u, _, _ in accepted}
        has_in = {v for _, v, _ in accepted}
        remaining = [
            (u, v, e)
            for u, v, e in remaining
            if not selected[e] and u not in has_out and v not in has_in
        ]
    return selected


def random_dag(rng: np.random.Generator, num_nodes: int, num_edges: int) -> torch.Tensor:
    """Random edges directed from the smaller to the larger node (acyclic, as the pipeline's
    inner -> outer orientation), with repeats and self-loops."""
    edges = rng.integers(0, num_nodes, size=(2, num_edges))
    return torch.from_numpy(np.sort(edges, axis=0))


@pytest.mark.parametrize("seed", range(4))
def test_walkthrough_edges_equal_plain_longest_path_walk(seed):
    rng = np.random.default_rng(seed)
    num_nodes, num_edges = 120, 300
    edge_index = random_dag(rng, num_nodes, num_edges)
    # Coarse scores create ties, which must break by edge order as in the reference.
    scores = torch.from_numpy(rng.integers(0, 20, num_edges) / 20.0)
    selected = walkthrough_edges(num_nodes, edge_index, scores)
    expected = longest_path_walk_reference(num_nodes, edge_index.numpy(), scores.numpy())
    np.testing.assert_array_equal(selected.numpy(), expected)
    kept = edge_index[:, selected]
    assert torch.bincount(kept[0], minlength=num_nodes).max() <= 1
    assert torch.bincount(kept[1], minlength=num_nodes).max() <= 1


def test_walkthrough_keeps_a_track_through_overlapping_modules_whole():
    # Hits 0, 1, (2, 3), 4, 5: hits 2 and 3 are one particle crossing two overlapping modules of
    # one layer, so 1 -> 2, 1 -> 3, 2 -> 3, 2 -> 4, 3 -> 4 all join the particle's hits. Taking
    # the best-scoring edges first (1 -> 3, then 2 -> 4) would cut the track into 0 1 3 | 2 4 5.
    edge_index = torch.tensor([[0, 1, 1, 2, 2, 3, 4], [1, 2, 3, 3, 4, 4, 5]])
    scores = torch.tensor([0.95, 0.90, 0.99, 0.92, 0.99, 0.91, 0.95])
    walked = build_tracks(6, edge_index, scores, 0.5, 3, "walkthrough")
    assert walked.tolist() == [0] * 6
    # A fake edge 2 -> 7 joining another track (6 7 8 9) at a junction: both tracks stay apart.
    fake = torch.tensor([[2, 6, 7, 8], [7, 7, 8, 9]])
    joined = torch.cat([edge_index, fake], dim=1)
    walked = build_tracks(
        10,
        joined,
        torch.cat([scores, torch.tensor([0.6, 0.97, 0.97, 0.97])]),
        0.5,
        3,
        "walkthrough",
    )
    assert walked.tolist() == [0] * 6 + [1] * 4
    assert build_tracks(10, joined, None, 0.5, 3, "components").tolist() == [0] * 10


def test_build_tracks_rejects_bad_input():
    edge_index = torch.tensor([[0, 1], [1, 2]])
    with pytest.raises(TrackGNNError, match="node indices"):
        build_tracks(2, edge_index, None)
    with pytest.raises(TrackGNNError, match=r"shape \[2, E\]"):
        build_tracks(3, torch.zeros(3, 2, dtype=torch.long), None)
    with pytest.raises(TrackGNNError, match="one per edge"):
        build_tracks(3, edge_index, torch.ones(3))
    with pytest.raises(TrackGNNError, match="unknown method"):
        build_tracks(3, edge_index, None, method="dbscan")
    with pytest.raises(TrackGNNError, match="min_length"):
        build_tracks(3, edge_index, None, min_length=0)


def test_build_tracks_empty_graph():
    labels = build_tracks(0, torch.empty(2, 0, dtype=torch.long), torch.empty(0))
    assert labels.shape == (0,)
    labels = build_tracks(4, torch.empty(2, 0, dtype=torch.long), torch.empty(0), min_length=1)
    assert labels.tolist() == [0, 1, 2, 3]


def test_submission_track_ids_give_unassigned_hits_their_own_track():
    ids = submission_track_ids(torch.tensor([-1, 0, 0, -1, 1, 1, -1]))
    assert ids.tolist() == [2, 0, 0, 3, 1, 1, 4]
    assert submission_track_ids(np.array([-1, -1])).tolist() == [0, 1]


def test_write_submission_covers_every_hit_of_the_event(tmp_path):
    path = tmp_path / "tracks" / "event000000001.csv"
    hit_id = torch.tensor([30, 10, 20, 40])
    labels = torch.tensor([0, 0, -1, -1])
    submission = write_submission(hit_id, labels, path, all_hit_ids=np.array([10, 20, 30, 40, 50]))
    read_back = pd.read_csv(path)
    pd.testing.assert_frame_equal(read_back, submission)
    assert read_back["hit_id"].tolist() == [10, 20, 30, 40, 50]
    track = dict(zip(read_back["hit_id"], read_back["track_id"], strict=True))
    assert track[10] == track[30]
    assert len({track[20], track[40], track[50], track[10]}) == 4
    assert (read_back["track_id"] >= 0).all()
    assert [p.name for p in path.parent.iterdir()] == [path.name]  # no temporary file left


def test_write_submission_rejects_inconsistent_input(tmp_path):
    path = tmp_path / "t.csv"
    with pytest.raises(TrackGNNError, match="differ in shape"):
        write_submission(np.array([1, 2]), np.array([0]), path)
    with pytest.raises(TrackGNNError, match="not unique"):
        write_submission(np.array([1, 1]), np.array([0, 0]), path)
    with pytest.raises(TrackGNNError, match="not in the event"):
        write_submission(np.array([1, 9]), np.array([0, 0]), path, all_hit_ids=np.array([1, 2]))
    assert not path.exists()
