"""An int8 graph as data: its nodes as JSON and its tensors as safetensors, rebuilt from an allow-list of operators.

A stored graph can only describe tensor arithmetic: on loading, every operator is looked up among
torch's ``aten``, ``prims`` and ``quantized_decomposed`` operators (and ``operator.getitem``),
every argument is a number, a dtype, a list or another node, and nothing is unpickled, so a file
can hold wrong numbers but cannot run code.
"""

from __future__ import annotations

import operator
from collections.abc import Mapping
from typing import Any

import torch
from torch import fx

from warmstart.errors import CheckpointError, ConfigError

GRAPH_PREFIX = "graph::"  # the stored tensors the graph reads: graph::<attribute>
NAMESPACES = ("aten", "prims", "quantized_decomposed")
_GUARDS = "_guards_fn"  # torch.export's input-shape guard module: checked again by the ops themselves


def encode_graph(graph: fx.GraphModule) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """``(record, tensors)``: the graph's nodes as JSON-ready data and the tensors its ``get_attr`` nodes read.

    Raises:
        ConfigError: a node this format cannot hold (a module call, a Python function, an
            argument of another type): such a graph is not one :func:`warmstart.compress.quantize` makes.
    """
    _check_flat_io(graph)
    state = graph.state_dict()
    nodes, tensors = [], {}
    for node in graph.graph.nodes:
        if node.op == "call_module" and node.target == _GUARDS and not node.users:
            continue
        if node.op == "get_attr":
            tensors[GRAPH_PREFIX + node.target] = state[node.target].detach().contiguous()
        elif node.op not in ("placeholder", "call_function", "output"):
            raise ConfigError(f"the int8 graph calls {node.op} {node.target!r}, which a saved graph cannot hold")
        nodes.append({"op": node.op, "name": node.name, "target": _target_name(node),
                      "args": _encode(node.args), "kwargs": _encode(node.kwargs)})
    inputs = [node.meta.get("val") for node in graph.graph.nodes if node.op == "placeholder"]
    shapes = [[None, *[int(d) for d in value.shape[1:]]] if isinstance(value, torch.Tensor) else None
              for value in inputs]
    dtypes = [str(value.dtype) if isinstance(value, torch.Tensor) else None for value in inputs]
    return {"nodes": nodes, "input_shapes": shapes, "input_dtypes": dtypes, "single_output": _single_output(graph)}, \
        tensors


def decode_graph(record: Mapping[str, Any], tensors: Mapping[str, torch.Tensor], path: Any) -> fx.GraphModule:
    """The :class:`torch.fx.GraphModule` that :func:`encode_graph` stored (its operators from the allow-list only).

    Raises:
        CheckpointError: an operator outside the allow-list, an argument of an unknown kind, or a
            node or tensor the graph names but the file lacks.
    """
    root = torch.nn.Module()
    graph = fx.Graph()
    made: dict[str, fx.Node] = {}
    try:
        for spec in record["nodes"]:
            op, name, target = spec["op"], spec["name"], spec["target"]
            args, kwargs = _decode(spec["args"], made, path), _decode(spec["kwargs"], made, path)
            if op == "placeholder":
                node = graph.placeholder(name)
            elif op == "get_attr":
                _attach(root, target, tensors[GRAPH_PREFIX + target])
                node = graph.get_attr(target)
            elif op == "call_function":
                node = graph.call_function(resolve_operator(target, path), tuple(args), dict(kwargs))
            elif op == "output":
                outputs = args[0]
                if isinstance(outputs, (list, tuple)):
                    outputs = outputs[0] if record["single_output"] and len(outputs) == 1 else tuple(outputs)
                graph.output(outputs)
                continue
            else:
                raise CheckpointError(f"'{path}': a stored graph node of kind {op!r}, which warmstart never writes")
            node.name = name
            made[name] = node
    except (KeyError, TypeError, ValueError, IndexError) as err:
        raise CheckpointError(f"'{path}': its stored int8 graph is incomplete or damaged ({type(err).__name__}: "
                              f"{err}); save the model again with save_compressed") from None
    module = fx.GraphModule(root, graph)
    for node, shape, dtype in zip([n for n in module.graph.nodes if n.op == "placeholder"], record["input_shapes"],
                                  record["input_dtypes"]):
        if shape is not None:  # what export() reads to export the graph again (batch 2: the dimension is free)
            node.meta["val"] = torch.empty([2, *shape[1:]], dtype=getattr(torch, dtype.removeprefix("torch.")),
                                           device="meta")
    return module


def resolve_operator(name: str, path: Any = "the file") -> Any:
    """``"aten.conv2d.default"`` to its ``OpOverload``; ``"operator.getitem"``; nothing else.

    Raises:
        CheckpointError: a name outside the allow-list (:data:`NAMESPACES`) or no such operator.
    """
    if name == "operator.getitem":
        return operator.getitem
    parts = name.split(".")
    if len(parts) != 3 or parts[0] not in NAMESPACES:
        raise CheckpointError(f"'{path}' names the operator {name!r}, outside the tensor operators a stored graph may "
                              f"call ({', '.join(NAMESPACES)}): warmstart will not run it")
    namespace, op, overload = parts
    try:
        found = getattr(getattr(getattr(torch.ops, namespace), op), overload)
    except (AttributeError, RuntimeError):
        raise CheckpointError(f"'{path}' names the operator {name!r}, which this torch does not have (was the file "
                              "written with another torch or torchao?)") from None
    if not isinstance(found, torch._ops.OpOverload):
        raise CheckpointError(f"'{path}' names {name!r}, which is not a tensor operator")
    return found


def _target_name(node: fx.Node) -> str | None:
    if node.op != "call_function":
        return node.target if node.op == "get_attr" else None
    if node.target is operator.getitem:
        return "operator.getitem"
    if isinstance(node.target, torch._ops.OpOverload):
        name = f"{node.target.namespace}.{node.target._opname}.{node.target._overloadname}"
        if node.target.namespace in NAMESPACES:
            return name
    raise ConfigError(f"the int8 graph calls {node.target!r}, which a saved graph cannot hold (only the operators of "
                      f"{', '.join(NAMESPACES)})")


def _encode(value: Any) -> Any:
    if isinstance(value, fx.Node):
        return {"node": value.name}
    if isinstance(value, torch.dtype):
        return {"dtype": str(value)}
    if isinstance(value, torch.device):
        return {"device": str(value)}
    if isinstance(value, torch.memory_format):
        return {"memory_format": str(value)}
    if isinstance(value, torch.layout):
        return {"layout": str(value)}
    if isinstance(value, (list, tuple)):
        return {"list" if isinstance(value, list) else "tuple": [_encode(v) for v in value]}
    if isinstance(value, dict):
        return {"dict": {str(k): _encode(v) for k, v in value.items()}}
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    raise ConfigError(f"the int8 graph holds an argument of type {type(value).__name__}, which a saved graph cannot hold")


_TORCH_VALUES = {"dtype": torch.dtype, "memory_format": torch.memory_format, "layout": torch.layout}


def _decode(value: Any, made: Mapping[str, fx.Node], path: Any) -> Any:
    if not isinstance(value, dict):
        if value is None or isinstance(value, (bool, int, float, str)):
            return value
        raise CheckpointError(f"'{path}': a stored graph argument of type {type(value).__name__}")
    (kind, inner), = value.items()
    if kind == "node":
        return made[inner]
    if kind in _TORCH_VALUES:
        found = getattr(torch, str(inner).removeprefix("torch."), None)
        if not isinstance(found, _TORCH_VALUES[kind]):
            raise CheckpointError(f"'{path}': {inner!r} is not a torch {kind}")
        return found
    if kind == "device":
        return torch.device(inner)
    if kind in ("list", "tuple"):
        items = [_decode(v, made, path) for v in inner]
        return items if kind == "list" else tuple(items)
    if kind == "dict":
        return {k: _decode(v, made, path) for k, v in inner.items()}
    raise CheckpointError(f"'{path}': a stored graph argument of kind {kind!r}, which warmstart never writes")


def _attach(root: torch.nn.Module, target: str, tensor: torch.Tensor) -> None:
    """Put ``tensor`` at the dotted ``target`` of ``root`` as a buffer, making the modules on the way."""
    owner = root
    *path, leaf = target.split(".")
    for part in path:
        if not hasattr(owner, part):
            owner.add_module(part, torch.nn.Module())
        owner = getattr(owner, part)
    owner.register_buffer(leaf, tensor)


def _check_flat_io(graph: fx.GraphModule) -> None:
    """Positional tensor inputs and one tensor or a tuple of them out: what a classifier's graph has."""
    info = getattr(graph.graph._codegen, "pytree_info", None)
    if info is None:
        return
    args_spec = info.in_spec.children_specs[0] if info.in_spec is not None else None
    kwargs_spec = info.in_spec.children_specs[1] if info.in_spec is not None else None
    flat_in = args_spec is not None and all(c.is_leaf() for c in args_spec.children_specs) and \
        kwargs_spec is not None and kwargs_spec.num_children == 0
    if not flat_in:
        raise ConfigError("save_compressed stores int8 graphs whose inputs are positional tensors; this one takes "
                          f"{info.in_spec}")
    _single_output(graph)


def _single_output(graph: fx.GraphModule) -> bool:
    info = getattr(graph.graph._codegen, "pytree_info", None)
    out = None if info is None else info.out_spec
    if out is None or out.is_leaf():
        return True
    if all(c.is_leaf() for c in out.children_specs) and out.type in (tuple, list):
        return False
    raise ConfigError(f"save_compressed stores int8 graphs that return a tensor or a tuple of tensors; this one "
                      f"returns {out}")
