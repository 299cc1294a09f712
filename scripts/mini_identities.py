"""The identities of a mini preset without building it: how many, from videos or only photos, per split.

It runs the build's own planning (faces found in every source, clips cut, identities placed in splits with
the build's seed), so a real build has these identities less any whose clips then fail landmark tracking.
Usage: python scripts/mini_identities.py [--preset demo] [--seed 0]
"""

from __future__ import annotations

import argparse

import numpy as np

from megatron_utils.core.assets import fetch_many
from megatron_utils.datasets.mini.presets import get_preset
from megatron_utils.datasets.mini.sources import discover_clips, split_groups
from megatron_utils.datasets.mini.splits import SPLITS, assign_identities, identity_clips


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="demo")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    preset = get_preset(args.preset)
    fetch_many(list(preset.sources))
    clips, skipped = discover_clips(preset, args.seed)
    filmed = {c.identity for c in clips if c.kind == "video"}
    # plan_splits' first draw from its generator places the identities: the same draw here
    by_identity = identity_clips({c.clip_id: c.identity for c in clips})
    split_of = assign_identities(by_identity, preset.split_fractions, np.random.default_rng(args.seed),
                                 split_groups(clips))
    print(f"{args.preset} (seed {args.seed}): {len(split_of)} identities, {len(filmed)} filmed (video), "
          f"{len(split_of) - len(filmed)} from photos only; {len(clips)} clips")
    for split in SPLITS:
        members = [i for i, s in split_of.items() if s == split]
        videos = sum(i in filmed for i in members)
        print(f"  {split}: {len(members)} identities ({videos} video, {len(members) - videos} photo), "
              f"{sum(c.identity in members for c in clips)} clips")
    for asset, reason in sorted(skipped.items()):
        print(f"  skipped {asset}: {reason}")


if __name__ == "__main__":
    main()
