"""What a Ray cluster can hold: the nodes up now and the node types its autoscaler can add.

Train and tune size themselves against what the cluster can grow to, not only what is up: a
sweep submitted to an autoscaling cluster with no worker node up starts, and its trials wait for
the nodes the autoscaler adds, while a request that no node could ever hold fails at once. Pure
functions of resource dicts; `ray_runtime.cluster_capacity` reads them from a running cluster.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from pipeline.errors import ConfigError


@dataclass(frozen=True)
class NodeType:
    """An autoscaler node type: the resources of one node, and how many it may start."""

    name: str
    resources: dict[str, float]
    max_nodes: int


@dataclass(frozen=True)
class Capacity:
    """A cluster's nodes up now and the node types its autoscaler can add (none: fixed size).

    Attributes:
        nodes: the resources of each node up now, e.g. ({"CPU": 8.0, "GPU": 1.0}, ...).
        node_types: the autoscaler's worker node types (without the head's).
        known: False when some node type's resources are unknown (a cluster config whose
            `resources: {}` the launcher has not filled in): then nothing is refused.
    """

    nodes: tuple[dict[str, float], ...]
    node_types: tuple[NodeType, ...] = field(default=())
    known: bool = True

    def most(self) -> dict[str, float]:
        """Resources the cluster can grow to: the nodes up plus every node each type may add (an
        upper bound when nodes of those types are already up)."""
        totals: dict[str, float] = {}
        shapes = [(node, 1) for node in self.nodes]
        shapes += [(kind.resources, kind.max_nodes) for kind in self.node_types]
        for resources, count in shapes:
            for name, amount in resources.items():
                totals[name] = totals.get(name, 0.0) + amount * count
        return totals

    def worker_slots(self, per_worker: dict[str, float]) -> int:
        """How many workers asking for `per_worker` the cluster can hold once grown."""
        slots = sum(fits(node, per_worker) for node in self.nodes)
        return slots + sum(fits(kind.resources, per_worker) * kind.max_nodes
                           for kind in self.node_types)  # fmt: skip

    def largest_node(self, per_worker: dict[str, float]) -> dict[str, float]:
        """The node (up or addable) with the most of what a worker asks for; {} if none."""
        shapes = [*self.nodes, *(kind.resources for kind in self.node_types)]
        return max(shapes, key=lambda node: [node.get(name, 0.0) for name in sorted(per_worker)],
                   default={})  # fmt: skip

    def describe_types(self) -> str:
        """The node types the autoscaler can add, for log lines ("none" when it cannot)."""
        if not self.node_types:
            return "none (no autoscaler node types found)"
        return ", ".join(f"{kind.name} (up to {kind.max_nodes} x {describe(kind.resources)})"
                         for kind in self.node_types)  # fmt: skip


def fits(node: dict[str, float], per_worker: dict[str, float]) -> int:
    """Workers asking for `per_worker` that one node with `node` resources holds."""
    counts = [math.floor(node.get(name, 0.0) / amount + 1e-9)
              for name, amount in per_worker.items() if amount > 0]  # fmt: skip
    return min(counts, default=0)


def describe(resources: dict[str, float]) -> str:
    """{"CPU": 1.0, "GPU": 1.0} -> "{CPU: 1, GPU: 1}" (memory and node markers left out)."""
    shown = {name: amount for name, amount in sorted(resources.items())
             if "memory" not in name and not name.startswith("node:")}  # fmt: skip
    return "{" + ", ".join(f"{name}: {amount:g}" for name, amount in shown.items()) + "}"


def check_workers_fit(
    capacity: Capacity, per_worker: dict[str, float], workers: int | list[int]
) -> None:
    """Refuse a worker group that the cluster, however far it grows, can never hold.

    Args:
        workers: `scaling.num_workers`: a count, or a range [min, max] of which only the
            minimum must fit (an elastic run starts with the workers that fit).

    Raises:
        ConfigError: naming what each worker asks for and the largest node there is.
    """
    slots = capacity.worker_slots(per_worker)
    needed = workers[0] if isinstance(workers, list) else workers
    if slots >= needed or not capacity.known:
        return
    largest = describe(capacity.largest_node(per_worker))
    where = "its autoscaler's node types" if capacity.node_types else "no autoscaler node types"
    if slots == 0:
        raise ConfigError(
            f"scaling: each training worker asks for {describe(per_worker)}, but no node of this "
            f"cluster ({where}) can ever hold one; the largest node has {largest}"
        )
    asked = f"{workers} workers"
    if isinstance(workers, list):
        asked = f"at least {needed} workers (the minimum of {workers})"
    raise ConfigError(
        f"scaling.num_workers: {asked} asking for {describe(per_worker)} each, but "
        f"this cluster ({where}) can hold at most {slots}; the largest node has {largest}"
    )
