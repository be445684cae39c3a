"""The errors of a corpus job."""


class CorpusError(ValueError):
    """A corpus job cannot go on: a bad line under on_bad_line="fail", partial output of another
    job under resume, a bad argument. The message names the line or the argument."""


class DistributedUnavailable(ImportError):
    """A cluster scheduler was asked for but dask.distributed is not installed."""
