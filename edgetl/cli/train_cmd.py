"""``edgetl train``, ``edgetl eval`` and ``edgetl predict``.

Only click at module level: torch loads inside the commands. Progress and
logs go to stderr; with ``--json`` stdout holds exactly one JSON document.
"""

from __future__ import annotations

from pathlib import Path

import click

from edgetl.cli.common import (
    apply_operating_point,
    emit_json,
    inference_threads,
    info,
    json_option,
    long_step,
    threads_option,
    threshold_options,
)


class _TrainCommand(click.Command):
    """``train`` whose unknown option that names a config key (``--epochs 5``) suggests ``--set train.epochs=5``.

    click's own guess is the nearest option by spelling (``--nproc``), which is never what was meant.
    """

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        given = list(args)  # click consumes ``args`` while parsing
        try:
            return super().parse_args(ctx, args)
        except click.NoSuchOption as exc:
            key = _config_key(exc.option_name.lstrip("-").replace("-", "_"))
            if key is None:
                raise
            value = next((given[i + 1] for i, a in enumerate(given[:-1]) if a == exc.option_name), "VALUE")
            exc.possibilities = []
            exc.message = (f"No such option: {exc.option_name}; a config key is set with --set, "
                           f"e.g. --set {key}={value}")
            raise


def _config_key(name: str) -> str | None:
    """``train.epochs`` for ``epochs``: the dotted key of a run config field of that name, if one exists."""
    from edgetl.config import RunConfig

    for section, field in RunConfig.model_fields.items():
        model = field.annotation
        if name == section:
            return section
        fields = getattr(model, "model_fields", {})
        if name in fields:
            return f"{section}.{name}"
    return None


@click.command("train", cls=_TrainCommand)
@click.argument("config", type=click.Path(dir_okay=False), required=False)
@click.option("--data", "data_dir", type=click.Path(file_okay=False), default=None,
              help="Train without a YAML: DIR/train[, val, test]/<class>/ or DIR/<class>/ (split by the seed).")
@click.option("--backbone", default="efficientnet_lite0", show_default=True, help="With --data: the backbone.")
@click.option("--strategy", default="linear-probe", show_default=True, help="With --data: the strategy.")
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
@click.option("--from", "from_run", type=click.Path(), default=None, metavar="RUN_DIR",
              help="Continue a trained run: its weights and classes (kept in their indices), new classes "
                   "of the data appended (continual learning).")
@json_option
def train_command(config: str | None, data_dir: str | None, backbone: str, strategy: str,
                  overrides: tuple[str, ...], out: str | None, device: str, nproc: int,
                  resume: bool, force: bool, skip_bad: bool, from_run: str | None, as_json: bool) -> None:
    """Adapt a pretrained backbone to your images: CONFIG.yaml -> runs/NAME/.

    \b
      edgetl train examples/defect_detection/elpv-four-linear-probe.yaml
      edgetl train cfg.yaml --set train.epochs=3 --set data.train=data/elpv/train --force
      edgetl train new-class.yaml --from runs/old --out runs/new   # add classes, keep the old
      edgetl train --data data/textures --set train.epochs=20      # no YAML: the folder's layout
    """
    from edgetl.config import RunConfig, apply_overrides, load_run_config, validate
    from edgetl.errors import UsageError
    from edgetl.host import ddp
    from edgetl.workflow.training import folder_config

    if bool(config) == bool(data_dir):
        raise UsageError("give a run config (CONFIG.yaml, or a shipped name) or --data DIR, not both"
                         if config else "give a run config (CONFIG.yaml) or --data DIR (a folder of class folders)")
    if config:
        cfg = load_run_config(config, list(overrides))  # fail fast, before any process is started
    else:
        made = folder_config(data_dir, backbone=backbone, strategy=strategy)
        cfg = validate(RunConfig, apply_overrides(made, list(overrides)), f"--data {data_dir}", list(overrides))
    if nproc < 1:
        raise UsageError(f"--nproc {nproc}: expected 1 or more processes")
    if nproc > 1 and not ddp.env_info().enabled:
        run_dir = Path(out) if out else Path("runs") / cfg.name
        if run_dir.exists() and not (resume or force):
            raise UsageError(f"{run_dir}: already exists; pass --resume to continue it or --force to overwrite it")
        source = [config] if config else ["--data", data_dir, "--backbone", backbone, "--strategy", strategy]
        argv = ["train", *source, *[a for o in overrides for a in ("--set", o)], "--device", device]
        argv += ["--out", str(run_dir)] + (["--resume"] if resume else []) + (["--force"] if force else [])
        argv += (["--skip-bad"] if skip_bad else []) + (["--json"] if as_json else [])
        argv += ["--from", from_run] if from_run else []
        info(f"launching {nproc} processes with torchrun")
        code = ddp.launch(nproc, argv)
        if code:
            raise click.exceptions.Exit(code)
        return
    from edgetl.host.allocator import keep_large_blocks
    from edgetl.workflow import train_config

    if keep_large_blocks():  # EDGETL_MALLOC=keep (docs/training.md, "CPU threads and the allocator")
        info("EDGETL_MALLOC=keep: glibc keeps large freed blocks (faster frozen passes, more resident memory)")
    with long_step("train"):
        run = train_config(cfg, out, device=device, resume=resume, force=force, skip_bad=skip_bad, log=info,
                           from_run=from_run)
    if run is not None and as_json:
        emit_json(run.summary)


@click.command("eval")
@click.argument("model", type=click.Path(exists=True), metavar="RUN_DIR|BUNDLE")
@click.argument("data_dir", type=click.Path(), metavar="DATA_DIR")
@click.option("--batch", type=int, default=32, show_default=True, help="Images per inference batch.")
@click.option("--skip-bad", is_flag=True, help="Skip unreadable images (listed) instead of stopping.")
@click.option("--slice", "slices", multiple=True, metavar="NAME=folder:N|NAME=CSV[:COLUMN]",
              help="Per-slice metrics by a folder level of the image path or a manifest column (repeatable; "
                   "a run's own config 'slices' apply when none is given).")
@threshold_options
@threads_option
@json_option
def eval_command(model: str, data_dir: str, batch: int, skip_bad: bool, slices: tuple[str, ...],
                 threshold: float | None, recall: float | None, frr: float | None, val_dir: str | None,
                 threads: int | None, as_json: bool) -> None:
    """Evaluate a run or a bundle on a labelled image folder (one sub-folder per class).

    Applies the stored operating point; figures are fractions in [0, 1].
    """
    from edgetl import fmt
    from edgetl.metrics import wilson_interval
    from edgetl.workflow import load

    model_dir = model
    model = load(model, threads=inference_threads(threads))
    apply_operating_point(model, threshold, recall, frr, val_dir, batch)
    doc = model.evaluate(data_dir, batch=batch, skip_bad=skip_bad, log=info,
                         slices=_slice_specs(slices, model_dir))
    if as_json:
        emit_json(doc)
        return
    if model.task == "anomaly":
        _print_anomaly(model.name, data_dir, doc)
        return
    lo, hi = wilson_interval(int(round(doc["accuracy"] * doc["n"])), doc["n"])
    click.echo(f"{model.name} on {data_dir}: n={doc['n']}  accuracy {fmt.prob(doc['accuracy'])} "
               f"(95% CI {fmt.prob(lo)}-{fmt.prob(hi)})  balanced accuracy {fmt.prob(doc['balanced_accuracy'])}"
               + (f"  ROC AUC {fmt.prob(doc['roc_auc'])}" if doc["roc_auc"] is not None else ""))
    if doc["recall_at_threshold"] is not None:
        point = "argmax" if doc["threshold"] is None else f"{model.positive} >= {fmt.prob(doc['threshold'])}"
        click.echo(f"operating point {point}: recall {fmt.prob(doc['recall_at_threshold'])}, "
                   f"false-reject rate {fmt.prob(doc['false_reject_rate'])}")
    width = max(len(c) for c in doc["labels"])
    click.echo(f"{'class':<{width}}  precision  recall  f1     support")
    for c in doc["labels"]:
        pc = doc["per_class"][c]
        click.echo(f"{c:<{width}}  {fmt.prob(pc['precision']):<9}  {fmt.prob(pc['recall']):<6}  "
                   f"{fmt.prob(pc['f1']):<5}  {pc['support']}")
    if doc.get("slices"):
        from edgetl.slices import markdown

        click.echo("\n".join(markdown(doc["slices"], Path(data_dir).name)))


def _slice_specs(given: tuple[str, ...], model: str) -> list:
    """``--slice`` values as SliceConfigs, else the run's config ``slices`` (none for a bundle)."""
    from edgetl.config import SliceConfig
    from edgetl.errors import UsageError

    specs = []
    for item in given:
        name, sep, source = item.partition("=")
        if not sep or not name or not source:
            raise UsageError(f"--slice {item}: expected NAME=folder:N or NAME=MANIFEST.csv[:COLUMN]")
        if source.startswith("folder:"):
            level = source.split(":", 1)[1]
            if not level.isdigit() or int(level) < 1:
                raise UsageError(f"--slice {item}: folder level must be a whole number >= 1")
            specs.append(SliceConfig(name=name, folder=int(level)))
        else:
            path, _, column = source.partition(".csv")
            specs.append(SliceConfig(name=name, manifest=path + ".csv", column=column.lstrip(":") or None))
    if specs or not (Path(model) / "config.yaml").is_file():
        return specs
    import yaml

    config = yaml.safe_load((Path(model) / "config.yaml").read_text(encoding="utf-8")) or {}
    return [SliceConfig(**s) for s in config.get("slices") or []]


def _print_anomaly(name: str, data_dir: str, doc: dict) -> None:
    """Anomaly models: image AUROC/F1, and pixel AUROC and PRO where ``masks/`` exist beside the folder."""
    from edgetl import fmt

    def num(x):
        return "–" if x is None else fmt.prob(x)

    click.echo(f"{name} on {data_dir}: n={doc['n']} ({doc['n_anomalous']} anomalous)  image AUROC "
               f"{num(doc['image_auroc'])}  F1 {num(doc['image_f1'])}  pixel AUROC {num(doc['pixel_auroc'])}  "
               f"PRO {num(doc['pro'])}")
    click.echo(f"operating point: score >= 0.500: recall {num(doc['recall_at_threshold'])}, false-reject rate "
               f"{num(doc['false_reject_rate'])}")
    for kind, row in doc["per_class"].items():
        click.echo(f"  {kind}: {row['support']} images, mean score {fmt.prob(row['mean_score'])}")


@click.command("predict")
@click.argument("model", type=click.Path(exists=True), metavar="RUN_DIR|BUNDLE")
@click.argument("sources", nargs=-1, required=True, metavar="SOURCE...")
@click.option("--save", "save_dir", type=click.Path(file_okay=False), default=None,
              help="Write annotated copies here: images (label, score, threshold drawn), and an .mp4 per video.")
@threshold_options
@threads_option
@click.option("--json", "as_json", is_flag=True, help="One JSON document per line (per image or frame) on stdout.")
def predict_command(model: str, sources: tuple[str, ...], save_dir: str | None, threshold: float | None,
                    recall: float | None, frr: float | None, val_dir: str | None, threads: int | None,
                    as_json: bool) -> None:
    """Predict images, folders, globs, a video file or a camera index; one line per image/frame as it comes.

    \b
      edgetl predict runs/x data/textures/test                # a folder, recursively
      edgetl predict runs/x 'shots/*.jpg' --save annotated/   # a quoted glob, annotated copies
      edgetl predict model.edgetl clip.mp4 --save out/ --json # a video: out/clip.mp4, JSON lines
      edgetl predict model.edgetl 0                           # camera 0 (Ctrl-C stops)

    Each line shows the score the decision used and the threshold it was
    compared with, e.g. "defect 0.305 (threshold 0.200) -> defect".
    """
    import contextlib
    import json
    import sys

    from edgetl.workflow import load

    count = 0
    loaded = load(model, threads=inference_threads(threads))
    apply_operating_point(loaded, threshold, recall, frr, val_dir)
    results = loaded.stream(list(sources), save=save_dir, maps=save_dir is not None)
    with contextlib.closing(results):  # Ctrl-C on a camera still finishes the saved video
        for result in results:
            count += 1
            if as_json:
                sys.stdout.write(json.dumps(result.to_dict(), default=float) + "\n")
            else:
                where = result.source + (f" #{result.frame}" if result.frame is not None else "")
                click.echo(f"{where}: {result.describe()}  {result.latency_ms:.1f} ms")
            sys.stdout.flush()
    if save_dir is not None:
        info(f"annotated {count} image(s)/frame(s) into {save_dir}")


COMMANDS = [train_command, eval_command, predict_command]
