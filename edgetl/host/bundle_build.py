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


def build_and_write(*, run: Any, target: Any, profile: Any, step: Any, files: list[Path], runtime: Any,
                    val: Any, options: Any, attempts: list[dict[str, Any]], stages: list[dict[str, Any]],
                    export_report: dict[str, Any], batch: int, dynamic: bool, runtime_settings: dict[str, Any],
                    private_key: Any, calib_count: int, torch_latency: float | None) -> tuple[Path, dict[str, Any], Any]:
    """Reference set + manifest + signature; write the bundle atomically; return (path, manifest, signature)."""
    import torch

    from edgetl import __version__
    from edgetl.bundle import write_bundle
    from edgetl.cpuinfo import cpu_info
    from edgetl.keys import key_id

    say = options.progress
    t = time.perf_counter()
    ref_members, ref_section = reference_members(val, run.labels, run.input, runtime, options.reference_count,
                                                 step.precision)
    stages.append({"stage": "reference", "seconds": time.perf_counter() - t,
                   "size_bytes": sum(len(b) for b in ref_members.values())})
    tol = ref_section["tolerance"]
    say(f"reference {stages[-1]['seconds']:6.1f} s  {ref_section['count']} images, tolerance: label agreement "
        f">= {tol['label_agreement']:g}, |score diff| <= {tol['max_abs_diff']:g}")

    members: dict[str, bytes | Path] = {f"model/{Path(f).name}": Path(f) for f in files}
    members.update(ref_members)
    digest = hashlib.sha256(b"".join(Path(f).read_bytes() for f in files)).hexdigest()[:7]
    now = dt.datetime.now(dt.timezone.utc)
    model_version = options.model_version or f"{run.name}-{now:%Y%m%d}-{digest}"
    build = target.build_settings(profile, step, {"batch": batch, "dynamic_batch": dynamic}) \
        if hasattr(target, "build_settings") else None
    cpu = cpu_info()
    manifest: dict[str, Any] = {
        "schema_version": SCHEMA_VERSION, "name": run.name, "model_version": model_version,
        "created": now.isoformat(timespec="seconds"), "task": run.task, "labels": list(run.labels),
        "threshold": run.threshold, "positive": run.positive, "output": run.output,
        "input": run.input.to_dict(),
        "target": {"format": target.name, "precision": step.precision, "method": step.method,
                   "files": sorted(n for n in members if n.startswith("model/")),
                   "profile": profile.name if profile is not None else None, "runtime": runtime_settings,
                   "batch": batch, "dynamic_batch": dynamic, "build": build,
                   "requires": list(target.requires), "extra": target.extra},
        "compat": {"arch": platform.machine(), "runtimes": target.facts(), "host_cpu": cpu,
                   "python": platform.python_version()},
        "files": {},
        "provenance": {"run": run.name, "backbone": run.backbone, "strategy": run.strategy,
                       "data_fingerprint": data_fingerprint(val.paths), "config": run.config,
                       "edgetl": __version__, "torch": torch.__version__, "exporter": export_report},
        "export": {"gate": {"split": "val", "n": len(val), "max_drop_points": options.gate,
                            "min_agreement": options.min_agreement},
                   "requested_precision": options.precision, "fallback": options.fallback,
                   "calibration": {"source": "train", "images": calib_count},
                   "attempts": attempts, "stages": stages,
                   "latency_ms": {"exported": next(a.get("latency_ms") for a in attempts if a["passed"]),
                                  "torch_fp32": torch_latency, "batch": batch, "cpu": cpu["model"]}},
        "reference": ref_section,
    }
    out = Path(options.out) if options.out else Path(f"{run.name}-{target.name}.edgetl")
    t = time.perf_counter()
    write_bundle(out, manifest, members, private_key=private_key)
    stages.append({"stage": "sign+write" if private_key is not None else "write",
                   "seconds": time.perf_counter() - t, "size_bytes": out.stat().st_size})
    say(f"{'sign' if private_key is not None else 'write':<9} {stages[-1]['seconds']:6.1f} s  "
        f"{out.stat().st_size / 1e6:7.2f} MB  {out}"
        + (f" (key {key_id(private_key)[:16]}…)" if private_key is not None else " (unsigned)"))
    from edgetl.bundle import open_bundle

    with open_bundle(out) as written:
        return out, written.manifest, written.signature
