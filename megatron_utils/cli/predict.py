"""`megatron predict`: score videos and images with a trained run; verdicts, timelines, annotated copies."""

from __future__ import annotations

import argparse
import glob
from pathlib import Path

from ..inference.predict import PredictConfig
from ..preprocessing.video import is_image, is_video
from .options import add_config_options

EPILOG = """\
inputs: files, folders (searched recursively for videos and images) and glob patterns ("clips/**/*.mp4").
Every input gets one line (and one JSONL/CSV record): its verdict under the run's decision threshold, or the
reason it could not be scored; one bad file never stops the others.

exit status: 0 when every input was scored, 1 when some inputs failed, 2 for a usage error (no input
matched, missing run or checkpoint, weights other than the training ones, bad arguments)."""


def expand_inputs(patterns: list[str]) -> list[Path]:
    """Files as given, folders expanded to the videos and images inside them (recursively, sorted), glob
    patterns expanded; an argument matching nothing is kept, so it gets a failure record of its own."""
    found: list[Path] = []
    for pattern in patterns:
        path = Path(pattern)
        matches = [path] if path.exists() else [Path(p) for p in sorted(glob.glob(pattern, recursive=True))]
        if not matches:
            found.append(path)
        for match in matches:
            if match.is_dir():
                found += sorted(p for p in match.rglob("*") if p.is_file() and (is_video(p) or is_image(p)))
            else:
                found.append(match)
    return list(dict.fromkeys(found))


def output_stems(paths: list[Path]) -> list[str]:
    """A file stem per input for the --annotate/--plot outputs, numbered where two inputs share a name."""
    stems: list[str] = []
    for path in paths:
        stem, number = path.stem, 2
        while stem in stems:
            stem, number = f"{path.stem}-{number}", number + 1
        stems.append(stem)
    return stems


def describe(prediction) -> str:
    if not prediction.ok:
        return f"FAILED       {prediction.error}"
    face = prediction.deciding_face()
    box = ",".join(f"{v:.0f}" for v in prediction.face_box)
    return (f"{prediction.verdict:<9} {prediction.fake_probability:.3f}  {prediction.path}  "
            f"face {face.track} of {len(prediction.faces)} at ({box})  "
            f"{face.frames_used} frames, {len(face.windows)} windows  "
            f"{prediction.timings['total']:.1f}s")


def run(args: argparse.Namespace) -> int:
    from tqdm.auto import tqdm

    from ..inference.predict import (
        Detector,
        annotate_image,
        annotate_video,
        plot_timeline,
        write_csv,
        write_jsonl,
    )

    if any(not pattern.strip() for pattern in args.inputs):  # Path("") is the current folder: never meant
        raise ValueError("an input is an empty string (an unset shell variable?); name files, folders or "
                         "patterns")
    paths = expand_inputs(args.inputs)
    if not any(path.exists() for path in paths):
        raise FileNotFoundError(f"no input matched: {' '.join(args.inputs)}")
    checkpoint = args.run / args.checkpoint if args.checkpoint else args.run
    detector = Detector.from_pretrained(checkpoint, args.device, args.depth_model, args.rgb_weights,
                                        args.depth_weights, **args.options.given(args))
    predictions = []
    stems = output_stems(paths)
    folders = None if args.explain is None else [args.explain / stem for stem in stems]
    for prediction, stem in zip(detector.predict_many(paths, explain=folders), stems, strict=True):
        predictions.append(prediction)
        tqdm.write(describe(prediction))
        if not prediction.ok:
            continue
        explained = prediction.explanation
        heatmaps = None if explained is None else Path(explained.folder) / explained.heatmaps
        if args.annotate is not None:
            if prediction.media == "video":
                annotate_video(prediction, args.annotate / f"{stem}.mp4", heatmaps=heatmaps)
            else:
                annotate_image(prediction, args.annotate / f"{stem}.png", heatmaps=heatmaps)
        if args.plot is not None:
            plot_timeline(prediction, args.plot / f"{stem}.png")
    failed = sum(not p.ok for p in predictions)
    print(f"scored {len(predictions) - failed} of {len(predictions)} inputs ({failed} failed); "
          f"decision: {detector.decision.meaning()}")
    for name, source in detector.weights.items():
        print(f"{name.replace('_', ' ')}: {source}")
    for writer, out in ((write_jsonl, args.jsonl), (write_csv, args.csv)):
        if out is not None:
            print(f"wrote {writer(predictions, out)}")
    for name, folder in (("annotated media", args.annotate), ("timelines", args.plot),
                         ("explanations", args.explain)):
        if folder is not None:
            print(f"{name}: {folder}")
    return 1 if failed else 0


def register(commands: argparse._SubParsersAction) -> None:
    parser = commands.add_parser("predict", help="score videos and images with a trained run",
                                 epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("inputs", nargs="+", metavar="PATH", help="video/image files, folders, glob patterns")
    parser.add_argument("--run", type=Path, required=True, metavar="RUN_DIR", help="run folder of `megatron "
                        "train` (its preprocess.json gives the preprocessing)")
    parser.add_argument("--checkpoint", default="best", help="checkpoint folder inside the run "
                        "(default: best)")
    parser.add_argument("--jsonl", type=Path, help="write every prediction (faces, windows, timelines) here")
    parser.add_argument("--csv", type=Path, help="write one row per input here")
    parser.add_argument("--annotate", type=Path, metavar="DIR", help="write annotated videos (MP4) and "
                        "images (PNG) with face boxes and running scores into DIR")
    parser.add_argument("--plot", type=Path, metavar="DIR", help="write per-frame probability plots into DIR")
    parser.add_argument("--explain", type=Path, metavar="DIR", help="explain each verdict into DIR/<name>/: "
                        "which frames drove it (Integrated Gradients) and Grad-CAM heat maps of the deciding "
                        "frames; adds an `explanation` field to the JSONL and the heat maps to --annotate")
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:1, ...")
    parser.add_argument("--depth-model", metavar="PATH", help="local copy of the run's depth model (a "
                        "save_pretrained folder); its weights must be the training ones")
    parser.add_argument("--rgb-weights", metavar="PATH", help="local copy of the RGB backbone's weights")
    parser.add_argument("--depth-weights", metavar="PATH", help="local copy of the depth backbone's weights")
    coverage = parser.add_argument_group("coverage (PredictConfig; none: the run's own clips per video and "
                                         "batch sizes, at least half of T frames)")
    parser.set_defaults(handler=run, options=add_config_options(coverage, PredictConfig))
