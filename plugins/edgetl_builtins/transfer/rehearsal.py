"""``rehearsal``: add classes without forgetting the old ones — an exemplar buffer and/or LwF.

Meant for ``edgetl train CONFIG --from runs/OLD`` (docs/training.md,
"Continual learning"); without ``--from`` it is ``finetune`` that also stores
a buffer, so that a later ``--from`` of the run has exemplars to rehearse.

* **Buffer**: after training, at most ``buffer_size`` images are kept,
  an equal share per class (``buffer_size // K``; a class with fewer images
  keeps all of them), chosen among this run's training images and the
  previous run's exemplars by **herding** on the trained model's pooled
  features (Rebuffi et al. 2017, iCaRL: greedily the image that keeps the
  chosen set's mean feature closest to the class mean; deterministic given
  the weights) or at **random** (seeded by ``train.seed``). The images are
  copied into ``RUN/exemplars/<class>/`` with ``exemplars/index.json``
  (file, label, SHA-256, source), so the next ``--from`` carries them
  forward. Training runs on the new data plus the previous run's exemplars.
* **LwF** (Li & Hoiem 2016, "Learning without Forgetting"): a distillation
  term keeps the new model's outputs on the old classes close to the
  previous model's, on every training batch:
  ``lwf_weight · T² · CE(softmax(log p_old / T), softmax(z_old / T))``,
  with ``p_old`` the previous model's probabilities and ``z_old`` the new
  logits of the old classes. It needs no stored images. After a split
  (``continual.split``) a parent's logit is the log-sum-exp of its
  children's, so the softened sum of the children's probabilities is
  distilled onto the parent's.

Only the classifier is returned (backbone + expanded head): the buffer lives
in the run directory, the teacher is not part of the module.

options (plus finetune's unfreeze, lr_decay, freeze_bn, hidden):
    buffer_size: total exemplars stored (default 200; 0 stores none).
    selection: ``herding`` (default) or ``random``.
    rehearse: train on the previous run's exemplars (default true).
    lwf: add the distillation term (default false; needs ``--from``).
    temperature: T of the distillation (default 2, as in the paper).
    lwf_weight: its factor (default 1).
"""

from __future__ import annotations

import hashlib
import json
import shutil
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from edgetl.api import FitContext, Strategy, TrainedModel
from edgetl.errors import ConfigError
from edgetl.training import DefaultOptions, positive_float, resolve_options
from edgetl_builtins.strategies import COMMON_OPTIONS as COMMON
from edgetl_builtins.strategies import train_finetune

if TYPE_CHECKING:  # numpy loads in the functions: registering the plugin imports no numpy
    import numpy as np

EXEMPLARS = "exemplars"
INDEX = "index.json"


def herding(features: np.ndarray, m: int) -> list[int]:
    """Indices of ``m`` rows chosen by herding (iCaRL): each keeps the running mean nearest the class mean."""
    import numpy as np
    f = features / np.maximum(np.linalg.norm(features, axis=1, keepdims=True), 1e-12)
    mu, chosen, total = f.mean(axis=0), [], np.zeros(f.shape[1])
    free = np.ones(len(f), dtype=bool)
    for k in range(1, min(m, len(f)) + 1):
        dist = np.linalg.norm(mu[None, :] - (total[None, :] + f) / k, axis=1)
        dist[~free] = np.inf
        i = int(np.argmin(dist))  # ties: the lowest index, so the choice is deterministic
        chosen.append(i)
        free[i] = False
        total += f[i]
    return chosen


def select(labels: np.ndarray, features: np.ndarray | None, k: int, buffer_size: int, seed: int) -> list[int]:
    """Per class ``buffer_size // k`` indices (all when fewer), by herding (features given) or at random."""
    import numpy as np
    per = buffer_size // k
    rng = np.random.default_rng(seed)
    out: list[int] = []
    for c in range(k):
        idx = np.flatnonzero(labels == c)
        if features is not None:
            out += [int(idx[i]) for i in herding(features[idx], per)]
        else:
            out += [int(i) for i in rng.permutation(idx)[:per]]
    return out


def write_buffer(run_dir: Path, items: list[tuple[Path, str]], facts: dict[str, Any]) -> int:
    """Copy the exemplar images into ``run_dir/exemplars/<class>/`` with ``index.json``; returns the count.

    Written to a temporary folder first and then renamed, so a run directory
    holds either the whole new buffer or none (the engine reads the index and
    checks each file's SHA-256 when a later run continues from this one).
    """
    tmp, final = run_dir / (EXEMPLARS + ".tmp"), run_dir / EXEMPLARS
    shutil.rmtree(tmp, ignore_errors=True)
    rows = []
    for i, (src, label) in enumerate(items):
        data = Path(src).read_bytes()
        digest = hashlib.sha256(data).hexdigest()
        rel = Path(EXEMPLARS) / label / f"{i:05d}-{digest[:12]}{Path(src).suffix.lower()}"
        (tmp / rel.relative_to(EXEMPLARS)).parent.mkdir(parents=True, exist_ok=True)
        (tmp / rel.relative_to(EXEMPLARS)).write_bytes(data)
        rows.append({"file": rel.as_posix(), "label": label, "sha256": digest, "source": str(src)})
    counts = {label: sum(r["label"] == label for r in rows) for label in dict.fromkeys(r["label"] for r in rows)}
    doc = {"format": 1, **facts, "counts": counts, "items": rows}
    (tmp / INDEX).write_text(json.dumps(doc, indent=1), encoding="utf-8")
    shutil.rmtree(final, ignore_errors=True)
    tmp.replace(final)
    return len(rows)


def old_classes(prev: Any, labels: list[str]) -> Any:
    """(K_old, K) 0/1 matrix: row j marks the classes of this run that make up previous class j."""
    import torch

    groups = torch.zeros(len(prev.labels), len(labels))
    for i, label in enumerate(labels):
        parent = prev.parent(label)
        if parent is not None:
            groups[prev.labels.index(parent), i] = 1.0
    return groups


def distillation(teacher: Any, groups: Any, temperature: float, weight: float) -> Any:
    """The LwF term as an ``edgetl.training.Callback``; ``groups``: :func:`old_classes`.

    A previous class's student logit is the log-sum-exp of its classes' logits
    (the class's own logit when it was not split).
    """
    import torch

    from edgetl.training import Callback

    mask = torch.log(groups)  # 0 where a class belongs to the previous class, -inf elsewhere

    class Distill(Callback):
        def extra_loss(self, model, x, y, logits):
            with torch.no_grad():
                soft = torch.softmax(torch.log(teacher(x).float().clamp_min(1e-8)) / temperature, dim=1)
            z = logits.float()[:, None, :] / temperature + mask.to(logits.device)[None]
            student = torch.log_softmax(torch.logsumexp(z, dim=2), dim=1)
            return weight * temperature ** 2 * -(soft * student).sum(dim=1).mean()

    return Distill()


class Rehearsal(DefaultOptions, Strategy):
    name = "rehearsal"
    description = "continual learning: fine-tune on new data + a class-balanced exemplar buffer, optional LwF"
    requires = ("torch",)
    extra = "train"
    DEFAULTS = {"buffer_size": 200, "selection": "herding", "rehearse": True, "lwf": False, "temperature": 2.0,
                "lwf_weight": 1.0, "unfreeze": "all", **COMMON}

    def options(self, ctx: FitContext) -> dict[str, Any]:
        opts = resolve_options(self.name, ctx.options, self.DEFAULTS)
        size = opts["buffer_size"]
        if isinstance(size, bool) or not isinstance(size, int) or size < 0:
            raise ConfigError(f"strategy.options.buffer_size: expected a whole number >= 0, got {size!r}")
        if opts["selection"] not in ("herding", "random"):
            raise ConfigError(f"strategy.options.selection: expected herding or random, got {opts['selection']!r}")
        for key in ("rehearse", "lwf"):
            if not isinstance(opts[key], bool):
                raise ConfigError(f"strategy.options.{key}: expected true or false, got {opts[key]!r}")
        opts["temperature"] = positive_float(self.name, "temperature", opts["temperature"])
        opts["lwf_weight"] = positive_float(self.name, "lwf_weight", opts["lwf_weight"])
        if opts["lwf"] and ctx.previous is None:
            raise ConfigError("strategy.options.lwf: distillation needs a previous run (edgetl train --from RUN)")
        return opts

    def fit(self, ctx: FitContext) -> TrainedModel:
        from edgetl.training import with_images

        opts = self.options(ctx)
        prev = ctx.previous
        # the engine has dropped the exemplars of split classes (no child label to give them)
        old = [(p, ctx.labels.index(label)) for p, label in (prev.exemplars if prev else [])]
        train = with_images(ctx, old) if opts["rehearse"] else ctx.train
        callbacks = ()
        if opts["lwf"]:
            teacher = prev.model.to(ctx.device).eval()
            callbacks = (distillation(teacher, old_classes(prev, ctx.labels), opts["temperature"],
                                      opts["lwf_weight"]),)
        ctx.progress(f"rehearsal: {len(ctx.train)} new images + {len(train) - len(ctx.train)} stored exemplars"
                     + (f", LwF (T {opts['temperature']:g}, weight {opts['lwf_weight']:g})" if opts["lwf"] else ""),
                     0, ctx.config.train.epochs)
        model, stopper = train_finetune(ctx, self.name, opts, train=train, callbacks=callbacks)
        t0 = time.perf_counter()
        stored = self.store(ctx, model, train if opts["rehearse"] else with_images(ctx, old), opts)
        extra = {"buffer_size": opts["buffer_size"], "buffer_per_class": opts["buffer_size"] // len(ctx.labels),
                 "selection": opts["selection"], "exemplars_rehearsed": len(train) - len(ctx.train),
                 "exemplars_stored": stored, "lwf": opts["lwf"]}
        if opts["lwf"]:
            extra.update(temperature=opts["temperature"], lwf_weight=opts["lwf_weight"])
        return TrainedModel(module=model, task="classify", labels=list(ctx.labels), best_epoch=stopper.best_epoch,
                            extra=extra, timings={"buffer_seconds": time.perf_counter() - t0})

    def store(self, ctx: FitContext, model: Any, pool: Any, opts: dict[str, Any]) -> int:
        """Choose the buffer among ``pool`` (new training images + old exemplars) and write it to the run."""
        from edgetl.training import predict

        if opts["buffer_size"] == 0 or ctx.run_dir is None:
            return 0
        features = None
        if opts["selection"] == "herding":
            model.eval()
            features = predict(model.features, pool.plain, ctx.device, info=ctx.dist)
        chosen = select(pool.labels, features, len(ctx.labels), opts["buffer_size"], ctx.config.train.seed)
        items = [(pool.paths[i], ctx.labels[int(pool.labels[i])]) for i in chosen]
        if ctx.dist.is_main:
            write_buffer(ctx.run_dir, items, {"buffer_size": opts["buffer_size"], "selection": opts["selection"],
                                              "seed": ctx.config.train.seed})
        return len(items)
