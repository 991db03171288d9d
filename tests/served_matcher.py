"""Test double shared by the end-to-end tests: a matcher backend that serves a synthetic scene's exact raw matches.

Options (JSON ``matcher_options``): ``source`` the raw matches file; ``weak`` an image whose pairs keep only
``keep`` matches (registered on few points); ``chance`` pairs "a b;c d" that get 30 random matches (images that do
not overlap); ``names`` JSON {image name: its name in the source}; ``unknown`` what a pair missing from the source
gets: ``error`` (KeyError) or ``random`` (12 random matches, too few to verify); ``strip_prefix`` removed from the
first name of a pair before the lookup (a query named like a map photo gets that photo's matches).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import ClassVar

import h5py
import numpy as np

from loftr_sfm.io import find_pair
from loftr_sfm.matchers import InputSpec, MatcherBackend, PairMatches, register_matcher


@dataclass
class ServedOptions:
    source: str = ""
    weak: str | None = None
    keep: int = 25
    chance: str = ""
    names: str = ""
    unknown: str = "error"
    strip_prefix: str = ""


class ServedMatcher(MatcherBackend):
    """Serves ``source``'s raw matches by pair name (see the module docstring); ``calls`` records every pair."""

    name = "served"
    Options = ServedOptions
    calls: ClassVar[list[tuple[str, str]]] = []

    def __init__(self, options: ServedOptions | None = None, device: str = "cpu") -> None:
        super().__init__(device)
        self.options = options or ServedOptions()
        self.spec = InputSpec(grayscale=True, max_side=None)

    def match(self, image0, image1, size0, size1, names0=None, names1=None):
        o = self.options
        renamed = json.loads(o.names or "{}")
        chance = {tuple(sorted(p.split())) for p in o.chance.split(";") if p}
        out = []
        with h5py.File(o.source, "r") as f:
            for a, b, s0, s1 in zip(names0, names1, size0, size1):
                ServedMatcher.calls.append((a, b))
                a0 = a.removeprefix(o.strip_prefix) if o.strip_prefix else a
                try:
                    key, rev = find_pair(f, renamed.get(a0, a0), renamed.get(b, b))
                except KeyError:
                    if o.unknown != "random":
                        raise
                    rng = np.random.default_rng(len(a0) + 7 * len(b))
                    k0 = (rng.random((12, 2)) * np.asarray(s0, np.float32)).astype(np.float32)
                    k1 = (rng.random((12, 2)) * np.asarray(s1, np.float32)).astype(np.float32)
                    out.append(PairMatches(k0, k1, np.full(12, 0.5, np.float32)))
                    continue
                k0, k1, sc = (f[key][d][()] for d in ("keypoints0", "keypoints1", "scores"))
                if rev:
                    k0, k1 = k1, k0
                if o.weak in (a, b):
                    k0, k1, sc = k0[: o.keep], k1[: o.keep], sc[: o.keep]
                if tuple(sorted((a, b))) in chance:  # a few random matches: too few to verify
                    rng = np.random.default_rng(len(ServedMatcher.calls) - 1)
                    keep = rng.choice(len(k0), 30, replace=False)  # spread over image0 (not degenerate)
                    k0, sc = k0[keep], sc[keep]
                    k1 = (rng.random((30, 2)) * np.asarray(s1, np.float32)).astype(np.float32)
                out.append(PairMatches(k0, k1, sc))
        return out


def register() -> None:
    """Register the backend as ``served`` (again: tests may run in any order)."""
    register_matcher("served", ServedMatcher, overwrite=True)
