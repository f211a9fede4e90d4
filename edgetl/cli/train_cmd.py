"""``edgetl train``, ``edgetl eval`` and ``edgetl predict``.

Only click at module level: torch loads inside the commands. Progress and
logs go to stderr; with ``--json`` stdout holds exactly one JSON document.
"""

from __future__ import annotations

from pathlib import Path

import click

from edgetl.cli.common import emit_json, info, json_option


@click.command("train")
@click.argument("config", type=click.Path(dir_okay=False))
@click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE",
              help="Override a config key, e.g. --set train.epochs=5 (repeatable).")
@click.option("--out", type=click.Path(file_okay=False), default=None,
              help="Run directory (default runs/NAME).")
@click.option("--device", type=click.Choice(["auto", "cpu", "cuda"]), default="auto", show_default=True)
@click.option("--nproc", type=int, default=1, show_default=True,
              help="Processes on this machine, launched through torchrun (DistributedDataParallel).")
@click.option("--resume", is_flag=True, help="Continue an interrupted run in --out from its checkpoint.")
@click.option("--force", is_flag=True, help="Overwrite an existing --out.")
@click.option("--skip-bad", is_flag=True, help="Skip unreadable images (listed) instead of stopping.")
@json_option
def train_command(config: str, overrides: tuple[str, ...], out: str | None, device: str, nproc: int,
                  resume: bool, force: bool, skip_bad: bool, as_json: bool) -> None:
    """Adapt a pretrained backbone to your images: CONFIG.yaml -> runs/NAME/.

    \b
      edgetl train examples/defect_detection/elpv-four-linear-probe.yaml
      edgetl train cfg.yaml --set train.epochs=3 --set data.train=data/elpv/train --force
    """
    from edgetl.config import load_run_config
    from edgetl.errors import UsageError
    from edgetl.host import ddp

    cfg = load_run_config(config, list(overrides))  # fail fast, before any process is started
    if nproc < 1:
        raise UsageError(f"--nproc {nproc}: expected 1 or more processes")
    if nproc > 1 and not ddp.env_info().enabled:
        run_dir = Path(out) if out else Path("runs") / cfg.name
        if run_dir.exists() and not (resume or force):
            raise UsageError(f"{run_dir}: already exists; pass --resume to continue it or --force to overwrite it")
        argv = ["train", config, *[a for o in overrides for a in ("--set", o)], "--device", device]
        argv += ["--out", str(run_dir)] + (["--resume"] if resume else []) + (["--force"] if force else [])
        argv += (["--skip-bad"] if skip_bad else []) + (["--json"] if as_json else [])
        info(f"launching {nproc} processes with torchrun")
        code = ddp.launch(nproc, argv)
        if code:
            raise click.exceptions.Exit(code)
        return
    from edgetl.host.engine import Trainer

    run_dir = Path(out) if out else Path("runs") / cfg.name
    summary = Trainer(cfg, run_dir, device=device, resume=resume, force=force, skip_bad=skip_bad, log=info).run()
    if summary is None:
        return
    if as_json:
        emit_json(summary)
    else:
        from edgetl.host.report import report_summary

        info(report_summary(run_dir))


@click.command("eval")
@click.argument("model", type=click.Path(exists=True), metavar="RUN_DIR|BUNDLE")
@click.argument("data_dir", type=click.Path(), metavar="DATA_DIR")
@click.option("--batch", type=int, default=32, show_default=True, help="Images per inference batch.")
@click.option("--skip-bad", is_flag=True, help="Skip unreadable images (listed) instead of stopping.")
@json_option
def eval_command(model: str, data_dir: str, batch: int, skip_bad: bool, as_json: bool) -> None:
    """Evaluate a run or a bundle on a labelled image folder (one sub-folder per class).

    Applies the stored operating point; figures are fractions in [0, 1].
    """
    from edgetl.data.folder import check_images, load_split
    from edgetl.errors import DataError
    from edgetl.metrics import evaluate, wilson_interval
    from edgetl.predictor import open_predictor, predict_files

    predictor = open_predictor(model)
    if predictor.task == "anomaly":
        _eval_anomaly(predictor, data_dir, batch, as_json)
        return
    samples = load_split(Path(data_dir))
    unknown = [c for c in samples.classes if c not in predictor.labels]
    if unknown:
        raise DataError(f"{data_dir}: class folder '{unknown[0]}' is not a label of the model "
                        f"{list(predictor.labels)}")
    samples = check_images(samples, skip_bad=skip_bad)
    for path in samples.skipped:
        info(f"skipped unreadable image: {path}")
    y = [predictor.labels.index(samples.classes[s.label]) for s in samples.items]
    step = max(1, len(samples) // 10)

    def progress(done: int, total: int) -> None:
        if done % step == 0 or done == total:
            info(f"  {done}/{total} images")

    probs = predict_files(predictor, [s.path for s in samples.items], batch_size=batch, progress=progress)
    doc = evaluate(y, probs, predictor.labels, predictor.threshold, predictor.positive)
    if as_json:
        emit_json(doc)
        return
    lo, hi = wilson_interval(int(round(doc["accuracy"] * doc["n"])), doc["n"])
    click.echo(f"{predictor.name} on {data_dir}: n={doc['n']}  accuracy {doc['accuracy']:.4f} "
               f"(95% CI {lo:.3f}-{hi:.3f})  balanced accuracy {doc['balanced_accuracy']:.4f}"
               + (f"  ROC AUC {doc['roc_auc']:.4f}" if doc["roc_auc"] is not None else ""))
    if doc["recall_at_threshold"] is not None:
        click.echo(f"operating point {doc['threshold'] if doc['threshold'] is not None else 'argmax'}: "
                   f"recall {doc['recall_at_threshold']:.4f}, false-reject rate {doc['false_reject_rate']:.4f}")
    width = max(len(c) for c in doc["labels"])
    click.echo(f"{'class':<{width}}  precision  recall  f1      support")
    for c in doc["labels"]:
        pc = doc["per_class"][c]
        click.echo(f"{c:<{width}}  {pc['precision']:.4f}     {pc['recall']:.4f}  {pc['f1']:.4f}  {pc['support']}")


def _eval_anomaly(predictor, data_dir: str, batch: int, as_json: bool) -> None:
    """Anomaly models: image AUROC/F1, and pixel AUROC and PRO where ``masks/`` exist beside the folder."""
    from edgetl.anomaly_metrics import evaluate_anomaly

    doc = evaluate_anomaly(predictor, data_dir, batch_size=batch,
                           progress=lambda done, total: info(f"  {done}/{total} images"))
    if as_json:
        emit_json(doc)
        return

    def fmt(x):
        return "–" if x is None else f"{x:.4f}"

    click.echo(f"{predictor.name} on {data_dir}: n={doc['n']} ({doc['n_anomalous']} anomalous)  image AUROC "
               f"{fmt(doc['image_auroc'])}  F1 {fmt(doc['image_f1'])}  pixel AUROC {fmt(doc['pixel_auroc'])}  "
               f"PRO {fmt(doc['pro'])}")
    click.echo(f"operating point 0.5: recall {fmt(doc['recall_at_threshold'])}, false-reject rate "
               f"{fmt(doc['false_reject_rate'])}")
    for kind, row in doc["per_class"].items():
        click.echo(f"  {kind}: {row['support']} images, mean score {row['mean_score']:.3f}")


@click.command("predict")
@click.argument("model", type=click.Path(exists=True), metavar="RUN_DIR|BUNDLE")
@click.argument("images", nargs=-1, required=True, type=click.Path(), metavar="IMAGE...")
@json_option
def predict_command(model: str, images: tuple[str, ...], as_json: bool) -> None:
    """Classify images with a run or a bundle (the stored operating point applies).

    With --json: one image gives one predict document; several give a JSON
    array of them, each with its ``image`` path.
    """
    from edgetl.predictor import open_predictor, predict_document
    from edgetl.preprocess import read_image

    predictor = open_predictor(model)
    docs = []
    for path in images:
        doc = predict_document(predictor, read_image(path))
        if len(images) > 1:
            doc = {"image": path, **doc}
        docs.append(doc)
        if not as_json:
            scores = "  ".join(f"{k} {v:.3f}" for k, v in doc["scores"].items())
            click.echo(f"{path}: {doc['label']}  ({scores})  {doc['latency_ms']:.1f} ms")
    if as_json:
        emit_json(docs[0] if len(images) == 1 else docs)


COMMANDS = [train_command, eval_command, predict_command]

