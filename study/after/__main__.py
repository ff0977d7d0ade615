"""`python -m study.after generate|fid|memorization`: use what a study trained, in the shapes of EDM's generate.py
and fid.py and DiffMemorize's mem_ratio.py. Exit 0, or one line on stderr saying what is wrong."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

MODEL_HELP = "a trial folder, a checkpoint or model folder, runs:/<run_id> or models:/<name>@<alias>"


def _generate_args(sub) -> None:
    p = sub.add_parser("generate", help="images of a trained model at chosen seeds")
    p.add_argument("--model", required=True, help=MODEL_HELP)
    p.add_argument("--outdir", required=True, help="a folder (one PNG per seed) or a file ending in .npz")
    p.add_argument("--seeds", default="0-63", help="seeds and inclusive ranges, e.g. 0-49999 or 0-9,60 (default 0-63)")
    p.add_argument("--subdirs", action="store_true", help="PNGs in subfolders of 1,000 (000000/, 001000/, ...)")
    p.add_argument("--steps", type=int, help="sampler steps (default: the trial's eval.sampler_steps)")
    weights = p.add_mutually_exclusive_group()
    weights.add_argument("--ema", dest="weights", action="store_const", const="ema", help="EMA weights (default)")
    weights.add_argument("--raw", dest="weights", action="store_const", const="raw", help="raw weights (a trial's checkpoint only)")
    p.add_argument("--batch", type=int, help="images per sampler batch (default 256, the trial's: the same batch, the same bits)")
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    p.add_argument("--threads", type=int, help="torch CPU threads (default: the trial's runtime.threads)")
    p.add_argument("--tracking-uri", help="the MLflow store of a runs:/ or models:/ model (default $MLFLOW_TRACKING_URI)")


def _fid_args(sub) -> None:
    p = sub.add_parser("fid", help="FID of a folder or .npz against a dataset's reference statistics or another folder")
    p.add_argument("--images", required=True, help="a folder of images or an .npz (arr_0: uint8 [N, H, W, C])")
    p.add_argument("--ref", required=True, help="a dataset, DATASET:train (default) or DATASET:test, or a folder / .npz")
    p.add_argument("--features", help="feature network (default: the dataset's own, as its trials use)")
    p.add_argument("--num", type=int, help="use the first NUM images (default: all)")
    p.add_argument("--full", action="store_true", help="the full protocol: 50,000 images against the training split, or refuse")
    p.add_argument("--data-path", help="the dataset's files (cifar10, image_folder)")
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    p.add_argument("--json", help="also write the result to this JSON file")


def _memorization_args(sub) -> None:
    p = sub.add_parser("memorization", help="how many samples copy a training set (nearest / second-nearest < 1/3)")
    p.add_argument("--samples", required=True, help="a folder of images or an .npz")
    train = p.add_mutually_exclusive_group(required=True)
    train.add_argument("--model", help=f"audit against this model's own training images ({MODEL_HELP})")
    train.add_argument("--dataset", help="audit against a dataset's training images (with --images or --fraction)")
    train.add_argument("--train", help="audit against a folder of training images")
    p.add_argument("--images", type=int, help="with --dataset: the regime's image count, drawn as the study draws it")
    p.add_argument("--fraction", type=float, help="with --dataset: the regime's fraction of the training pool")
    p.add_argument("--subset-seed", type=int, default=0, help="with --dataset: the study's subset seed (default 0)")
    p.add_argument("--data-path", help="the dataset's files (cifar10, image_folder)")
    p.add_argument("--ratio", type=float, help="copy when nearest < RATIO x second-nearest (default 1/3, the study's)")
    p.add_argument("--num", type=int, help="audit the first NUM samples (default: all)")
    p.add_argument("--json", help="write the report (overall, per class, per sample) to this file")
    p.add_argument("--figure", help="write samples beside their nearest training images, labelled, to this PNG")
    p.add_argument("--tracking-uri", help="the MLflow store of a runs:/ or models:/ model (default $MLFLOW_TRACKING_URI)")


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m study.after", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    for add in (_generate_args, _fid_args, _memorization_args):
        add(sub)
    return parser.parse_args(argv)


def _run_generate(args) -> str:
    from study.after.generate import generate
    from trainables.generation import parse_seeds

    seeds = parse_seeds(args.seeds)
    done = generate(args.model, Path(args.outdir), seeds, args.steps, args.subdirs,
                    {"weights": args.weights or "ema", "batch": args.batch, "device": args.device, "threads": args.threads,
                     "tracking_uri": args.tracking_uri})
    model = done.model
    return (f"{done.written} images written to {done.outdir} in {done.seconds:.1f} s ({done.skipped} already there); "
            f"{model.config.dataset} model, {model.weights} weights at kimg {model.kimg:g}, "
            f"{args.steps or model.config.eval.sampler_steps} sampler steps")


def _run_fid(args) -> str:
    from study.after.fid import fid

    result = fid(Path(args.images), args.ref, args.features, args.num, args.full, {"data_path": args.data_path, "device": args.device})
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=1))
    floor = f", real-vs-real floor {result['fid_floor']:.4g} at N={result['floor_num_samples']}" if "fid_floor" in result else ""
    return (f"fid {result['fid']:.6g} ({result['protocol']}; feature network {result['feature_network']}, "
            f"{result['num_samples']} images vs {result['reference']} ({result['reference_images']} images){floor})")


def _run_memorization(args) -> str:
    from study.after.memorization import audit, write_outputs

    train = {"model": args.model, "tracking_uri": args.tracking_uri, "dataset": args.dataset, "images": args.images,
             "fraction": args.fraction, "subset_seed": args.subset_seed, "data_path": args.data_path, "folder": args.train}
    report, pictures = audit(Path(args.samples), train, args.ratio, args.num)
    write_outputs(report, pictures, args.json and Path(args.json), args.figure and Path(args.figure))
    classes = report.get("memorization_class", {})
    per_class = "; per class " + ", ".join(f"{k}: {v['memorization']:.3f}" for k, v in classes.items()) if classes else ""
    return (f"memorization {report['memorization']:.4f}: {report['copies']} of {report['num_samples']} samples copy "
            f"{report['training_set']} (ratio < {report['ratio_threshold']:.3g}){per_class}")


def main(argv=None) -> int:
    from study.after.fid import ProtocolError
    from study.tracking.models import ModelSourceError
    from trainables.data import DatasetError
    from trainables.model_file import ModelFileError
    from trainables.sample_files import SampleFilesError

    args = parse_args(argv)
    run = {"generate": _run_generate, "fid": _run_fid, "memorization": _run_memorization}[args.command]
    try:
        print(run(args))
    except (ModelFileError, ModelSourceError, DatasetError, SampleFilesError, ProtocolError, ValueError, OSError) as err:
        print(f"error: {str(err).splitlines()[0] if str(err) else type(err).__name__}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted; run the same command again to continue", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
