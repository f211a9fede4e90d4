"""The last export stages: reference set, manifest, signature, atomic write.

The reference set is 16–32 raw validation images (stratified by class) with
the outputs the *exported* runtime gave on this host, so a device checks its
own runtime against what was gated here — not against torch.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import platform
import time
from pathlib import Path
from typing import Any

import numpy as np

from edgetl import fmt
from edgetl.manifest import SCHEMA_VERSION
from edgetl.reference import TOLERANCES, run_images, run_maps

MIN_REFERENCE = 16


def data_fingerprint(paths: list[Path]) -> str:
    """SHA-256 over (file name, size) of the images the gate used: changes when the data does."""
    h = hashlib.sha256()
    for p in sorted(paths):
        h.update(f"{p.parent.name}/{p.name}:{p.stat().st_size}\n".encode())
    return h.hexdigest()


def reference_members(val: Any, labels: list[str], spec: Any, runtime: Any, count: int,
                      precision: str) -> tuple[dict[str, bytes], dict[str, Any]]:
    """Pick, run and package the reference images; returns (members, manifest ``reference`` section)."""
    from edgetl.host.calibration import stratified

    idx = stratified(val.labels, max(min(count, len(val)), min(MIN_REFERENCE, len(val))))
    paths = [val.paths[i] for i in idx]
    outputs = run_images(paths, spec, runtime)
    maps = run_maps(paths, spec, runtime)
    members: dict[str, bytes] = {}
    images = []
    for n, (i, path, out, amap) in enumerate(zip(idx, paths, outputs, maps, strict=True)):
        name = f"reference/{n:03d}{path.suffix.lower()}"
        members[name] = path.read_bytes()
        images.append({"file": name, "label": labels[int(val.labels[i])], "source": path.name,
                       "output": np.asarray(out, dtype=np.float32).round(7).tolist(),
                       **({"map": amap.round(6).tolist()} if amap is not None else {})})
    members["reference/outputs.json"] = (json.dumps({"images": images}, indent=1) + "\n").encode()
    section = {"outputs": "reference/outputs.json", "count": len(images), "precision": precision,
               "tolerance": dict(TOLERANCES[precision])}
    return members, section


def model_members(files: list[Path]) -> dict[str, Path]:
    """Bundle member name (``model/<file name>``) -> file, for the target's files."""
    return {f"model/{Path(f).name}": Path(f) for f in files}


def draft_manifest(*, run: Any, target: Any, profile: Any, step: Any, files: list[Path], spec: Any,
                   runtime_settings: dict[str, Any], model_version: str | None) -> dict[str, Any]:
    """The manifest of a bundle holding ``files``: everything but the export record and reference set.

    The gate loads every attempt through this same manifest (validated), so a
    target sees on the host exactly what it will see on the device.
    """
    from edgetl.bundle import sha256_bytes
    from edgetl.cpuinfo import cpu_info

    members = model_members(files)
    digests = {name: sha256_bytes(path.read_bytes()) for name, path in sorted(members.items())}
    now = dt.datetime.now(dt.timezone.utc)
    digest = hashlib.sha256("".join(digests.values()).encode()).hexdigest()[:7]
    return {
        "schema_version": SCHEMA_VERSION, "name": run.name,
        "model_version": model_version or f"{run.name}-{now:%Y%m%d}-{digest}",
        "created": now.isoformat(timespec="seconds"), "bundle_version": int(now.timestamp() * 1000),
        "task": run.task, "labels": list(run.labels),
        "threshold": run.threshold, "positive": run.positive, "output": run.output,
        "input": run.input.to_dict(),
        "target": {"format": target.name, "precision": step.precision, "method": step.method,
                   "files": sorted(members), "profile": profile.name if profile is not None else None,
                   "runtime": runtime_settings, "batch": spec.batch, "dynamic_batch": spec.dynamic_batch,
                   "build": target.build_settings(profile, step, spec),
                   "requires": list(target.requires), "extra": target.extra},
        "compat": {"arch": profile.arch if profile is not None else platform.machine(),
                   "host_arch": platform.machine(), "gpu": getattr(profile, "gpu", None),
                   "runtimes": target.facts(), "host_cpu": cpu_info(), "python": platform.python_version()},
        "files": digests,
    }


def _export_section(options: Any, val: Any, attempts: list[dict[str, Any]], stages: list[dict[str, Any]],
                    calib_count: int, batch: int, torch_latency: float | None, cpu: str) -> dict[str, Any]:
    gate = {"split": "val", "n": len(val), "max_drop_points": options.gate, "min_agreement": options.min_agreement}
    if getattr(options, "gate_slices", False):  # attribute names; each attempt's figures are under its "slices"
        gate["slices"] = sorted({name for a in attempts for name in a.get("slices") or {}})
    return {"gate": gate,
            "requested_precision": options.precision, "fallback": options.fallback,
            "calibration": {"source": "train", "images": calib_count},
            "attempts": attempts, "stages": stages,
            "latency_ms": {"exported": next(a.get("latency_ms") for a in attempts if a["passed"]),
                           "torch_fp32": torch_latency, "batch": batch, "cpu": cpu}}


def build_and_write(*, run: Any, draft: dict[str, Any], files: list[Path], runtime: Any, val: Any, options: Any,
                    attempts: list[dict[str, Any]], stages: list[dict[str, Any]], export_report: dict[str, Any],
                    private_key: Any, calib_count: int, torch_latency: float | None) -> tuple[Path, Any, Any]:
    """Reference set + manifest + signature; write the bundle atomically.

    Returns:
        (bundle path, the written :class:`edgetl.manifest.Manifest`, the signature document or None).
    """
    import torch

    from edgetl import __version__
    from edgetl.bundle import write_bundle
    from edgetl.manifest import as_manifest

    say = options.progress
    t = time.perf_counter()
    precision = draft["target"]["precision"]
    ref_members, ref_section = reference_members(val, run.labels, run.input, runtime, options.reference_count,
                                                 precision)
    stages.append({"stage": "reference", "seconds": time.perf_counter() - t,
                   "size_bytes": sum(len(b) for b in ref_members.values())})
    tol = ref_section["tolerance"]
    say(f"reference {stages[-1]['seconds']:6.1f} s  {ref_section['count']} images, tolerance: label agreement "
        f">= {fmt.prob(tol['label_agreement'])}, |score diff| <= {fmt.tol(tol['max_abs_diff'])}")
    members: dict[str, bytes | Path] = {**model_members(files), **ref_members}
    manifest = {
        **draft, "files": {}, "reference": ref_section,
        "provenance": {"run": run.name, "backbone": run.backbone, "strategy": run.strategy,
                       "data_fingerprint": data_fingerprint(val.paths), "config": run.config,
                       "edgetl": __version__, "torch": torch.__version__, "exporter": export_report},
        "export": _export_section(options, val, attempts, stages, calib_count, draft["target"]["batch"],
                                  torch_latency, draft["compat"]["host_cpu"]["model"]),
    }
    out = Path(options.out) if options.out else Path(f"{run.name}-{draft['target']['format']}.edgetl")
    t = time.perf_counter()
    write_bundle(out, manifest, members, private_key=private_key)
    _say_written(say, stages, out, private_key, time.perf_counter() - t)
    from edgetl.bundle import open_bundle

    with open_bundle(out) as written:
        return out, as_manifest(written.manifest), written.signature


def _say_written(say: Any, stages: list[dict[str, Any]], out: Path, private_key: Any, seconds: float) -> None:
    from edgetl.keys import key_id

    stages.append({"stage": "sign+write" if private_key is not None else "write",
                   "seconds": seconds, "size_bytes": out.stat().st_size})
    say(f"{'sign' if private_key is not None else 'write':<9} {seconds:6.1f} s  "
        f"{out.stat().st_size / 1e6:7.2f} MB  {out}"
        + (f" (key {key_id(private_key)[:16]}…)" if private_key is not None else " (unsigned)"))
