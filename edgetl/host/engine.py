"""``edgetl train``: config -> backbone + strategy -> ``runs/NAME/``.

The engine resolves the run config, builds the backbone and the strategy from
the registries, hands the strategy a :class:`edgetl.api.FitContext`, sets the
operating point on validation data, evaluates the test split once (if given),
optionally trains the negative-transfer baseline, and has rank 0 write the run
directory (:mod:`edgetl.host.report`).
"""

from __future__ import annotations

import dataclasses
import random
import shutil
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from edgetl.api import DistInfo, FitContext, Strategy, TrainedModel
from edgetl.config import RunConfig, load_run_config
from edgetl.errors import ConfigError, EdgetlError, PluginError, UsageError
from edgetl.host import budget as baseline_budget
from edgetl.host import ddp
from edgetl.host.splits import RunData, load_run_data
from edgetl.metrics import evaluate, pick_threshold
from edgetl.progress import note as progress_note
from edgetl.tracking import Tracking, check_loggers
from edgetl.training import dist

CHECKPOINT = "checkpoint.pt"
COUNTED = ("features", "evaluate")  # progress stages reported per batch (images done/total), throttled


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
        return torch.device("cuda", dist.env_info().local_rank)
    return torch.device("cpu")


def seed_everything(seed: int) -> None:
    import torch

    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def prepare_out(out: Path, resume: bool, force: bool, info: DistInfo) -> dict[str, Any] | None:
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

        try:  # tensors and plain values only: never unpickle objects
            return torch.load(path, map_location="cpu", weights_only=True)
        except Exception as exc:
            raise UsageError(f"{path}: cannot be read as a checkpoint ({type(exc).__name__}; one written "
                             "by an older edgetl holds objects this version will not unpickle): "
                             "train again with --force") from None
    dist.barrier(info)
    if force and out.exists() and info.is_main:
        shutil.rmtree(out)
    dist.barrier(info)
    if info.is_main:
        out.mkdir(parents=True, exist_ok=True)
    dist.barrier(info)
    return None


def discard_failed_run(out: Path, log: Callable[[str], None]) -> None:
    """Remove the folder a failed ``train`` made, so the corrected command is not refused.

    A folder holding a checkpoint stays: ``--resume`` continues it (an interrupted long run
    keeps its epochs).
    """
    if not out.is_dir():
        return
    if (out / CHECKPOINT).is_file():
        log(f"kept {out}: it holds a checkpoint; continue with --resume, or start again with --force")
        return
    shutil.rmtree(out, ignore_errors=True)


def check_tta(views: list[str], size: tuple[int, int]) -> None:
    """``train.tta`` against the known views and the run's (H, W) input, before anything is trained or written."""
    from edgetl.training.view_names import check_tta_views

    try:
        check_tta_views(views)
    except ValueError as exc:
        raise ConfigError(f"train.tta: {exc}") from None
    try:
        check_tta_views(views, size)
    except ValueError as exc:  # the names are known: the size is what is wrong
        raise ConfigError(f"train.tta: {exc} (train.image_size: N gives an N x N input)") from None


def with_tta(trained: TrainedModel, views: list[str]) -> str | None:
    """Wrap the module in ``train.tta`` views (so export and device compute the same); :func:`check_tta` ran.

    A strategy may return a :class:`WithTTA` of its own: wrapping it again would run every config view over
    every strategy view (8 x 8 passes per image for the square's symmetries), so the two lists merge into
    one layer over the union. Returns a line saying so, None otherwise.
    """
    from edgetl.training.views import WithTTA

    if trained.task != "classify":
        raise ConfigError(f"train.tta: test-time views average probabilities; task {trained.task!r} has none")
    if isinstance(trained.module, WithTTA):
        own = trained.module.views
        merged = list(dict.fromkeys([*own, *views]))
        trained.module = WithTTA(trained.module.module, merged)
        return (f"train.tta: the strategy's model already averages views {list(own)}; one layer over "
                f"{merged} (not one inside the other)")
    trained.module = WithTTA(trained.module, views)
    return None


def operating_point(cfg: RunConfig, labels: list[str], y_val: np.ndarray,
                    probs: np.ndarray) -> tuple[float | None, str | None]:
    """``train.threshold``: argmax (None), or the highest threshold reaching the target recall on val."""
    policy = cfg.train.threshold
    if policy.policy in ("argmax", "balanced"):  # balanced: argmax of the adjusted model (prior_adjust)
        return None, None
    if policy.class_ not in labels:
        raise ConfigError(f"train.threshold.class: '{policy.class_}' is not a class of data.train ({labels})")
    pos = labels.index(policy.class_)
    return pick_threshold(y_val, probs, pos, policy.target), policy.class_


def balanced_point(cfg: RunConfig, labels: list[str], y_train: np.ndarray, y_val: np.ndarray,
                   probs: np.ndarray) -> dict[str, Any]:
    """``train.threshold.policy: balanced``: the class-prior adjustment (tau, offsets) and the val curve.

    The prior is the training split's class frequencies (a class without
    training images counts as one). ``tau`` is the config's, or
    :func:`edgetl.metrics.tune_adjustment`'s choice on val.
    """
    from edgetl.metrics import ADJUST_TAUS, adjustment_offsets, tune_adjustment

    policy = cfg.train.threshold
    counts = np.maximum(np.bincount(np.asarray(y_train, dtype=int), minlength=len(labels)), 1)
    prior = counts / counts.sum()
    taus = ADJUST_TAUS if policy.tau is None else (*ADJUST_TAUS, float(policy.tau))  # the curve shows it
    tau, curve = tune_adjustment(y_val, probs, prior, taus, max_accuracy_drop=policy.max_accuracy_drop,
                                 min_recall=policy.min_recall)
    chosen = "val" if policy.tau is None else "config"
    tau = tau if policy.tau is None else float(policy.tau)
    named = [{**c, "recall": {labels[i]: r for i, r in c["recall"].items()}} for c in curve]
    return {"policy": "balanced", "tau": tau, "tau_from": chosen, "prior": dict(zip(labels, prior.tolist(), strict=True)),
            "offsets": adjustment_offsets(prior, tau).tolist(), "max_accuracy_drop": policy.max_accuracy_drop,
            "min_recall": policy.min_recall, "val_curve": named}


class Trainer:
    """One ``edgetl train`` invocation (one process; rank 0 writes)."""

    def __init__(self, config: RunConfig, out: Path, device: str = "auto", resume: bool = False,
                 force: bool = False, skip_bad: bool = False, log: Callable[[str], None] = print,
                 from_run: str | Path | None = None):
        self.cfg, self.out, self.skip_bad = config, out, skip_bad
        self.from_run, self.previous = from_run, None
        self.baseline_probs: tuple[str, np.ndarray] | None = None  # (strategy, probabilities) for the continual report
        self.resume, self.force = resume, force
        self.device_name = device
        self.history: list[dict[str, Any]] = []
        self._log = log
        self._counted: dict[str, int] = {}  # per-batch stage -> images done so far (see progress)
        self.info = dist.env_info()
        self.tracking = Tracking()

    def log(self, message: str) -> None:
        if self.info.is_main:
            self._log(message)

    # -- callbacks ----------------------------------------------------------
    def progress(self, stage: str, done: int, total: int) -> None:
        """``ctx.progress``: a line per call, with ``done/total`` once work is done (``done`` 0 starts a stage:
        the message alone); per-batch stages (:data:`COUNTED`) a line every 20 %."""
        if stage.startswith(COUNTED):
            progress_note(f"{stage}: {done}/{total} images")  # the heartbeat says where between the lines
            step = max(1, total // 5)
            before = self._counted.pop(stage, 0)  # done at the stage's previous batch (0: a new pass)
            if done == total or done // step != (before if before < done else 0) // step:
                self.log(f"  {stage}: {done}/{total} images")
            if done < total:
                self._counted[stage] = done
            return
        self.log(f"{stage} {done}/{total}" if done > 0 and total > 0 else stage)

    def log_epoch(self, row: Any, tag: str | None = None) -> None:
        """Record one history row (a HistoryRow or a dict; missing keys are fine) and print it."""
        row = row.to_dict() if hasattr(row, "to_dict") else dict(row)
        row = {k: (v.item() if hasattr(v, "item") else v) for k, v in row.items()}  # plain values
        if tag:
            row["strategy"] = tag
        self.history.append(row)
        self.tracking.metrics(row, tag)
        self.log(format_row(row))

    # -- pieces -------------------------------------------------------------
    def context(self, data: RunData, module: Any, options: dict[str, Any], tag: str | None = None,
                checkpoint: Path | None = None, resume_state: dict[str, Any] | None = None,
                time_budget_s: float | None = None, previous: Any = None,
                run_dir: Path | None = None) -> FitContext:
        return FitContext(backbone=self.backbone, module=module, train=data.train, val=data.val,
                          unlabeled=data.unlabeled, labels=data.classes, options=dict(options), config=self.cfg, device=self.device,
                          progress=self.progress, log_epoch=lambda row: self.log_epoch(row, tag),
                          dist=self.info, input=self.spec, checkpoint=checkpoint,
                          resume_state=resume_state, time_budget_s=time_budget_s, history=self.history,
                          previous=previous, run_dir=run_dir)

    def predict(self, module: Any, split: Any, whose: str = "") -> np.ndarray:
        """``module``'s outputs on ``split``, reported as ``evaluate SPLIT[ (whose)]: done/total images``."""
        from edgetl.training.data import predict
        from edgetl.training.views import WithTTA

        stage = f"evaluate {split.name}" + (f" ({whose})" if whose else "")
        # a WithTTA runs every view of the batch as one batch: fewer images, the same tensor size per call
        # (8 views x 64 images at 300 px held ~10 GB of activations)
        views = 1 + len(module.views) if isinstance(module, WithTTA) else 1
        return predict(module.to(self.device), split.plain, self.device,
                       batch_size=max(1, max(64, self.cfg.train.batch_size) // views), info=self.info,
                       progress=lambda done, total: self.progress(stage, done, total))

    def fit(self, strategy: Strategy, ctx: FitContext, data: RunData) -> tuple[TrainedModel, Any, float]:
        """``strategy.fit`` then the contract check; (trained, its ExportedProgram, seconds)."""
        import torch

        from edgetl.host.contract import check_trained

        t0 = time.perf_counter()
        trained = strategy.fit(ctx)
        seconds = time.perf_counter() - t0
        n = min(2, len(data.val.plain))
        example = torch.stack([data.val.plain[i][0] for i in range(n)])
        return trained, check_trained(strategy, trained, example), seconds

    def baseline_strategy(self, kind: str) -> tuple[Strategy, dict[str, Any]]:
        """The registered strategy offering the ``kind`` baseline, and its options for it."""
        from edgetl.plugins import get_manager

        for candidate in get_manager().all("strategy"):
            options = candidate.baseline_options(kind)
            if options is not None:
                return candidate, options
        raise PluginError(f"train.baseline: {kind}: no installed strategy offers this baseline "
                          "(Strategy.baseline_options); set train.baseline: none")

    def baseline(self, data: RunData, strategy: Strategy, main_seconds: float, main_val: dict[str, Any],
                 main_test: dict[str, Any] | None) -> dict[str, Any] | None:
        """The negative-transfer check: the same architecture from scratch, or a linear probe."""
        kind = self.cfg.train.baseline
        if kind == "none":
            return None
        if kind != "scratch" and strategy.baseline_options(kind) is not None:
            self.log(f"baseline {kind} skipped: the run itself is one ({strategy.name})")
            return None
        base, options = self.baseline_strategy(kind)
        scratch = kind == "scratch"
        budget, time_budget_s, line = baseline_budget.plan(self.cfg, kind, main_seconds)
        self.log(f"{line} [{base.name}]")
        seed_everything(self.cfg.train.seed)
        module, previous = self.start_module(data, scratch=scratch)
        # the baseline never sees data.target_unlabeled: against dann or intermediate-pretrain it is source-only
        ctx = self.context(dataclasses.replace(data, unlabeled=None), module, options, tag=f"baseline-{kind}",
                           time_budget_s=time_budget_s, previous=previous)
        trained, _, seconds = self.fit(base, ctx, data)
        val_probs = self.predict(trained.module, data.val, f"baseline-{kind}")
        val = evaluate(data.val.labels, val_probs, data.classes)
        test_probs = self.predict(trained.module, data.test, f"baseline-{kind}") if data.test is not None else None
        test = evaluate(data.test.labels, test_probs, data.classes) if data.test is not None else None
        self.baseline_probs = (base.name, test_probs if test_probs is not None else val_probs)
        metric = self.cfg.train.early_stopping.metric
        key = metric if metric != "loss" else "balanced_accuracy"
        delta = (main_val.get(key) or 0.0) - (val.get(key) or 0.0)
        result = {"kind": kind, "strategy": base.name, "metric": key, "seconds": seconds,
                  "best_epoch": trained.best_epoch, "val": val, "test": test, "main_val": main_val.get(key),
                  "baseline_val": val.get(key), "delta_val": delta, "helped": delta > 0,
                  **baseline_budget.facts(self.history, kind, budget, main_seconds, self.cfg.train.epochs)}
        if test is not None and main_test is not None:
            result["delta_test_accuracy"] = main_test["accuracy"] - test["accuracy"]
            result["delta_test_balanced_accuracy"] = main_test["balanced_accuracy"] - test["balanced_accuracy"]
        self.log(f"baseline {kind}: val {key} {val.get(key):.3f} vs {main_val.get(key):.3f} "
                 f"-> transfer {'helped' if delta > 0 else 'did NOT help'} ({delta:+.3f}), "
                 f"{result['epochs_run']} epoch(s) in {seconds:.0f} s")
        if result["single_epoch"]:
            self.log(baseline_budget.SINGLE_EPOCH_WARNING)
        return result

    def _finish_anomaly(self, trained: TrainedModel, program: Any, strategy: Any, data: RunData,
                        fit_seconds: float, started: float) -> dict[str, Any] | None:
        """Anomaly runs: no baseline, no TTA; val/test scored and written by :mod:`edgetl.host.anomaly_report`."""
        from edgetl.host.anomaly_report import write_anomaly_run_dir

        if not self.info.is_main:
            return None
        summary = write_anomaly_run_dir(
            self.out, cfg=self.cfg, trained=trained, backbone=self.backbone, strategy=strategy.name, spec=self.spec,
            data=data, device=self.device, program=program, progress=self.progress, timing={"fit_seconds": fit_seconds,
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
        strategy.check_options(self.cfg.strategy.options)  # a bad option: stop before the run directory exists
        check_loggers(self.cfg)  # unknown logger or missing library: stop before anything is written
        spec = self.backbone.input
        if self.cfg.train.image_size:
            spec = dataclasses.replace(spec, size=(self.cfg.train.image_size, self.cfg.train.image_size))
        self.spec = spec
        check_tta(self.cfg.train.tta, spec.size)
        if self.from_run is not None:
            self.open_previous(strategy)
        elif self.cfg.continual.split:
            raise ConfigError("continual.split: splits classes of a previous run; give one with --from RUN")
        self.device = resolve_device(self.device_name)
        self.info = ddp.init(self.device.type)
        fresh = self.force or not self.out.exists()  # a folder this attempt makes is its to remove
        failed = True
        try:
            summary = self._run(strategy)
            failed = False
            return summary
        finally:
            self.tracking.close()  # a run that did not finish is marked failed
            ddp.shutdown(self.info)
            if failed and fresh and self.info.is_main:
                discard_failed_run(self.out, self.log)

    def open_previous(self, strategy: Strategy) -> None:
        """Read the ``--from`` run before anything is written; a split class's stored exemplars are dropped."""
        from edgetl.host.continual import drop_split_exemplars, open_previous

        self.previous = prev = open_previous(self.from_run, self.out, self.backbone.name, self.spec, strategy.task)
        prev.split = self.cfg.continual.split
        dropped = drop_split_exemplars(prev)
        self.log(f"continuing {self.from_run}: classes {prev.labels}"
                 + (f", split {prev.split}" if prev.split else " keep their indices")
                 + (f", {len(prev.exemplars)} stored exemplars" if prev.exemplars else ""))
        if dropped:
            self.log(f"  dropped {len(dropped)} stored exemplars of split classes "
                     f"({', '.join(sorted(set(dropped)))}): they cannot be given a child's label")

    def _run(self, strategy: Strategy) -> dict[str, Any] | None:
        from edgetl.host.report import write_run_dir

        cfg = self.cfg
        started = time.perf_counter()
        resume_state = prepare_out(self.out, self.resume, self.force, self.info)
        if resume_state is not None:
            self.history.extend(resume_state.get("history", []))
            self.log(f"resuming {self.out} after epoch {resume_state['epoch'] + 1}")
        self.tracking = Tracking.start(cfg, self.out, self.log, enabled=self.info.is_main,
                                       resume=resume_state is not None)
        seed_everything(cfg.train.seed)
        data = load_run_data(cfg, self.spec, self.skip_bad, task=strategy.task,
                             previous_labels=self.previous.labels if self.previous else None,
                             split=self.cfg.continual.split)
        for bad in data.skipped:
            self.log(f"skipped unreadable image: {bad}")
        self.log(f"{cfg.name}: {strategy.name} on {self.backbone.name} "
                 f"({self.spec.size[0]}x{self.spec.size[1]}), {len(data.train)} train / {len(data.val)} val"
                 + (f" / {len(data.test)} test" if data.test else "") + f" images, classes {data.classes}, "
                 f"device {self.device}" + (f", {self.info.world} processes" if self.info.enabled else ""))
        module, previous = self.start_module(data)
        ctx = self.context(data, module, cfg.strategy.options, checkpoint=self.out / CHECKPOINT,
                           resume_state=resume_state, previous=previous, run_dir=self.out)
        trained, program, fit_seconds = self.fit(strategy, ctx, data)
        if trained.task == "anomaly":
            return self._finish_anomaly(trained, program, strategy, data, fit_seconds, started)
        if cfg.train.tta:
            if (merged := with_tta(trained, list(cfg.train.tta))) is not None:
                self.log(merged)
            program = None  # the saved module is the wrapped one
        val_probs = self.predict(trained.module, data.val)
        source = self.operating_point(strategy, trained, data, val_probs)
        decision = None
        if cfg.train.threshold.policy == "balanced":
            decision, val_probs = self.prior_adjust(trained, data, val_probs)
            program = None  # the saved module is the adjusted one
        val_doc = evaluate(data.val.labels, val_probs, data.classes, trained.threshold, trained.positive)
        test_probs = self.predict(trained.module, data.test) if data.test is not None else None
        test_doc = (evaluate(data.test.labels, test_probs, data.classes, trained.threshold, trained.positive)
                    if data.test is not None else None)
        baseline = self.baseline(data, strategy, fit_seconds, val_doc, test_doc)
        continual = self.continual(data, trained, test_probs if test_probs is not None else val_probs)
        if not self.info.is_main:
            return None
        timing = {"fit_seconds": fit_seconds, "total_seconds": time.perf_counter() - started,
                  "feature_seconds": trained.timings.get("feature_seconds"),
                  "feature_pass": ctx.feature_passes or None, **trained.timings}
        summary = write_run_dir(
            self.out, cfg=cfg, trained=trained, backbone=self.backbone, strategy=strategy.name, spec=self.spec,
            data=data, history=self.history, val_doc=val_doc, val_probs=val_probs, test_doc=test_doc,
            test_probs=test_probs, baseline=baseline, timing=timing, best_epoch=trained.best_epoch,
            device=str(self.device), world=self.info.world, program=program, threshold_source=source,
            continual=continual, decision=decision)
        self.log(f"wrote {self.out} (report: {self.out / 'report.md'})")
        self.tracking.finish(self.out)
        return summary

    def start_module(self, data: RunData, scratch: bool = False) -> tuple[Any, Any]:
        """The backbone module a strategy starts from and the PreviousRun (``--from``), or None.

        With ``--from`` (and not the scratch baseline) the module holds the
        previous run's backbone weights and the PreviousRun its expanded classifier.
        """
        bcfg = self.cfg.backbone
        if scratch:
            return self.backbone.build(pretrained=False), None
        if self.previous is None:
            return self.backbone.build(pretrained=bcfg.pretrained, weights=bcfg.weights), None
        from edgetl.host.continual import previous_run

        seed_everything(self.cfg.train.seed)  # the new head rows: the same draws in every process
        module = self.backbone.build(pretrained=False)  # every weight comes from the previous run
        return module, previous_run(self.previous, module, self.backbone.feature_dim, data.classes)

    def continual(self, data: RunData, trained: TrainedModel, probs: np.ndarray) -> dict[str, Any] | None:
        """metrics.json's ``continual``: old-class accuracy before/after on test (val without one).

        ``probs``: this run's outputs on that split; the baseline (argmax, as it is evaluated) when one ran.
        """
        if self.previous is None:
            return None
        from edgetl.host.continual import forgetting
        from edgetl.metrics import decide

        split = data.test if data.test is not None else data.val
        old_probs = self.predict(self.previous.model, split, "previous run")
        new_pred = decide(probs, data.classes, trained.threshold, trained.positive)
        return forgetting(self.previous, data.classes, split.name, split.labels, old_probs, probs, new_pred,
                          self.baseline_probs)

    def prior_adjust(self, trained: TrainedModel, data: RunData,
                     val_probs: np.ndarray) -> tuple[dict[str, Any], np.ndarray]:
        """Wrap the model in its class-prior adjustment (:func:`balanced_point`); (decision, adjusted val probs)."""
        from edgetl.metrics import adjust
        from edgetl.training.model import PriorAdjusted

        decision = balanced_point(self.cfg, data.classes, data.train.labels, data.val.labels, val_probs)
        trained.module = PriorAdjusted(trained.module, decision["offsets"])
        row = next(c for c in decision["val_curve"] if c["tau"] == decision["tau"])
        base = decision["val_curve"][0]
        self.log(f"operating point: class-prior adjustment, tau {decision['tau']:g} (from {decision['tau_from']}): "
                 f"val accuracy {row['accuracy']:.3f}, balanced {row['balanced_accuracy']:.3f} (argmax "
                 f"{base['accuracy']:.3f} / {base['balanced_accuracy']:.3f})")
        return decision, adjust(val_probs, decision["offsets"])

    def operating_point(self, strategy: Strategy, trained: TrainedModel, data: RunData,
                        val_probs: np.ndarray) -> str:
        """Set ``trained.threshold``/``positive``: the strategy's own unless the config sets a policy.

        Returns where the threshold came from (``argmax``, ``strategy`` or ``config``) for metrics.json.
        """
        threshold, positive = operating_point(self.cfg, data.classes, data.val.labels, val_probs)
        if self.cfg.train.threshold.policy == "balanced":
            if trained.threshold is not None:
                self.log(f"operating point: train.threshold (balanced) replaces {strategy.name}'s own threshold "
                         f"{trained.threshold:.4f} on '{trained.positive}'")
            trained.threshold, trained.positive = None, None
            return "config"
        if trained.threshold is None:
            trained.threshold, trained.positive = threshold, positive if threshold is not None else trained.positive
            return "config" if threshold is not None else "argmax"
        if threshold is None:
            self.log(f"operating point: {strategy.name}'s own threshold {trained.threshold:.4f} on "
                     f"'{trained.positive}' (train.threshold is argmax)")
            return "strategy"
        self.log(f"operating point: train.threshold ({self.cfg.train.threshold.policy}) wins over "
                 f"{strategy.name}'s own threshold {trained.threshold:.4f}: {threshold:.4f} on '{positive}'")
        trained.threshold, trained.positive = threshold, positive
        return "config"


def format_row(row: dict[str, Any]) -> str:
    """One history row for the log; only the keys present are shown."""
    def num(key: str, label: str, fmt: str) -> str:
        value = row.get(key)
        return f"  {label} {value:{fmt}}" if isinstance(value, (int, float)) else ""

    lrs = [v for k, v in row.items() if k.startswith("lr_") and isinstance(v, (int, float))]
    epoch = row.get("epoch", "?")
    return (f"{row.get('strategy', '?')} epoch {epoch:>3}" + num("train_loss", "loss", ".4f")
            + num("val_loss", "val_loss", ".4f") + num("val_accuracy", "val_acc", ".3f")
            + num("val_balanced_accuracy", "val_bacc", ".3f") + num("val_roc_auc", "val_auc", ".3f")
            + (f"  lr {max(lrs):.2e}" if lrs else "")
            + (f"  {row['epoch_time_s']:.1f}s" if isinstance(row.get("epoch_time_s"), (int, float)) else "")
            + (f" ({row['train_images_per_s']:.1f} img/s)"
               if isinstance(row.get("train_images_per_s"), (int, float)) else "")
            + ("  *" if row.get("best") else ""))


def train_from_file(config_path: str | Path, overrides: tuple[str, ...] = (), out: str | None = None,
                    device: str = "auto", resume: bool = False, force: bool = False, skip_bad: bool = False,
                    log: Callable[[str], None] = print, from_run: str | Path | None = None) -> dict[str, Any] | None:
    """Load ``config_path`` with ``--set`` overrides and train; see :class:`Trainer`."""
    cfg = load_run_config(config_path, list(overrides))
    return Trainer(cfg, Path(out) if out else Path("runs") / cfg.name, device=device, resume=resume,
                   force=force, skip_bad=skip_bad, log=log, from_run=from_run).run()

