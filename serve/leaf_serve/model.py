"""Model holder: one ONNX Runtime session per version; ``load()``, ``predict()``, ``ready``."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from leaf_common.contract import ModelContract
from leaf_common.resources import available_cpus

from .errors import ModelLoadError
from .trust import Scores

if TYPE_CHECKING:
    from .settings import ServeConfig

log = logging.getLogger(__name__)

CPU = "CPUExecutionProvider"
CUDA = "CUDAExecutionProvider"
TENSORRT = "TensorrtExecutionProvider"
GPU_PROVIDERS = (CUDA, TENSORRT)
_SHORT_NAMES = {"cpu": CPU, "cuda": CUDA, "tensorrt": TENSORRT, "trt": TENSORRT}
IO_BINDING = ("auto", "on", "off")
PAD_BATCHES = IO_BINDING
_NUMPY_DTYPES = {"float32": np.float32, "float16": np.float16, "uint8": np.uint8}


def provider_options(
    name: str, device_id: int, trt_engine_cache_path: str = "", trt_fp16: bool = False
) -> dict:
    """ONNX Runtime options of one GPU execution provider.

    Args:
        name: ``CUDAExecutionProvider`` or ``TensorrtExecutionProvider``.
        device_id: CUDA device index.
        trt_engine_cache_path: folder for TensorRT's engine and timing caches; empty = no cache.
            Building an engine for VGG16 takes minutes, so a cache on a volume makes restarts and
            reloads fast.
        trt_fp16: let TensorRT pick FP16 kernels (faster on Tensor Cores, slightly different
            numbers).

    Raises:
        ModelLoadError: ``name`` is not a GPU provider.
    """
    if name not in GPU_PROVIDERS:
        raise ModelLoadError(
            f"provider options: expected one of {', '.join(GPU_PROVIDERS)}; received {name!r}"
        )
    options: dict[str, Any] = {"device_id": device_id}
    if name == TENSORRT:
        if trt_engine_cache_path:
            options |= {
                "trt_engine_cache_enable": True,
                "trt_engine_cache_path": trt_engine_cache_path,
                "trt_timing_cache_enable": True,
                "trt_timing_cache_path": trt_engine_cache_path,
            }
        if trt_fp16:
            options["trt_fp16_enable"] = True
    return options


def resolve_providers(
    requested: list[str],
    available: list[str],
    device_id: int,
    *,
    trt_engine_cache_path: str = "",
    trt_fp16: bool = False,
) -> list[Any]:
    """Turn ``auto`` / short names into the ORT provider list, keeping only installed providers.

    Args:
        requested: names from the config, e.g. ``["auto"]`` or ``["tensorrt", "cpu"]``.
        available: ``onnxruntime.get_available_providers()``.
        device_id: CUDA device used by the GPU providers.
        trt_engine_cache_path: TensorRT engine cache folder (see :func:`provider_options`).
        trt_fp16: TensorRT FP16 engines.

    Raises:
        ModelLoadError: an unknown provider name, or nothing usable remains.
    """
    names = _provider_names(requested)
    chosen = [n for i, n in enumerate(names) if n in available and n not in names[:i]]
    missing = sorted(set(names) - set(available))
    if missing:
        log.info("execution providers not installed here, skipped: %s", ", ".join(missing))
    if not chosen:
        raise ModelLoadError(f"providers: none of {names} is installed; available: {available}")
    return [
        (n, provider_options(n, device_id, trt_engine_cache_path, trt_fp16))
        if n in GPU_PROVIDERS
        else n
        for n in chosen
    ]


def _provider_names(requested: list[str]) -> list[str]:
    """ORT provider names for the config's names, in order (``auto`` and short names expanded)."""
    names: list[str] = []
    for raw in requested:
        low = raw.strip().lower()
        if low == "auto":
            names += [CUDA, CPU]
        elif low == "tensorrt":
            names += [TENSORRT, CUDA]  # TensorRT hands unsupported nodes to CUDA, not to CPU
        elif low in _SHORT_NAMES:
            names.append(_SHORT_NAMES[low])
        elif raw.strip().endswith("ExecutionProvider"):
            names.append(raw.strip())
        else:
            raise ModelLoadError(
                "providers: expected auto, tensorrt, cuda, cpu or an ORT provider name; got "
                f"{raw!r}"
            )
    return names


@dataclass(frozen=True)
class RuntimeOptions:
    """How ONNX Runtime runs every version this server loads; see :meth:`from_config`.

    Each field is the ``ServeConfig`` option of the same name (documented there).
    """

    providers: tuple[str, ...] = ("auto",)
    device_id: int = 0
    intra_op_threads: int = 0  # 0 = the container's CPU quota
    intra_op_spinning: bool = False
    io_binding: str = "auto"  # one of IO_BINDING
    pad_batches: str = "off"  # one of PAD_BATCHES
    max_batch_size: int = 8  # what pad_batches pads to
    trt_engine_cache_path: str = ""
    trt_fp16: bool = False

    def __post_init__(self) -> None:
        if self.io_binding not in IO_BINDING:
            raise ModelLoadError(
                f"io_binding: expected one of {', '.join(IO_BINDING)}; received {self.io_binding!r}"
            )
        if self.pad_batches not in PAD_BATCHES:
            raise ModelLoadError(
                f"pad_batches: expected one of {', '.join(PAD_BATCHES)}; received "
                f"{self.pad_batches!r}"
            )

    @classmethod
    def from_config(cls, config: ServeConfig) -> RuntimeOptions:
        return cls(
            providers=tuple(config.providers) or ("auto",),
            device_id=config.device_id,
            intra_op_threads=config.intra_op_threads,
            intra_op_spinning=config.intra_op_spinning,
            io_binding=config.io_binding,
            pad_batches=config.pad_batches,
            max_batch_size=config.max_batch_size,
            trt_engine_cache_path=config.trt_engine_cache_path,
            trt_fp16=config.trt_fp16,
        )


class OnnxModel:
    """One model version: its contract and a single InferenceSession created in :meth:`load`."""

    def __init__(
        self,
        model_bytes: bytes,
        contract: ModelContract,
        options: RuntimeOptions = RuntimeOptions(),
        *,
        model_file: str = "",
    ):
        """``model_file``: the file the bytes came from (e.g. ``model.fp16.onnx``), for logs."""
        self.contract = contract
        self.options = options
        self.model_file = model_file or contract.model_file
        self._model_bytes: bytes | None = model_bytes
        self._session: Any = None
        self.provider = ""  # the execution provider actually in use, reported in metadata
        self.io_binding = False  # whether predict() binds buffers on the device (decided in load())
        # Rows every run is padded to; 0 = batches run at their own size (decided in load())
        self.pad_to = 0
        self.input_dtype = _NUMPY_DTYPES.get(contract.input.dtype, np.float32)

    @property
    def ready(self) -> bool:
        return self._session is not None

    @property
    def uses_gpu(self) -> bool:
        return self.provider in GPU_PROVIDERS

    def load(self) -> None:
        """Create the session and check the graph against the contract.

        Raises:
            ModelLoadError: the bytes are not a valid ONNX model, or the graph and contract
            disagree.
        """
        import onnxruntime as ort

        options = _session_options(ort, self.options)
        providers = self._providers(ort)
        try:
            session = ort.InferenceSession(
                self._model_bytes, sess_options=options, providers=providers
            )
        except Exception as e:  # ORT raises its own Fail/InvalidGraph/... types for corrupt models
            raise ModelLoadError(
                f"{self.contract.model_file}: ONNX Runtime cannot load it: {e}"
            ) from e
        self._check_graph(session)
        self._session = session
        opts = self.options
        self._model_bytes = None  # the session holds its own copy; do not keep two
        self.provider = session.get_providers()[0]
        # On a GPU, binding keeps the output on the device until one copy back, instead of ORT
        # staging both tensors through its own host buffers on every run.
        self.io_binding = opts.io_binding == "on" or (opts.io_binding == "auto" and self.uses_gpu)
        pad = opts.pad_batches == "on" or (opts.pad_batches == "auto" and self.uses_gpu)
        self.pad_to = max(1, opts.max_batch_size) if pad else 0
        log.info(
            "model %s version %s (%s) loaded on %s, I/O binding %s, batches padded to %s",
            self.contract.name,
            self.contract.version,
            self.model_file,
            self.provider,
            "on" if self.io_binding else "off",
            self.pad_to or "no fixed size",
        )

    def _providers(self, ort: Any) -> list[Any]:
        """The provider list for this server's options, with what the GPU providers need ready."""
        opts = self.options
        cache_path = opts.trt_engine_cache_path
        providers = resolve_providers(
            list(opts.providers),
            ort.get_available_providers(),
            opts.device_id,
            trt_engine_cache_path=cache_path,
            trt_fp16=opts.trt_fp16,
        )
        if any(isinstance(p, tuple) for p in providers) and hasattr(ort, "preload_dlls"):
            # CUDA/cuDNN come as pip wheels (the serve-gpu extra), outside the loader's search path.
            ort.preload_dlls()
        if cache_path and any(isinstance(p, tuple) and p[0] == TENSORRT for p in providers):
            Path(cache_path).mkdir(parents=True, exist_ok=True)
        return providers

    def _check_graph(self, session: Any) -> None:
        spec, out = self.contract.input, self.contract.output
        inputs = {i.name: i for i in session.get_inputs()}
        if list(inputs) != [spec.name]:
            raise ModelLoadError(
                f"graph inputs: contract expects exactly [{spec.name!r}]; graph has {list(inputs)}"
            )
        shape = inputs[spec.name].shape
        h, w = self.contract.image_size
        if len(shape) != 4 or any(
            isinstance(d, int) and d != e for d, e in zip(shape[1:], (h, w, 3), strict=True)
        ):
            raise ModelLoadError(
                f"input {spec.name!r}: contract expects [N, {h}, {w}, 3]; graph has {shape}"
            )
        outputs = [o.name for o in session.get_outputs()]
        if out.name not in outputs:
            raise ModelLoadError(
                f"graph outputs: contract expects {out.name!r}; graph has {outputs}"
            )
        ood = self.contract.ood_output
        if ood is not None and ood.name not in outputs:
            raise ModelLoadError(
                f"graph outputs: contract declares {ood.name!r}; graph has {outputs}"
            )

    @property
    def output_names(self) -> list[str]:
        """What one run fetches: the probabilities, and the OOD score the contract declares."""
        ood = self.contract.ood_output
        return [self.contract.output.name] + ([ood.name] if ood is not None else [])

    def score(self, batch: np.ndarray) -> Scores:
        """Probabilities and (where shipped) the OOD score of an NHWC batch, in one run."""
        out = self._outputs(batch, self.output_names)
        return Scores(out[0], out[1] if len(out) > 1 else None)

    def predict(self, batch: np.ndarray) -> np.ndarray:
        """Class probabilities ``[N, num_classes]`` of an NHWC batch in the contract's dtype."""
        return self._outputs(batch, [self.contract.output.name])[0]

    def _outputs(self, batch: np.ndarray, names: list[str]) -> list[np.ndarray]:
        if self._session is None:
            raise ModelLoadError("model not loaded: call load() first")
        x = np.ascontiguousarray(batch, dtype=self.input_dtype)
        if not self.pad_to:
            return self._run(x, names)
        # Fixed shape: chunks of pad_to rows, the last one padded with zeros and its extra rows
        # dropped.
        out = []
        for i in range(0, len(x), self.pad_to):
            chunk = x[i : i + self.pad_to]
            rows = len(chunk)
            if rows < self.pad_to:
                chunk = np.concatenate(
                    [chunk, np.zeros((self.pad_to - rows, *chunk.shape[1:]), chunk.dtype)]
                )
            out.append([o[:rows] for o in self._run(chunk, names)])
        return [np.concatenate([o[j] for o in out]) for j in range(len(names))]

    def _run(self, x: np.ndarray, names: list[str]) -> list[np.ndarray]:
        if self.io_binding:
            return self._run_bound(x, names)
        return self._session.run(names, {self.contract.input.name: x})

    def _run_bound(self, x: np.ndarray, names: list[str]) -> list[np.ndarray]:
        """One run: the input copied to the device once, the outputs kept there until the end."""
        import onnxruntime as ort

        device, device_id = ("cuda", self.options.device_id) if self.uses_gpu else ("cpu", 0)
        binding = self._session.io_binding()
        binding.bind_ortvalue_input(
            self.contract.input.name, ort.OrtValue.ortvalue_from_numpy(x, device, device_id)
        )
        for name in names:
            binding.bind_output(name, device, device_id)  # ORT allocates it on the device
        self._session.run_with_iobinding(binding)
        return binding.copy_outputs_to_cpu()

    def smoke_test(self) -> None:
        """Run one mid-grey image and check the output is ``[1, num_classes]`` probabilities.

        Raises:
            ModelLoadError: wrong output shape, or values that are not a probability distribution.
        """
        h, w = self.contract.image_size
        probs = self.predict(np.full((1, h, w, 3), 127.0, dtype=self.input_dtype))
        expected = (1, self.contract.num_classes)
        if probs.shape != expected:
            raise ModelLoadError(
                f"smoke inference: expected output shape {expected}; received {probs.shape}"
            )
        if not np.all(np.isfinite(probs)) or abs(float(probs.sum()) - 1.0) > 1e-3:
            raise ModelLoadError(
                f"smoke inference: expected probabilities summing to 1; received {probs.tolist()}"
            )


def _session_options(ort: Any, opts: RuntimeOptions) -> Any:
    """ORT session options: threads from ``opts``, one graph at a time, all graph optimisations."""
    options = ort.SessionOptions()
    options.intra_op_num_threads = opts.intra_op_threads or available_cpus()
    options.add_session_config_entry(
        "session.intra_op.allow_spinning", "1" if opts.intra_op_spinning else "0"
    )
    options.inter_op_num_threads = 1  # one graph at a time; the batcher serialises runs
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    return options
