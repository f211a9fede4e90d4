"""``edgetl train``: config -> backbone + strategy -> ``runs/NAME/``.

The engine resolves the run config, builds the backbone and the strategy from
the registries, hands the strategy a :class:`edgetl.api.FitContext`, sets the
operating point on validation data, evaluates the test split once (if given),
optionally trains the negative-transfer baseline, and has rank 0 write the run
directory (:mod:`edgetl.host.report`).
"""

from __future__ import annotations

import dataclasses
import os
import random
import shutil
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from edgetl.api import FitContext, TrainedModel
from edgetl.config import RunConfig, load_run_config
from edgetl.errors import ConfigError, EdgetlError, UsageError
from edgetl.host import ddp
from edgetl.host.splits import RunData, load_run_data
from edgetl.metrics import evaluate, pick_threshold

CHECKPOINT = "checkpoint.pt"


def resolve_device(name: str) -> Any:
    """``auto`` -> cuda when available, else cpu; asking for cuda without one is an error."""
    import torch

    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda" and not torch.cuda.is_available():
        raise UsageError("--device cuda: no CUDA device is available here (use --device cpu or auto)")
    if name not in ("cpu", "cuda"):
        raise UsageError(f"--device {name}: expected auto, cpu or cuda")
    if name == "cuda":
        return torch.device("cuda", ddp.env_info().local_rank)
    return torch.device("cpu")


def seed_everything(seed: int) -> None:
    import torch

    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def prepare_out(out: Path, resume: bool, force: bool, info: ddp.DistInfo) -> dict[str, Any] | None:
    """Check ``--out`` (exists -> error unless --resume/--force); returns the resume checkpoint."""
    if out.exists() and not (resume or force):
        raise UsageError(f"{out}: already exists; pass --resume to continue it or --force to overwrite it")
    if resume and force:
        raise UsageError("--resume and --force contradict each other; give one")
    if resume:
        path = out / CHECKPOINT
        if not path.is_file():
            raise UsageError(f"{out}: nothing to resume (no {CHECKPOINT}); train it without --resume")
        import torch

        return torch.load(path, map_location="cpu", weights_only=False)
    ddp.barrier(info)
    if force and out.exists() and info.is_main:
        shutil.rmtree(out)
    ddp.barrier(info)
    if info.is_main:
        out.mkdir(parents=True, exist_ok=True)
    ddp.barrier(info)
    return None


def set_tta(module: Any, views: list[str]) -> None:
    """Put ``train.tta`` views inside the model (so export and device compute the same)."""
    from edgetl.host.model import TTA_VIEWS

    for v in views:
        if v not in TTA_VIEWS:
            raise ConfigError(f"train.tta: unknown view {v!r} (known: {', '.join(TTA_VIEWS)})")
    module.tta = tuple(views)
    module.head_spec["tta"] = list(views)


def operating_point(cfg: RunConfig, labels: list[str], y_val: np.ndarray,
                    probs: np.ndarray) -> tuple[float | None, str | None]:
    """``train.threshold``: argmax (None), or the highest threshold reaching the target recall on val."""
    policy = cfg.train.threshold
    if policy.policy == "argmax":
        return None, None
    if policy.class_ not in labels:
        raise ConfigError(f"train.threshold.class: '{policy.class_}' is not a class of data.train ({labels})")
    pos = labels.index(policy.class_)
    return pick_threshold(y_val, probs, pos, policy.target), policy.class_


class Trainer:
    """One ``edgetl train`` invocation (one process; rank 0 writes)."""

    def __init__(self, config: RunConfig, out: Path, device: str = "auto", resume: bool = False,
                 force: bool = False, skip_bad: bool = False, log: Callable[[str], None] = print):
        self.cfg, self.out, self.skip_bad = config, out, skip_bad
        self.resume, self.force = resume, force
        self.device_name = device
        self.history: list[dict[str, Any]] = []
        self._log = log
        self.info = ddp.env_info()

    def log(self, message: str) -> None:
        if self.info.is_main:
            self._log(message)

    # -- callbacks ----------------------------------------------------------
    def progress(self, stage: str, done: int, total: int) -> None:
        if stage.startswith("features"):
            step = max(1, total // 5)
            if done == total or done // step != (done - 1) // step:
                self.log(f"  {stage}: {done}/{total} images")
            return
        self.log(stage)

    def log_epoch(self, row: dict[str, Any], tag: str | None = None) -> None:
        if tag:
            row = {**row, "strategy": tag}
        self.history.append(row)
        lrs = [v for k, v in row.items() if k.startswith("lr_")]
        auc = row.get("val_roc_auc")
        self.log(f"{row['strategy']} epoch {row['epoch']:>3}  loss {row['train_loss']:.4f}  "
                 f"val_loss {row['val_loss']:.4f}  val_acc {row['val_accuracy']:.3f}  "
                 f"val_bacc {row['val_balanced_accuracy']:.3f}"
                 + (f"  val_auc {auc:.3f}" if auc is not None else "")
                 + f"  lr {max(lrs):.2e}  {row['epoch_time_s']:.1f}s "
                 f"({row['train_images_per_s']:.1f} img/s)" + ("  *" if row.get("best") else ""))

    # -- pieces -------------------------------------------------------------
    def context(self, data: RunData, module: Any, strategy: str, options: dict[str, Any],
                tag: str | None = None, checkpoint: Path | None = None,
                resume_state: dict[str, Any] | None = None) -> FitContext:
        state = {"dist": self.info, "spec": self.spec, "history": self.history,
                 "checkpoint": checkpoint, "resume_state": resume_state}
        return FitContext(backbone=self.backbone, module=module, train=data.train, val=data.val,
                          labels=data.classes, options=dict(options), config=self.cfg, device=self.device,
                          progress=self.progress, log_epoch=lambda row: self.log_epoch(row, tag),
                          state=state)

    def predict(self, module: Any, split: Any) -> np.ndarray:
        from edgetl.host.loop import predict_probs

        return predict_probs(module.to(self.device), split.plain, self.device, self.info,
                             batch_size=max(64, self.cfg.train.batch_size), full=True)

    def baseline(self, data: RunData, main_seconds: float, main_val: dict[str, Any],
                 main_test: dict[str, Any] | None) -> dict[str, Any] | None:
        """The negative-transfer check: the same architecture from scratch, or the linear probe."""
        from edgetl.plugins import get_manager

        kind = self.cfg.train.baseline
        if kind == "none":
            return None
        if kind == "linear-probe" and self.cfg.strategy.name == "linear-probe":
            self.log("baseline linear-probe skipped: the run itself is a linear probe")
            return None
        self.log(f"baseline: {kind} on the same budget (epochs <= {self.cfg.train.epochs}"
                 + (f", wall-clock <= {main_seconds:.0f} s" if kind == "scratch" else "") + ")")
        seed_everything(self.cfg.train.seed)
        bcfg = self.cfg.backbone
        if kind == "scratch":
            module = self.backbone.build(pretrained=False)
            strategy = get_manager().get("strategy", "finetune")
            ctx = self.context(data, module, "finetune", {"unfreeze": "all", "lr_decay": 1.0, "freeze_bn": False},
                               tag="baseline-scratch")
            ctx.state["time_budget_s"] = main_seconds
        else:
            module = self.backbone.build(pretrained=bcfg.pretrained, weights=bcfg.weights)
            strategy = get_manager().get("strategy", "linear-probe")
            ctx = self.context(data, module, "linear-probe", {}, tag="baseline-linear-probe")
        t0 = time.perf_counter()
        trained = strategy.fit(ctx)
        seconds = time.perf_counter() - t0
        val = evaluate(data.val.labels, self.predict(trained.module, data.val), data.classes)
        test = (evaluate(data.test.labels, self.predict(trained.module, data.test), data.classes)
                if data.test is not None else None)
        metric = self.cfg.train.early_stopping.metric
        key = metric if metric != "loss" else "balanced_accuracy"
        delta = (main_val.get(key) or 0.0) - (val.get(key) or 0.0)
        result = {"kind": kind, "metric": key, "seconds": seconds, "best_epoch": ctx.state.get("best_epoch"),
                  "val": val, "test": test, "main_val": main_val.get(key), "baseline_val": val.get(key),
                  "delta_val": delta, "helped": delta > 0}
        if test is not None and main_test is not None:
            result["delta_test_accuracy"] = main_test["accuracy"] - test["accuracy"]
            result["delta_test_balanced_accuracy"] = main_test["balanced_accuracy"] - test["balanced_accuracy"]
        self.log(f"baseline {kind}: val {key} {val.get(key):.3f} vs {main_val.get(key):.3f} "
                 f"-> transfer {'helped' if delta > 0 else 'did NOT help'} ({delta:+.3f})")
        return result

    def _finish_anomaly(self, trained: TrainedModel, strategy: Any, data: RunData, fit_seconds: float,
                        started: float) -> dict[str, Any] | None:
        """Anomaly runs: no baseline, no TTA; val/test scored and written by :mod:`edgetl.host.anomaly_report`."""
        from edgetl.host.anomaly_report import write_anomaly_run_dir

        if not self.info.is_main:
            return None
        summary = write_anomaly_run_dir(
            self.out, cfg=self.cfg, trained=trained, backbone=self.backbone, strategy=strategy.name, spec=self.spec,
            data=data, device=self.device, timing={"fit_seconds": fit_seconds,
                                                   "total_seconds": time.perf_counter() - started})
        val = summary["val"]
        self.log(f"val: image AUROC {val['image_auroc'] or float('nan'):.4f}, F1 {val['image_f1']:.4f}"
                 + (f"; test: image AUROC {summary['test']['image_auroc'] or float('nan'):.4f}, pixel AUROC "
                    f"{summary['test']['pixel_auroc'] or float('nan'):.4f}, PRO {summary['test']['pro'] or float('nan'):.4f}"
                    if summary["test"] else ""))
        self.log(f"wrote {self.out} (report: {self.out / 'report.md'})")
        return summary

    # -- the run ------------------------------------------------------------
    def run(self) -> dict[str, Any] | None:
        """Train, evaluate, write the run directory; the summary (rank 0) or None (other ranks)."""
        from edgetl.plugins import get_manager

        manager = get_manager()
        strategy = manager.get("strategy", self.cfg.strategy.name)
        self.backbone = manager.get("backbone", self.cfg.backbone.name)
        if strategy.missing_modules():
            raise EdgetlError(f"strategy {strategy.name}: missing {', '.join(strategy.missing_modules())}")
        spec = self.backbone.input
        if self.cfg.train.image_size:
            spec = dataclasses.replace(spec, size=(self.cfg.train.image_size, self.cfg.train.image_size))
        self.spec = spec
        self.device = resolve_device(self.device_name)
        self.info = ddp.init(self.device.type)
        try:
            return self._run(strategy)
        finally:
            ddp.shutdown(self.info)

    def _run(self, strategy: Any) -> dict[str, Any] | None:
        from edgetl.host.report import write_run_dir

        cfg = self.cfg
        started = time.perf_counter()
        resume_state = prepare_out(self.out, self.resume, self.force, self.info)
        if resume_state is not None:
            self.history.extend(resume_state.get("history", []))
            self.log(f"resuming {self.out} after epoch {resume_state['epoch'] + 1}")
        seed_everything(cfg.train.seed)
        data = load_run_data(cfg, self.spec, self.skip_bad, task=strategy.task)
        for bad in data.skipped:
            self.log(f"skipped unreadable image: {bad}")
        self.log(f"{cfg.name}: {strategy.name} on {self.backbone.name} "
                 f"({self.spec.size[0]}x{self.spec.size[1]}), {len(data.train)} train / {len(data.val)} val"
                 + (f" / {len(data.test)} test" if data.test else "") + f" images, classes {data.classes}, "
                 f"device {self.device}" + (f", {self.info.world} processes" if self.info.enabled else ""))
        module = self.backbone.build(pretrained=cfg.backbone.pretrained, weights=cfg.backbone.weights)
        ctx = self.context(data, module, strategy.name, cfg.strategy.options,
                           checkpoint=self.out / CHECKPOINT, resume_state=resume_state)
        t0 = time.perf_counter()
        trained: TrainedModel = strategy.fit(ctx)
        fit_seconds = time.perf_counter() - t0
        if trained.task == "anomaly":
            return self._finish_anomaly(trained, strategy, data, fit_seconds, started)
        if cfg.train.tta:
            set_tta(trained.module, list(cfg.train.tta))
        val_probs = self.predict(trained.module, data.val)
        trained.threshold, trained.positive = operating_point(cfg, data.classes, data.val.labels, val_probs)
        val_doc = evaluate(data.val.labels, val_probs, data.classes, trained.threshold, trained.positive)
        test_probs = self.predict(trained.module, data.test) if data.test is not None else None
        test_doc = (evaluate(data.test.labels, test_probs, data.classes, trained.threshold, trained.positive)
                    if data.test is not None else None)
        baseline = self.baseline(data, fit_seconds, val_doc, test_doc)
        if not self.info.is_main:
            return None
        summary = write_run_dir(
            self.out, cfg=cfg, trained=trained, backbone=self.backbone, strategy=strategy.name, spec=self.spec,
            data=data, history=self.history, val_doc=val_doc, val_probs=val_probs, test_doc=test_doc,
            test_probs=test_probs, baseline=baseline, timing={
                "fit_seconds": fit_seconds, "total_seconds": time.perf_counter() - started,
                "feature_seconds": ctx.state.get("feature_seconds"), "feature_pass": ctx.state.get("feature_pass")},
            best_epoch=ctx.state.get("best_epoch"), device=str(self.device), world=self.info.world)
        self.log(f"wrote {self.out} (report: {self.out / 'report.md'})")
        return summary


def train_from_file(config_path: str | Path, overrides: tuple[str, ...] = (), out: str | None = None,
                    device: str = "auto", resume: bool = False, force: bool = False, skip_bad: bool = False,
                    log: Callable[[str], None] = print) -> dict[str, Any] | None:
    """Load ``config_path`` with ``--set`` overrides and train; see :class:`Trainer`."""
    cfg = load_run_config(config_path, list(overrides))
    return Trainer(cfg, Path(out) if out else Path("runs") / cfg.name, device=device, resume=resume,
                   force=force, skip_bad=skip_bad, log=log).run()


def torch_threads_note() -> str:
    """How many threads torch computes with (reported: it matters as much as the model on CPU)."""
    import torch

    return f"{torch.get_num_threads()} threads" + (
        f", allocator preload {os.environ['LD_PRELOAD']}" if os.environ.get("LD_PRELOAD") else "")
