"""Where the shards of a corpus job run: "local" (this process), "local:N" (a Dask LocalCluster
of N worker processes, the threads split between them) or the address of a running Dask
scheduler. Each Dask worker loads the model once (a worker plugin) and runs one shard at a
time; a worker that dies has its shards rerun elsewhere by the scheduler. Dask is the optional
extra `transformer[distributed]` and is imported only when a cluster is asked for."""
import threading

from .batching import run_shard
from .errors import CorpusError, DistributedUnavailable

SCHEDULER_HELP = ("'local' (this process), 'local:N' (a Dask LocalCluster of N worker processes) "
                  "or a Dask scheduler address such as tcp://HOST:8786")


def _import_distributed():
    """The dask.distributed module, or DistributedUnavailable saying how to install it."""
    try:
        import distributed
    except ImportError as e:
        raise DistributedUnavailable(
            f"a Dask scheduler needs dask.distributed, which is not installed ({e}): "
            "pip install 'transformer[distributed]' (or pip install 'dask[distributed]')") from e
    return distributed


def parse_scheduler(scheduler):
    """("inprocess", None) for "local", ("cluster", N) for "local:N", ("address", address) for
    a scheduler address. Raises CorpusError for anything else (or N < 1)."""
    if scheduler == "local":
        return "inprocess", None
    if isinstance(scheduler, str) and scheduler.startswith("local:"):
        n = scheduler[6:]
        if not n.isdigit() or int(n) < 1:
            raise CorpusError(f"scheduler 'local:N' needs a worker count N >= 1, got "
                              f"{scheduler!r}")
        return "cluster", int(n)
    if isinstance(scheduler, str) and "://" in scheduler:
        return "address", scheduler
    raise CorpusError(f"scheduler must be {SCHEDULER_HELP}, got {scheduler!r}")


def _model_plugin_class():
    """The Dask worker plugin class (built on first use, so that importing this module does not
    import dask): loads the task's model once per worker process, at registration and on every
    worker that joins later (e.g. one restarted after a crash)."""
    from distributed import WorkerPlugin

    class _ModelPlugin(WorkerPlugin):
        idempotent = False

        def __init__(self, task, name):
            self.task, self.name = task, name
            self.model, self.lock = None, None

        def setup(self, worker):
            self.lock = threading.Lock()
            self.model = self.task.load()

        def teardown(self, worker):
            self.model = None

    _ModelPlugin.__module__, _ModelPlugin.__qualname__ = __name__, "_ModelPlugin"
    return _ModelPlugin


def __getattr__(name):
    """Module attribute _ModelPlugin on demand (Dask's serializer finds the plugin class by
    this name)."""
    if name == "_ModelPlugin":
        globals()[name] = _model_plugin_class()
        return globals()[name]
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def _run_on_worker(plugin_name, shard, options):
    """A Dask task: one shard with the model of this worker's plugin (one shard at a time per
    worker: the model uses all its kernel threads)."""
    from distributed import get_worker
    plugin = get_worker().plugins[plugin_name]
    with plugin.lock:
        return run_shard(plugin.task, plugin.model, shard, options)


def run_on_cluster(task, mode, where, shards, options, finish, backlog):
    """Shards as Dask tasks on a LocalCluster of `where` workers (mode "cluster") or on the
    scheduler at address `where`. At most 2 per worker thread + 2 shards are in flight or
    finished but not yet written (backlog(): those waiting for an earlier shard on stdout)."""
    distributed = _import_distributed()
    import logging
    import uuid

    cluster = None
    if mode == "cluster":
        from .._threads import resolve_threads
        per_worker = max(1, resolve_threads(task.threads) // where)
        task = task.with_threads(per_worker)
        cluster = distributed.LocalCluster(n_workers=where, threads_per_worker=1, processes=True,
                                           dashboard_address=":0",
                                           silence_logs=logging.ERROR)
        client = distributed.Client(cluster)
    else:
        client = distributed.Client(where, timeout=30)
    job = uuid.uuid4().hex[:12]
    name = f"transformer-corpus-{job}"
    try:
        plugin = globals().get("_ModelPlugin") or __getattr__("_ModelPlugin")
        client.register_plugin(plugin(task, name), name=name)
        workers = max(1, sum(client.nthreads().values()))
        limit = 2 * workers + 2
        done = distributed.as_completed()
        in_flight = 0
        for shard in shards:
            while in_flight and in_flight + backlog() >= limit:
                finish(next(done).result())
                in_flight -= 1
            done.add(client.submit(_run_on_worker, name, shard, options,
                                   key=f"{task.kind}-shard-{shard.index}-{job}", pure=False))
            in_flight += 1
        for future in done:
            finish(future.result())
    finally:
        try:
            client.unregister_worker_plugin(name)
        except Exception:  # the cluster may be gone already
            pass
        client.close()
        if cluster is not None:
            cluster.close()


