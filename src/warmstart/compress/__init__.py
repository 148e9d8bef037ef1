"""Compression: structured pruning, unstructured sparsity, recovery by distillation, int8 quantization and QAT, saving, export.

Every function works on a copy and returns it with a report; the model given is left as it was
(except :func:`recover`, which trains the model it is given, as a trainer does).
"""

from warmstart.checkpoint import describe_compressed
from warmstart.compress._export import export
from warmstart.compress._fresh import FreshRun, run_in_fresh_process
from warmstart.compress._latency import measure_latency
from warmstart.compress._layers import count_parameters
from warmstart.compress._pruning import IMPORTANCES, LayerChange, PruneReport, prune
from warmstart.compress._pt2e import CompiledInt8Model
from warmstart.compress._qat import QATModel, convert_qat, prepare_qat
from warmstart.compress._quantize import QuantizeReport, quantize, tensor_bytes
from warmstart.compress._recover import RecoveryResult, recover
from warmstart.compress._saving import load_compressed, save_compressed
from warmstart.compress._serving import export_for_serving
from warmstart.compress._sparsity import SparsityReport, remove_masks, sparsify

__all__ = [
    "IMPORTANCES",
    "CompiledInt8Model",
    "FreshRun",
    "LayerChange",
    "PruneReport",
    "QATModel",
    "QuantizeReport",
    "RecoveryResult",
    "SparsityReport",
    "convert_qat",
    "count_parameters",
    "describe_compressed",
    "export",
    "export_for_serving",
    "load_compressed",
    "measure_latency",
    "prepare_qat",
    "prune",
    "quantize",
    "recover",
    "remove_masks",
    "run_in_fresh_process",
    "save_compressed",
    "sparsify",
    "tensor_bytes",
]
