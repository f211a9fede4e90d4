"""Device half of the TensorRT target: build (once, with progress), cache, run (no torch).

Uses the TensorRT 10 Python API and cuda-python's runtime bindings:
``Builder`` -> ``create_network(STRONGLY_TYPED)`` -> ``OnnxParser`` -> builder
config (workspace pool, DLA core, explicit optimisation profile, an
``IProgressMonitor``) -> ``build_serialized_network``; the plan is cached under
a key of (GPU name and compute capability, TensorRT version, bundle hash), so
a driver/TensorRT upgrade or a new bundle rebuilds, and nothing else does.
Strongly typed means the ONNX decides every tensor's type: FP32, FP16 (the
host's float16 ONNX) or INT8 (the host's explicit Q/DQ ONNX); no implicit
calibration, which TensorRT 10 deprecates.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from edgetl.api import Runtime
from edgetl.errors import BundleError, MissingDependencyError

if TYPE_CHECKING:  # pragma: no cover - typing only
    from edgetl.manifest import Manifest

log = logging.getLogger("edgetl.tensorrt")
Progress = Callable[[str, int, int], None]


def version_tuple(text: str) -> tuple[int, ...]:
    return tuple(int(p) for p in str(text).split("+")[0].split(".")[:3] if p.isdigit())


def check_compat(build: dict[str, Any], trt_version: str, dla_cores: int) -> None:
    """Refuse what this device cannot build, with the reason (version too old, no such DLA core)."""
    need = build.get("min_tensorrt", "10.0")
    if version_tuple(trt_version) < version_tuple(need):
        raise BundleError(f"incompatible: the bundle needs TensorRT >= {need} (strongly typed, explicit INT8); "
                          f"this device has {trt_version} (JetPack 6 ships TensorRT 10)")
    core = build.get("dla_core")
    if core is not None and core >= dla_cores:
        raise BundleError(f"incompatible: the bundle asks for DLA core {core}; this device has {dla_cores} DLA cores")


def cache_key(gpu: dict[str, Any], trt_version: str, files: dict[str, str], build: dict[str, Any] | None) -> str:
    """SHA-256 of (GPU name + compute capability, TensorRT version, bundle hash + build settings).

    ``files`` is the manifest's member -> SHA-256 map, ``build`` its ``target.build``.
    """
    bundle_hash = hashlib.sha256(json.dumps([files, build],
                                            sort_keys=True).encode()).hexdigest()
    text = json.dumps({"gpu": gpu, "tensorrt": trt_version, "bundle": bundle_hash}, sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()


def cache_dir(options: dict[str, Any]) -> Path:
    path = options.get("engine_cache") or os.environ.get("EDGETL_TRT_CACHE") \
        or Path.home() / ".cache" / "edgetl" / "tensorrt"
    return Path(path)


def _cudart():
    try:
        from cuda.bindings import runtime as cudart  # cuda-python >= 12.6
    except ImportError:
        try:
            from cuda import cudart  # older cuda-python
        except ImportError:
            raise MissingDependencyError("cuda-python", "tensorrt", "the TensorRT runtime's GPU buffers") from None
    return cudart


def _check(result: Any) -> Any:
    err, *rest = result if isinstance(result, tuple) else (result,)
    if int(err) != 0:
        raise BundleError(f"CUDA error {err}")
    return rest[0] if len(rest) == 1 else rest


def gpu_facts() -> dict[str, Any]:
    cudart = _cudart()
    device = _check(cudart.cudaGetDevice())
    prop = _check(cudart.cudaGetDeviceProperties(device))
    name = prop.name.decode(errors="replace").rstrip("\x00") if isinstance(prop.name, bytes) else str(prop.name)
    return {"name": name, "compute_capability": f"{prop.major}.{prop.minor}"}


def _monitor(trt: Any, progress: Progress):
    class Monitor(trt.IProgressMonitor):
        """Forwards TensorRT's build phases to ``progress(phase, step, steps)``; thread-safe enough for counters."""

        def __init__(self):
            trt.IProgressMonitor.__init__(self)
            self.steps: dict[str, int] = {}

        def phase_start(self, phase_name, parent_phase, num_steps):
            self.steps[phase_name] = num_steps
            progress(phase_name, 0, num_steps)

        def step_complete(self, phase_name, step):
            progress(phase_name, step + 1, self.steps.get(phase_name, 0))
            return True  # False would cancel the build

        def phase_finish(self, phase_name):
            progress(phase_name, self.steps.get(phase_name, 0), self.steps.get(phase_name, 0))

    return Monitor()


def build_engine(trt: Any, onnx_path: Path, build: dict[str, Any], progress: Progress) -> bytes:
    """Parse the ONNX into a strongly typed network and build a serialized engine (plan)."""
    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    network = builder.create_network(1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED))
    parser = trt.OnnxParser(network, logger)
    if not parser.parse(Path(onnx_path).read_bytes()):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise BundleError(f"{onnx_path}: TensorRT cannot parse the ONNX model: {errors}")
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(build.get("workspace_mb", 1024)) << 20)
    if build.get("dla_core") is not None:
        config.default_device_type = trt.DeviceType.DLA
        config.DLA_core = int(build["dla_core"])
        config.set_flag(trt.BuilderFlag.GPU_FALLBACK)
    shapes = build.get("optimization_profile") or {}
    profile = builder.create_optimization_profile()
    for i in range(network.num_inputs):
        tensor = network.get_input(i)
        chw = tuple(tensor.shape)[1:]
        profile.set_shape(tensor.name, (shapes.get("min_batch", 1), *chw), (shapes.get("opt_batch", 1), *chw),
                          (shapes.get("max_batch", 1), *chw))
    config.add_optimization_profile(profile)
    monitor = _monitor(trt, progress)
    config.progress_monitor = monitor
    plan = builder.build_serialized_network(network, config)
    if plan is None:
        raise BundleError(f"{onnx_path}: TensorRT failed to build an engine (see the TensorRT log above)")
    return bytes(plan)


class TensorRtModel(Runtime):
    """A deserialized engine with one execution context and device buffers sized for the max batch."""

    def __init__(self, trt: Any, plan: bytes, info: dict[str, Any]):
        self.cudart = _cudart()
        self.runtime = trt.Runtime(trt.Logger(trt.Logger.WARNING))
        self.engine = self.runtime.deserialize_cuda_engine(plan)
        if self.engine is None:
            raise BundleError("the cached TensorRT engine could not be deserialized")
        self.context = self.engine.create_execution_context()
        names = [self.engine.get_tensor_name(i) for i in range(self.engine.num_io_tensors)]
        self.inputs = [n for n in names if self.engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT]
        self.outputs = [n for n in names if n not in self.inputs]
        self.dtypes = {n: np.dtype(trt.nptype(self.engine.get_tensor_dtype(n))) for n in names}
        shape = tuple(self.engine.get_tensor_profile_shape(self.inputs[0], 0)[2])  # max shape of profile 0
        self.max_batch = shape[0]
        self.fixed_batch = shape[0] if tuple(self.engine.get_tensor_shape(self.inputs[0]))[0] != -1 else None
        self.stream = _check(self.cudart.cudaStreamCreate())
        self.buffers: dict[str, int] = {}
        self.context.set_input_shape(self.inputs[0], shape)
        for name in names:
            size = int(np.prod(self.context.get_tensor_shape(name))) * self.dtypes[name].itemsize
            self.buffers[name] = _check(self.cudart.cudaMalloc(size))
            self.context.set_tensor_address(name, self.buffers[name])
        self._info = info

    def _run(self, batch: np.ndarray) -> np.ndarray:
        cudart = self.cudart
        name_in, name_out = self.inputs[0], self.outputs[0]
        batch = np.ascontiguousarray(batch, dtype=self.dtypes[name_in])
        self.context.set_input_shape(name_in, batch.shape)
        out = np.empty(tuple(self.context.get_tensor_shape(name_out)), dtype=self.dtypes[name_out])
        h2d, d2h = cudart.cudaMemcpyKind.cudaMemcpyHostToDevice, cudart.cudaMemcpyKind.cudaMemcpyDeviceToHost
        _check(cudart.cudaMemcpyAsync(self.buffers[name_in], batch.ctypes.data, batch.nbytes, h2d, self.stream))
        if not self.context.execute_async_v3(self.stream):
            raise BundleError("TensorRT execution failed")
        _check(cudart.cudaMemcpyAsync(out.ctypes.data, self.buffers[name_out], out.nbytes, d2h, self.stream))
        _check(cudart.cudaStreamSynchronize(self.stream))
        return out.astype(np.float32)

    def predict(self, batch: np.ndarray) -> np.ndarray:
        from edgetl.onnxtools import run_static

        batch = np.asarray(batch, dtype=np.float32)
        chunk = self.fixed_batch or (None if len(batch) <= self.max_batch else self.max_batch)
        return run_static(self._run, batch, chunk)

    def info(self) -> dict[str, Any]:
        return dict(self._info)

    def close(self) -> None:
        for ptr in self.buffers.values():
            self.cudart.cudaFree(ptr)
        self.buffers = {}
        if getattr(self, "stream", None) is not None:
            self.cudart.cudaStreamDestroy(self.stream)
            self.stream = None


def load(files: Sequence[Path], manifest: Manifest, options: dict[str, Any] | None = None) -> Runtime:
    """Build (or reuse the cached) engine for this GPU and TensorRT version, and load it."""
    options = dict(options or {})
    try:
        import tensorrt as trt
    except ImportError:
        raise MissingDependencyError("tensorrt", "tensorrt", "target 'tensorrt' (on Jetson it comes with "
                                     "JetPack 6: python3-libnvinfer)") from None
    build = manifest.target.build or {}
    onnx_path = next((Path(f) for f in files if str(f).endswith(".onnx")), None)
    if onnx_path is None:
        raise BundleError("the bundle's target files hold no .onnx model for TensorRT to build from")
    builder = trt.Builder(trt.Logger(trt.Logger.WARNING))
    check_compat(build, trt.__version__, int(getattr(builder, "num_DLA_cores", 0)))
    gpu = gpu_facts()
    key = cache_key(gpu, trt.__version__, manifest.files, manifest.target.build)
    folder = cache_dir(options)
    plan_path = folder / f"{key}.plan"
    progress: Progress = options.get("progress") or (
        lambda phase, done, total: log.info("tensorrt build: %s %d/%d", phase, done, total))
    info = {"runtime": "tensorrt", "version": trt.__version__, "gpu": gpu, "precision": manifest.target.precision,
            "engine_cache": str(plan_path)}
    if plan_path.is_file():
        try:
            return TensorRtModel(trt, plan_path.read_bytes(), {**info, "engine": "cached"})
        except BundleError:
            log.warning("cached engine %s is unusable; rebuilding", plan_path)
    start = time.perf_counter()
    plan = build_engine(trt, onnx_path, build, progress)
    folder.mkdir(parents=True, exist_ok=True)
    tmp = plan_path.with_suffix(".plan.tmp")
    tmp.write_bytes(plan)
    tmp.replace(plan_path)
    plan_path.with_suffix(".json").write_text(json.dumps(
        {"gpu": gpu, "tensorrt": trt.__version__, "model_version": manifest.model_version,
         "build": build, "seconds": time.perf_counter() - start}, indent=2))
    return TensorRtModel(trt, plan, {**info, "engine": "built", "build_seconds": time.perf_counter() - start})
