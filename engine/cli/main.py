"""``lantern-engine``: the engine from the command line (explain, bundle, bench, train-demo, export,
quantize, evaluate, batch, listen)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from engine.errors import LanternError
from engine.resources import DEMO_MODEL
from engine.cam import DEFAULT_METHOD, METHOD_NAMES
from engine.uncertainty import DEFAULT_SAMPLES, DEFAULT_THRESHOLD



def _add_model_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", type=Path, default=DEMO_MODEL, help="model bundle folder (default: the demo model)")
    p.add_argument("--engine", default="auto", help="torch, onnx, onnx-int8 or auto (default: fastest available)")


def _add_batch_parser(sub) -> None:
    p = sub.add_parser("batch", help="triage a folder or DICOMDIR: worklist CSV + per-image results (resumable)")
    p.add_argument("source", type=Path, nargs="?", help="folder (searched recursively) or DICOMDIR")
    p.add_argument("--files-from", type=Path, default=None, metavar="LIST",
                   help="instead of a folder: a text file naming the images, one path per line")
    p.add_argument("--ray", nargs="?", const="local", default=None, metavar="ADDRESS",
                   help="compute on Ray (docs/cluster.md): alone, a local instance on this machine; with the "
                        "address of a running cluster (host:port, or auto), on its nodes")
    p.add_argument("--ray-workers", type=int, default=None, metavar="N",
                   help="with --ray: worker processes, each opening the model once (default: one per CPU of the "
                        "cluster)")
    p.add_argument("--out", type=Path, required=True, help="output folder (not inside the source folder)")
    _add_model_args(p)
    p.add_argument("--method", default=None, choices=METHOD_NAMES,
                   help=f"also make maps with this method (default: none for plain triage, {DEFAULT_METHOD} when exporting)")
    p.add_argument("--mc", type=int, default=DEFAULT_SAMPLES, help="Monte-Carlo dropout samples for the confidence (0: none)")
    p.add_argument("--threshold", type=float, default=DEFAULT_THRESHOLD, help="flag images whose confidence is below this")
    p.add_argument("--png", action="store_true", help="write the side-by-side picture of each image")
    p.add_argument("--dicom", action="store_true",
                   help="write each explanation as DICOM objects in the source's study: an RGB Secondary Capture, "
                        "a Parametric Map per class and a TID 1500 structured report (--dicom-objects picks)")
    p.add_argument("--dicom-objects", default=None, metavar="KINDS",
                   help="which DICOM objects to write, comma-separated from sc,pm,sr (sc: secondary capture, pm: "
                        "parametric maps, sr: structured report; default all three; implies --dicom)")
    p.add_argument("--report", action="store_true", help="write a one-page HTML report per study")
    p.add_argument("--anonymize", action="store_true",
                   help="pseudonymize patient IDs and strip identifying attributes from exports and the worklist")


def _add_listen_parser(sub) -> None:
    p = sub.add_parser("listen", help="a DICOM node: receive images (C-STORE, C-ECHO) into an inbox and triage them "
                       "as they arrive, into the same outputs as batch")
    p.add_argument("--ae", default="LANTERN", help="this node's AE title (default: LANTERN)")
    p.add_argument("--port", type=int, default=11112, help="TCP port (default: 11112; 0: any free port)")
    p.add_argument("--bind", default="127.0.0.1",
                   help="address to listen on (default: 127.0.0.1, this machine only; 0.0.0.0: every interface)")
    p.add_argument("--inbox", type=Path, required=True, help="folder the received images are written to")
    p.add_argument("--out", type=Path, required=True, help="output folder (not inside the inbox)")
    p.add_argument("--allow", nargs="+", action="extend", default=[], metavar="AE",
                   help="calling AE titles that may send (required unless --allow-any)")
    p.add_argument("--allow-host", nargs="+", action="extend", default=[], metavar="ADDR",
                   help="peer addresses or networks (10.0.0.0/8) that may send (default: any that can reach --bind)")
    p.add_argument("--allow-any", action="store_true", help="accept any calling AE title")
    p.add_argument("--min-free-mb", type=float, default=500,
                   help="refuse images (out of resources) rather than leave less free space than this in the inbox")
    p.add_argument("--dicom-objects", default=None, metavar="KINDS",
                   help="also write each received image's explanation as DICOM objects into --out/dicom: "
                        "comma-separated from sc,pm,sr (secondary capture, parametric maps, structured report)")
    p.add_argument("--send-to", default=None, metavar="AE@HOST:PORT",
                   help="send those objects (all three unless --dicom-objects) to this node by C-STORE, e.g. "
                        "back to the PACS, into the source's study")
    p.add_argument("--tls-cert", type=Path, help="TLS: this node's certificate (PEM)")
    p.add_argument("--tls-key", type=Path, help="TLS: its private key (PEM)")
    p.add_argument("--tls-ca", type=Path, help="TLS: CA certificates a sender's certificate must be signed by "
                   "(makes client certificates required)")
    _add_model_args(p)
    p.add_argument("--mc", type=int, default=DEFAULT_SAMPLES, help="Monte-Carlo dropout samples for the confidence (0: none)")
    p.add_argument("--threshold", type=float, default=DEFAULT_THRESHOLD, help="flag images whose confidence is below this")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="lantern-engine", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    from engine.cli.network_commands import add_network_parsers

    add_network_parsers(sub)  # query, retrieve, send
    from engine.cli.serve_command import add_serve_parser

    add_serve_parser(sub)  # serve: the analysis over HTTP
    from engine.cli.train_command import add_train_parser

    add_train_parser(sub)  # train: fine-tune on a labelled folder into a bundle

    p = sub.add_parser("explain", help="analyse images; write result.json and one overlay PNG per class")
    p.add_argument("files", nargs="*", type=Path, help="images, each analysed on its own")
    p.add_argument("--input", action="append", default=[], metavar="NAME=FILE", dest="inputs",
                   help="one image of a case for a multi-input model, once per input (e.g. --input PA=pa.dcm "
                        "--input LAT=lat.dcm): one result.json for the case, overlays per input and class")
    p.add_argument("--out", type=Path, required=True)
    _add_model_args(p)
    p.add_argument("--method", default=DEFAULT_METHOD, choices=METHOD_NAMES, help="explanation method")
    p.add_argument("--mc", type=int, default=DEFAULT_SAMPLES, help="Monte-Carlo dropout samples (0: none)")
    p.add_argument("--frame", type=int, default=0, help="frame of a multi-frame file (from 0)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--faithfulness", choices=("predicted", "all"), default=None,
                   help="also score the maps' faithfulness (deletion/insertion AUC, docs/trust.md) for the "
                        "predicted class or all classes, into result.json")

    _add_batch_parser(sub)
    _add_listen_parser(sub)

    p = sub.add_parser("bundle", help="wrap a trained torchvision state dict, or a Hugging Face or timm checkpoint "
                       "folder (--from), into a model bundle")
    p.add_argument("--from", dest="source", type=Path, default=None, metavar="DIR",
                   help="a Hugging Face or timm checkpoint folder (config.json + model.safetensors): the bundle keeps "
                   "its files, takes classes, input size and preprocessing from it, and is exported to ONNX "
                   "(instead of --arch, --weights, --classes and the input options)")
    p.add_argument("--no-export", action="store_true", help="with --from: do not export to ONNX")
    p.add_argument("--arch", help="a torchvision classifier: resnet18/34/50/101/152, resnext*, "
                   "wide_resnet*, densenet121/161/169/201, efficientnet_b0..b7, efficientnet_v2_s/m/l, "
                   "convnext_tiny/small/base/large, mobilenet_v2, mobilenet_v3_small/large, regnet_x_*, "
                   "regnet_y_*, vit_b_16/b_32/l_16/l_32/h_14, swin_t/s/b, swin_v2_t/s/b (docs/model-bundle.md "
                   "lists them all)")
    p.add_argument("--weights", type=Path, help=".safetensors, or a .pt/.pth state dict")
    p.add_argument("--classes", help="comma-separated class names, in output order")
    p.add_argument("--out", type=Path, required=True, help="new bundle folder")
    p.add_argument("--name")
    p.add_argument("--version", default="1.0.0")
    p.add_argument("--channels", type=int, default=3)
    p.add_argument("--size", type=int, nargs="+", default=[224], help="input size: S or H W")
    p.add_argument("--resize", default="letterbox", help="stretch, letterbox or center_crop")
    p.add_argument("--intensity", default="percentile", help="percentile, window, minmax or unit8")
    p.add_argument("--normalization", default=None, help="imagenet or xray (default by channels)")
    p.add_argument("--dropout", type=float, default=0.2, help="head dropout used for MC uncertainty")
    p.add_argument("--target-layer", default=None, help="layer to explain (default: last conv block)")
    p.add_argument("--intended-use", default="")

    p = sub.add_parser("bench", help="time plain forward vs full analysis on the demo model, a bundle or "
                       "torchvision architectures")
    _add_model_args(p)
    p.add_argument("--arch", nargs="+", default=None, metavar="NAME",
                   help="instead of --model: for each torchvision architecture named (or 'families': one per "
                   "family), a random-weight 3 x 224 x 224 bundle in a temporary folder, exported and quantized, "
                   "each engine timed and compared with a plain onnxruntime INT8 classifier")
    p.add_argument("--ood", action="store_true",
                   help="instead: how well the out-of-distribution check separates held-out phantoms from "
                   "pydicom's test images and other phantoms (AUROC, shares flagged, cost; default engine onnx-int8)")
    p.add_argument("--listen", action="store_true",
                   help="instead: the listener (listen) receiving --instances demo images from 4 storescu at once "
                   "and analysing them: images received and analysed per second (default engine onnx-int8)")
    p.add_argument("--instances", type=int, default=400, help="with --listen: images to send")
    p.add_argument("--batch-ray", action="store_true",
                   help="instead: batch images/s locally and on a local Ray instance with 1 and 2 workers, and "
                   "Lantern's overhead per image there (docs/cluster.md; default engine onnx-int8)")
    p.add_argument("--images", type=int, default=200, help="with --batch-ray: demo radiographs to batch")
    p.add_argument("--service", action="store_true",
                   help="instead: the HTTP service (serve) against analysing in process: requests/s and p50/p95 "
                   "latency of /classify and /explain with 1 and 4 clients, and its overhead (default engine onnx-int8)")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.add_argument("--repeats", type=int, default=30)
    p.add_argument("--package", type=Path, default=None,
                   help="packaged app folder whose size to report (default: dist/lantern of this checkout)")

    p = sub.add_parser("export", help="write the bundle's model as ONNX (explain graph + MC-dropout head), verified")
    p.add_argument("bundle", type=Path, help="model bundle folder")
    p.add_argument("--verify", type=int, default=8, help="held-out phantoms to verify against PyTorch")

    p = sub.add_parser("quantize", help="write a validated INT8 ONNX model (after export)")
    p.add_argument("bundle", type=Path, help="model bundle folder")
    p.add_argument("--calibration", type=int, default=100, help="calibration phantoms (static quantization)")
    p.add_argument("--validate", type=int, default=60, help="held-out phantoms to validate against fp32")
    p.add_argument("--dynamic", action="store_true", help="dynamic instead of static quantization")
    p.add_argument("--drop-fp32", action="store_true",
                   help="then remove the fp32 model from the bundle (ship int8 + head only)")

    p = sub.add_parser("evaluate", help="metrics, ROC, confusion, reliability and pointing game on a labelled "
                       "folder; writes metrics.json and PNG figures")
    p.add_argument("dir", type=Path, help="folder with the images and the labels CSV")
    p.add_argument("--labels", type=Path, default=Path("labels.csv"),
                   help="labels CSV (file,class[,mask]), relative to DIR or absolute (default: labels.csv)")
    p.add_argument("--out", type=Path, default=Path("evaluations"), help="where the results folder is made")
    p.add_argument("--fit-temperature", action="store_true",
                   help="fit temperature scaling on this folder and store it in the bundle")
    p.add_argument("--fit-ood", action="store_true",
                   help="fit the out-of-distribution check on this folder's images (in distribution, labelled) and "
                        "store it in the bundle (ood.safetensors)")
    p.add_argument("--ood-percentile", type=float, default=99.0,
                   help="with --fit-ood: the share of in-distribution images scored below the threshold, in %%")
    _add_model_args(p)

    p = sub.add_parser("train-demo", help="re-train the demo model on synthetic phantoms")
    p.add_argument("--out", type=Path, default=DEMO_MODEL)
    p.add_argument("--epochs", type=int, default=6)
    p.add_argument("--per-epoch", type=int, default=3000)
    p.add_argument("--precision", choices=("auto", "bf16", "fp32"), default="auto",
                   help="auto: bfloat16 autocast where the CPU has it in hardware (AVX512-BF16/AMX), else float32")
    p.add_argument("--evaluate-only", action="store_true",
                   help="do not train: measure the existing bundle again and update its model card")
    return parser


def _bundle_from(args: argparse.Namespace) -> int:
    """``bundle --from DIR``: everything but the name, dropout and explained layer comes from the
    checkpoint, so the torchvision options are refused rather than silently ignored."""
    from engine.making.checkpoint_bundle import bundle_from_checkpoint

    defaults = build_parser().parse_args(["bundle", "--from", ".", "--out", "."])
    given = [name for name in ("arch", "weights", "classes", "channels", "size", "resize", "intensity",
                               "normalization") if getattr(args, name) != getattr(defaults, name)]
    if given:
        raise LanternError(f"with --from, the architecture, classes, weights and input come from the checkpoint's "
                           f"own files; leave out {', '.join('--' + name for name in given)}")
    bundle_from_checkpoint(args.source, args.out, name=args.name, version=args.version, dropout=args.dropout,
                           target_layer=args.target_layer, intended_use=args.intended_use,
                           export=not args.no_export, log=lambda m: print(m, file=sys.stderr))
    return 0


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        if getattr(args, "run", None) is not None:  # commands that name their own handler
            return args.run(args)
        if args.command == "explain":
            from engine.cli.commands import explain_files

            return explain_files(args)
        if args.command == "batch":
            from engine.cli.batch_command import batch_command

            return batch_command(args)
        if args.command == "listen":
            from engine.cli.listen_command import listen_command

            return listen_command(args)
        if args.command == "bundle":
            if args.source is not None:
                return _bundle_from(args)
            if not (args.arch and args.weights and args.classes):
                raise LanternError("bundle needs --arch, --weights and --classes (a torchvision state dict), "
                                   "or --from DIR (a Hugging Face or timm checkpoint folder)")
            from engine.cli.commands import bundle_command

            return bundle_command(args)
        if args.command == "bench":
            from engine.cli.bench import bench_command

            return bench_command(args)
        if args.command == "export":
            from engine.making.onnx_export import export_bundle

            export_bundle(args.bundle, verify_images=args.verify, log=lambda m: print(m, file=sys.stderr))
            return 0
        if args.command == "quantize":
            from engine.making.quantization import quantize_bundle

            quantize_bundle(args.bundle, calibration_images=args.calibration, validation_images=args.validate,
                            dynamic=args.dynamic, drop_fp32=args.drop_fp32, log=lambda m: print(m, file=sys.stderr))
            return 0
        if args.command == "evaluate":
            from engine.cli.evaluate_command import evaluate_command

            return evaluate_command(args)
        if args.command == "train-demo":
            from engine.making.training import reevaluate_demo, train_demo

            if args.evaluate_only:
                reevaluate_demo(args.out)
            else:
                train_demo(args.out, epochs=args.epochs, per_epoch=args.per_epoch, precision=args.precision)
            return 0
    except LanternError as exc:
        print(f"lantern-engine: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("lantern-engine: interrupted", file=sys.stderr)
        return 130
    return 2


if __name__ == "__main__":
    sys.exit(main())
