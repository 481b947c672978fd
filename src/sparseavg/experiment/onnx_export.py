"""A model as ONNX bytes, with a dynamic batch dimension (the optional ``onnx`` extra)."""

from __future__ import annotations

import importlib.util
import io
import warnings

import torch
from torch import Tensor, nn

#: what to run when the ``onnx`` package is missing
INSTALL = 'pip install "sparseavg[onnx]"'
#: the ONNX operator set written (onnxruntime 1.16, the oldest the extra allows, runs it)
OPSET = 17
INPUT, OUTPUT, BATCH = "input", "logits", "batch"


def onnx_available() -> bool:
    """Whether the ``onnx`` package can be imported (without importing it)."""
    return importlib.util.find_spec("onnx") is not None


def to_onnx(model: nn.Module, example: Tensor) -> bytes:
    """``model`` in eval mode as a checked ONNX model: input ``"input"`` of shape
    ``(batch, *example.shape[1:])``, output ``"logits"`` ``(batch, classes)``, ``batch``
    free.

    ``example`` is a batch of two or more inputs (a batch of one lets the tracer fix sizes that
    should follow the batch). Uses torch's TorchScript-based exporter (``dynamo=False``),
    which needs no package beyond ``onnx``; torch marks it deprecated since 2.9, and its
    deprecation warnings are silenced here.

    Raises:
        ModuleNotFoundError: ``onnx`` is not installed.
    """
    import onnx

    if example.shape[0] < 2:
        raise ValueError(f"example: a batch of at least 2 inputs, not {tuple(example.shape)}")
    was_training = model.training
    model.eval()
    buffer = io.BytesIO()
    try:
        with warnings.catch_warnings(), torch.no_grad():
            warnings.simplefilter("ignore", DeprecationWarning)
            torch.onnx.export(
                model,
                (example,),
                buffer,  # type: ignore[arg-type]  # the TorchScript exporter takes a file object
                dynamo=False,
                opset_version=OPSET,
                input_names=[INPUT],
                output_names=[OUTPUT],
                dynamic_axes={INPUT: {0: BATCH}, OUTPUT: {0: BATCH}},
            )
    finally:
        model.train(was_training)
    data = buffer.getvalue()
    onnx.checker.check_model(onnx.load_from_string(data))
    return data
