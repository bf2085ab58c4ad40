"""Physics evaluation: matching, track- and edge-level metrics, the TrackML score, the report.

The report (:mod:`trackgnn.evaluation.report`, with plots) is imported on its own so that using the
metrics does not load matplotlib.
"""

from trackgnn.evaluation.matching import EvaluationCuts, EventMatch, event_counts, match_event
from trackgnn.evaluation.metrics import (
    aggregate_edge_metrics,
    aggregate_track_metrics,
    edge_metrics,
    efficiency_table,
    event_track_metrics,
    roc_auc,
)
from trackgnn.evaluation.score import count_pairs, trackml_score

__all__ = [
    "EvaluationCuts",
    "EventMatch",
    "aggregate_edge_metrics",
    "aggregate_track_metrics",
    "count_pairs",
    "edge_metrics",
    "efficiency_table",
    "event_counts",
    "event_track_metrics",
    "match_event",
    "roc_auc",
    "trackml_score",
]
