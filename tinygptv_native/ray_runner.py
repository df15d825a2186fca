"""``--ray``: the same eval or batch job as a Ray Data pipeline (``pip install "tinygptv-native[ray]"``).

The items are read into a dataset, ``map_batches`` sends blocks of them to a pool of actors that
each load the model once (``num_cpus`` = its threads) and answer a block with the same function as a
single-process run, and the driver writes the records to the JSONL in input order as they stream
back. An actor that dies is restarted by Ray and its block retried, so the output is still complete.
Without an address a local Ray instance is started; ``address`` joins a cluster (``"auto"``, or
``ray://host:10001``); the model file must be readable at the same path on every node.
"""
from __future__ import annotations

import json
import os
from typing import Any, Dict, List, Optional, Sequence

from .batch import ITEM_ERRORS, OrderedWriter, Progress, item_function, load_job_model, run_items


class Answerer:
    """A Ray Data actor: the model, loaded once; answers a block of items from n_parallel threads."""

    def __init__(self, spec: dict):
        self.spec = spec
        self.model = load_job_model(spec)
        self.fn = item_function(self.model, spec)

    def __call__(self, batch: Dict[str, Any]) -> Dict[str, Any]:
        import numpy as np
        items = [json.loads(s) for s in batch["item"]]
        records = run_items(items, self.fn, None, workers=self.spec["n_parallel"])
        return {"index": np.asarray(batch["index"]),
                "record": np.asarray([json.dumps(r, ensure_ascii=False) for r in records], dtype=object)}


def _init_ray(address: Optional[str], num_cpus: Optional[int]):
    try:
        import ray
    except ImportError:
        raise RuntimeError('--ray needs Ray Data: pip install "tinygptv-native[ray]" (or "ray[data]")') from None
    if not ray.is_initialized():
        if address:
            ray.init(address=address, log_to_driver=False)
        else:
            ray.init(num_cpus=num_cpus, include_dashboard=False, log_to_driver=False)
    return ray


def run_ray(spec: dict, items: Sequence[dict], writer: Optional[OrderedWriter], *, address: Optional[str] = None,
            actors: int = 2, batch_size: int = 8, progress: Optional[Progress] = None,
            local_cpus: Optional[int] = None) -> List[dict]:
    """Answers the items on Ray with ``actors`` model actors; records written in order and returned."""
    if not items:
        return []
    threads = spec["n_threads"] or 1
    ray = _init_ray(address, local_cpus if local_cpus is not None else max(os.cpu_count() or 1, actors * threads))
    import ray.data
    ctx = ray.data.DataContext.get_current()
    ctx.execution_options.preserve_order = True
    ctx.enable_progress_bars = False
    ctx.print_on_execution_start = False
    rows = [{"index": i, "item": json.dumps(it, ensure_ascii=False)} for i, it in enumerate(items)]
    n_blocks = max(1, min(len(rows), (len(rows) + batch_size - 1) // batch_size))
    ds = ray.data.from_items(rows, override_num_blocks=n_blocks)
    ds = ds.map_batches(Answerer, fn_constructor_kwargs={"spec": spec}, batch_size=batch_size,
                        compute=ray.data.ActorPoolStrategy(size=max(1, actors)), num_cpus=threads)
    # (Ray Data restarts a dead actor of the pool and retries its block: max_restarts = max_task_retries = -1)
    out: List[Optional[dict]] = [None] * len(items)
    for row in ds.iter_rows():
        i = int(row["index"])
        rec = json.loads(row["record"])
        out[i] = rec
        if writer is not None:
            writer.put(i, rec)
        if progress is not None:
            progress.update()
    missing = [i for i, r in enumerate(out) if r is None]
    if missing:
        raise RuntimeError(f"Ray returned no record for {len(missing)} items (first: {missing[0]})")
    return [r for r in out if r is not None]


__all__ = ["Answerer", "run_ray", "ITEM_ERRORS"]
