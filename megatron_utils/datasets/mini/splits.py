"""Identity-disjoint train/val/test splits in the FF++ format, and the fakes each split gets.

FF++ lists each split as pairs [a, b] of original ids; the fakes a_b (target a, source b) and b_a belong to
the same split. Here every clip of one person lands in one split, pairs join clips of different people, and
a share of each split's pairs is manipulated by every method (SelfBlend makes a_a and b_b). The pairs whose
two faces turn the same way are manipulated first: a landmark warp between a frontal and a profile face
only makes a smear.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

SPLITS = ("train", "val", "test")


@dataclass(frozen=True)
class FakeSpec:
    method: str
    target: str
    source: str
    split: str

    @property
    def name(self) -> str:
        return f"{self.target}_{self.source}"


def assign_identities(clips_by_identity: dict[str, list[str]], fractions: tuple[float, float, float],
                      rng: np.random.Generator, split_group: dict[str, str]) -> dict[str, str]:
    """Identity -> split. `split_group` maps identities that must share a split (the people of a group
    photo, whose crops show their neighbours, and anyone linked to them through other photos) to a common key;
    others stand alone. Largest groups first
    (random order among equals), each to the split furthest below its target share, so a person with many
    clips cannot swamp val or test."""
    members: dict[str, list[str]] = {}
    for identity in sorted(clips_by_identity):
        members.setdefault(split_group.get(identity, identity), []).append(identity)
    size = {group: sum(len(clips_by_identity[i]) for i in ids) for group, ids in members.items()}
    tiebreak = dict(zip(sorted(members), rng.permutation(len(members)), strict=True))
    order = sorted(members, key=lambda g: (-size[g], tiebreak[g]))
    counts = dict.fromkeys(SPLITS, 0)
    assignment = {}
    for group in order:
        split = min(SPLITS, key=lambda s: counts[s] / fractions[SPLITS.index(s)])
        assignment.update(dict.fromkeys(members[group], split))
        counts[split] += size[group]
    for split in SPLITS:
        identities = [i for i, s in assignment.items() if s == split]
        if len(identities) < 2:
            raise ValueError(f"split {split!r} got {len(identities)} identities; a split needs at least 2 "
                             f"(have {len(clips_by_identity)} identities in {len(members)} split groups)")
    return assignment


def pair_clips(clip_identity: dict[str, str], rng: np.random.Generator) -> list[tuple[str, str]]:
    """Pairs of clips of different people covering every clip; a clip left over (odd count, or one person
    with too many clips) is paired a second time with a clip of someone else."""
    remaining: dict[str, list[str]] = {}
    for clip in rng.permutation(sorted(clip_identity)).tolist():
        remaining.setdefault(clip_identity[clip], []).append(clip)
    pairs = []
    while sum(len(c) > 0 for c in remaining.values()) >= 2:
        first, second = sorted((i for i in remaining if remaining[i]), key=lambda i: -len(remaining[i]))[:2]
        pairs.append((remaining[first].pop(), remaining[second].pop()))
    for leftover in [clip for clips in remaining.values() for clip in clips]:
        partners = sorted(c for c in clip_identity if clip_identity[c] != clip_identity[leftover])
        pairs.append((leftover, partners[int(rng.integers(len(partners)))]))
    return pairs


def identity_clips(clip_identity: dict[str, str]) -> dict[str, list[str]]:
    """Identity -> its clips, sorted."""
    by_identity: dict[str, list[str]] = {}
    for clip, identity in sorted(clip_identity.items()):
        by_identity.setdefault(identity, []).append(clip)
    return by_identity


def plan_splits(clip_identity: dict[str, str], clip_yaw: dict[str, float],
                fractions: tuple[float, float, float], manipulated: tuple[float, float, float],
                methods: list[str], self_methods: set[str], seed: int, split_group: dict[str, str],
                ) -> tuple[dict[str, list[tuple[str, str]]], list[FakeSpec]]:
    """The pairs of every split and the fakes to build; `clip_yaw` is a head-turn measure per clip,
    `manipulated` the share of each split's pairs that get fakes and `split_group` keeps identities
    together (see `assign_identities`)."""
    rng = np.random.default_rng(seed)
    identity_split = assign_identities(identity_clips(clip_identity), fractions, rng, split_group)
    pairs: dict[str, list[tuple[str, str]]] = {}
    fakes: list[FakeSpec] = []
    for split in SPLITS:
        members = {c: i for c, i in clip_identity.items() if identity_split[i] == split}
        pairs[split] = sorted(pair_clips(members, rng))
        n_manipulated = max(1, round(manipulated[SPLITS.index(split)] * len(pairs[split])))
        mismatch = [abs(clip_yaw[a] - clip_yaw[b]) + 0.05 * rng.random() for a, b in pairs[split]]
        chosen = np.argsort(mismatch, kind="stable")[:n_manipulated]
        for a, b in sorted(pairs[split][i] for i in chosen):
            for method in methods:
                for target, source in ((a, b), (b, a)):
                    source = target if method in self_methods else source
                    fakes.append(FakeSpec(method, target, source, split))
    return pairs, list(dict.fromkeys(fakes))  # a clip in two chosen pairs gets one SelfBlend fake
