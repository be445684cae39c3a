"""The handle a submit returns: the request's result, its new tokens as they are chosen (sync
and async iteration), cancel()."""
import asyncio
import concurrent.futures
import threading

from .errors import RequestCancelled


class Handle:
    """One request of a transformer.serving.Engine, returned at once by submit / embed.

    result(timeout=None): what model.generate returns for the same arguments (ids (N, T + n)
    int64 NumPy, (ids, scores) with return_scores, a GenerateOutput with
    return_dict_in_generate), or for embed what model.embed returns ((B, C) float32); raises
    RequestCancelled when cancelled, TimeoutError after `timeout` seconds, else the request's
    own error (generate's ValueError, ...). `await handle.aresult()`: the same from asyncio.
    Iteration (`for column in handle`, `async for column in handle`): each new column
    (N,) int64 NumPy as the search chooses it (greedy and sampling; pad for finished rows, as
    transformer.generation.stream); with stop_strings each column once no stop string can
    change it (pad after a row's cut: the result's columns); beam search yields the columns
    of its final result once it is settled. Leaving the iteration early (break, or
    the iterator collected) cancels the request. cancel(): stop the request (waiting or
    running; its KV reservation is freed at once); True when it had not ended. done(): True
    once it ended (result, error or cancelled)."""

    def __init__(self, canceller):
        self._future = concurrent.futures.Future()
        self._canceller = canceller  # the engine's cancel of this request
        self._columns = []
        self._ended = False
        self._cond = threading.Condition()
        self._async_waiters = []  # (loop, asyncio.Event)
        self._result_columns = False  # columns come from the result (beam, stop strings)

    # -- the engine's side ----------------------------------------------------------------------
    def _push(self, column):
        """A new column (N,) int64 from the request's thread."""
        with self._cond:
            self._columns.append(column)
            self._wake()

    def _finish(self, result=None, error=None, columns=None):
        """End the request: its result or error; `columns` (beam search, stop strings): the
        new columns of the result, delivered to the iterators now."""
        with self._cond:
            if self._ended:
                return False
            if columns is not None:
                self._columns = list(columns)
            self._ended = True
            self._canceller = None  # no cycle back to the engine's request once ended
            self._wake()
        if error is not None:
            self._future.set_exception(error)
        else:
            self._future.set_result(result)
        return True

    def _wake(self):
        self._cond.notify_all()
        for loop, event in self._async_waiters:
            try:
                loop.call_soon_threadsafe(event.set)
            except RuntimeError:  # the loop closed: its waiter is gone
                pass
        self._async_waiters = []

    # -- the caller's side ----------------------------------------------------------------------
    def result(self, timeout=None):
        """The request's result; blocks up to `timeout` seconds (None: until it ends).
        Raises RequestCancelled, TimeoutError, or the request's error."""
        try:
            return self._future.result(timeout)
        except concurrent.futures.TimeoutError:
            raise TimeoutError(f"the request did not end within {timeout} s") from None

    async def aresult(self):
        """The request's result from asyncio (awaits without blocking the loop)."""
        return await asyncio.wrap_future(self._future)

    def done(self):
        """True once the request ended (a result, an error, or cancelled)."""
        return self._future.done()

    def cancel(self):
        """Cancel the request: it leaves the queue, or its search unwinds at its next model
        call, and its KV reservation is released at once; result() then raises
        RequestCancelled. Returns True when the request had not ended."""
        canceller = self._canceller
        return False if canceller is None else canceller()

    def _cancelled(self):
        self._finish(error=RequestCancelled("the request was cancelled"))

    def __iter__(self):
        i = 0
        try:
            while True:
                with self._cond:
                    while i >= len(self._columns) and not self._ended:
                        self._cond.wait()
                    if i >= len(self._columns):
                        break
                    column = self._columns[i]
                i += 1
                yield column
        finally:
            if not self._ended:  # the consumer left early: nobody reads the rest
                self.cancel()
        self._raise_error()

    async def __aiter__(self):
        i = 0
        loop = asyncio.get_running_loop()
        try:
            while True:
                with self._cond:
                    if i >= len(self._columns) and not self._ended:
                        event = asyncio.Event()
                        self._async_waiters.append((loop, event))
                    else:
                        event = None
                if event is not None:
                    await event.wait()
                    continue
                if i >= len(self._columns):
                    break
                column = self._columns[i]
                i += 1
                yield column
        finally:
            if not self._ended:
                self.cancel()
        self._raise_error()

    def _raise_error(self):
        """After the last column: an error or cancellation surfaces to the iterating caller."""
        error = self._future.exception()
        if error is not None:
            raise error
