"""The output of a corpus job written to a file: OUTPUT.parts/ holds one part file per finished
shard (each written atomically) and the job's manifest.json (what resume compares); when all
parts are there they are joined in order into OUTPUT and the folder is removed."""
import json
import os
import shutil

import numpy as np

from .._io import atomic_output, read_json
from .errors import CorpusError

MANIFEST = "manifest.json"


class Parts:
    """OUTPUT.parts/ of the job writing `output`: one file per finished shard, written
    atomically, and the job's manifest (a JSON-able dict naming everything that changes the
    output). resume: keep the parts of an earlier run of the same job (else they are removed).
    Raises CorpusError for a folder that is not a corpus job's partial output (no manifest, or
    one that is not a JSON object), or (resume) one of a different job, naming the keys that
    differ (task: the settings or the model's files)."""

    def __init__(self, output, manifest, resume):
        self.output, self.suffix = output, os.path.splitext(output)[1]
        self.dir = output + ".parts"
        path = os.path.join(self.dir, MANIFEST)
        if os.path.isdir(self.dir):
            old = None
            if os.path.isfile(path):
                try:
                    old = read_json(path, "JSON object (a corpus job's manifest)")
                except ValueError as e:
                    raise CorpusError(f"{e}: remove {self.dir} or choose another output")
            if old is None:
                raise CorpusError(f"{self.dir} exists and is not the partial output of a "
                                  "corpus job (no manifest.json): remove it or choose another "
                                  "output")
            if resume and old != manifest:
                keys = sorted(k for k in set(old) | set(manifest) if old.get(k) != manifest.get(k))
                task_old, task_new = old.get("task"), manifest.get("task")
                if "task" in keys and isinstance(task_old, dict):  # name the task's keys too
                    keys.remove("task")
                    keys += [f"task.{k}" for k in sorted(set(task_old) | set(task_new))
                             if task_old.get(k) != task_new.get(k)]
                raise CorpusError(f"resume: the partial output in {self.dir} comes from a "
                                  f"different job (differs in {', '.join(keys)}); remove it or "
                                  "run without resume")
            if not resume:
                shutil.rmtree(self.dir)
        os.makedirs(self.dir, exist_ok=True)
        with atomic_output(path) as f:
            f.write(json.dumps(manifest, indent=1))

    def path(self, index):
        """Path of the part file of shard `index`."""
        return os.path.join(self.dir, f"part-{index:06d}{self.suffix}")

    def done(self, shard):
        """Whether shard's part is already written with one row per line."""
        p = self.path(shard.index)
        if not os.path.isfile(p):
            return False
        if self.suffix == ".npy":
            return len(np.load(p, mmap_mode="r")) == len(shard.lines)
        with open(p, "rb") as f:
            return sum(block.count(b"\n") for block in iter(lambda: f.read(1 << 20), b"")) \
                == len(shard.lines)

    def join(self, n_shards, width=None):
        """Concatenate the parts in order into the output (atomically), then drop the parts.
        width: the row width of an .npy output without parts (an empty input: (0, width))."""
        paths = [self.path(i) for i in range(n_shards)]
        if self.suffix == ".npy":
            arrays = [np.load(p, mmap_mode="r") for p in paths]
            C = arrays[0].shape[1] if arrays else width
            N = sum(len(a) for a in arrays)

            with atomic_output(self.output, "wb") as f:
                np.lib.format.write_array_header_1_0(
                    f, {"descr": np.lib.format.dtype_to_descr(np.dtype(np.float32)),
                        "fortran_order": False, "shape": (N, C)})
                for a in arrays:
                    for start in range(0, len(a), 65536):
                        f.write(np.ascontiguousarray(a[start:start + 65536]).tobytes())
        else:
            with atomic_output(self.output, "wb") as f:
                for p in paths:
                    with open(p, "rb") as src:
                        shutil.copyfileobj(src, f, 1 << 20)
        shutil.rmtree(self.dir)


