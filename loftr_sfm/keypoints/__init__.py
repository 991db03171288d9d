"""Semi-dense matches -> one shared keypoint set per image (the merge), hloc-layout outputs.

Input (written by the matching stage or by any other matcher, "bring your own matcher"):
``output/pairs.txt`` and the raw ``output/matches.h5`` (per pair group ``keypoints0`` (N, 2),
``keypoints1`` (N, 2) float32, ``scores`` (N,) float32; original-image pixels, OpenCV
convention: integer = pixel centre).

Output: ``output/features.h5`` (per image ``keypoints`` (K, 2) float32, ``scores`` (K,)
float32, ``image_size`` (2,) int64 = (width, height)) and ``output/merged_matches.h5`` (per pair
group ``matches0`` (K0,) int32, index into image1's keypoints or -1, and ``matching_scores0``
(K0,) float32).

The rule (all steps vectorized with numpy, no per-match Python loop):

1. *Quantize*, streamed image by image: every observation (one side of one raw match) falls
   into a cell of ``cell_size`` px of its image; (image, cell) is a graph node whose position is
   the score-weighted mean of its observations. Node ids are assigned image by image with a
   dense cell table (no global sort), ordered by (image, y cell, x cell). Observations of the
   same physical point seen in several pairs land in the same node, so tracks form.
2. *Edges*: every raw match links two nodes (duplicates keep the best score).
3. *Tracks*: connected components of the node graph (a vectorized union-find). A component
   holding several nodes of one image violates "one keypoint per image per track". Tracks
   without such a conflict are final. In the conflicting ones, for each (track, image) group
   the node with the largest support (sum of incident edge scores) is the representative and
   nodes within ``max_error`` px of it are merged into it (the same point split by a cell border
   or by noise); then each pair is made one-to-one (an edge survives only if it is the best of
   both its nodes towards the other image). This repeats (at most ``max_rounds`` times) while it
   changes something; what still conflicts (far duplicates, outlier links) is rebuilt by a
   greedy, strongest-edge-first union that refuses any edge putting one image twice into a
   track (every conflicting track at once, one edge rank per step). Afterwards each track holds
   at most one node per image, which also makes every pair one-to-one.
4. *Budget*: per image at most ``max_keypoints`` nodes, ranked by number of matched images,
   then support, then node id (a selection per image, not a sort of all nodes).
5. *Output*: surviving nodes of each image sorted by (y, x) cell, matches per pair as indices.

Deterministic (no randomness; the result does not depend on sort stability), resumable (a
finished run whose inputs and configuration are unchanged is reused; ``features.h5`` is written
atomically and is written last, so an interrupted run is simply redone; ``matches0`` go to
``merged_matches.h5``, written atomically before it; ``matches.h5`` is only read).

Memory: the stage never holds the raw matches: :func:`merge_pairs` reads them image by image
(a pair at its first image; what its second image needs is kept within a budget, else read
again), keeps per raw match two int32 node ids and a float32 score, and per node 32 bytes
(image, float64 position and weight, count); the later steps work on these arrays with int32
temporaries where ids fit, in chunks where a whole-array temporary would be int64 or float64.
Speed and memory against hloc and at scale: docs/performance.md.

Modules: :mod:`.nodes` (steps 1-2), :mod:`.graph` (the graph primitives of steps 2-4),
:mod:`.merge` (the merge in memory), :mod:`.stage` (the stage: files, presets, resuming).
"""

from ..workspace import MERGED_MATCHES_FILE
from .graph import _components, _conflict_groups, _greedy_loop, _greedy_split  # noqa: F401 (tests use them)
from .merge import MergeResult, merge_matches, merge_pairs, track_stats
from .nodes import PairReader
from .stage import PRESETS, KeypointsConfig, read_features, read_matches, run_keypoints

__all__ = ["KeypointsConfig", "MergeResult", "PRESETS", "PairReader", "merge_matches", "merge_pairs", "run_keypoints",
           "read_features", "read_matches", "track_stats", "MERGED_MATCHES_FILE"]
