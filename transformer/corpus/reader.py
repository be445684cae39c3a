"""The input of a corpus job: the lines of a file (or stdin) read as a stream and cut into
shards of `shard_lines` lines, never read whole."""
import dataclasses
import sys

from .errors import CorpusError


@dataclasses.dataclass
class Shard:
    """One unit of work and of output: index (0-based shard number), first (1-based line
    number of its first line), lines (str, one per input line)."""
    index: int
    first: int
    lines: list


def count_lines(path):
    """Lines of a file (a last line without b"\\n" counts), read in 1 MiB blocks; None for
    stdin."""
    if path == "-":
        return None
    n, last = 0, b"\n"
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            n += block.count(b"\n")
            last = block[-1:]
    return n + (last != b"\n")


def read_shards(path, shard_lines, on_bad_line, warn):
    """Shards (Shard) of the decoded lines of `path` ('-': stdin), streamed (a trailing
    b"\\r" dropped). Undecodable bytes: replaced by U+FFFD with warn(message), or CorpusError
    under on_bad_line="fail"."""
    f = sys.stdin.buffer if path == "-" else open(path, "rb")
    try:
        lines, index, line_no = [], 0, 0
        for raw in f:
            line_no += 1
            raw = raw[:-2] if raw.endswith(b"\r\n") else raw.rstrip(b"\n")
            try:
                text = raw.decode("utf-8")
            except UnicodeDecodeError as e:
                where = f"line {line_no} of {path} has undecodable UTF-8 bytes at byte {e.start}"
                if on_bad_line == "fail":
                    raise CorpusError(f"{where} (--on-bad-line truncate would replace them)")
                warn(f"{where}; replaced by U+FFFD")
                text = raw.decode("utf-8", errors="replace")
            lines.append(text)
            if len(lines) == shard_lines:
                yield Shard(index, line_no - len(lines) + 1, lines)
                lines, index = [], index + 1
        if lines:
            yield Shard(index, line_no - len(lines) + 1, lines)
    finally:
        if f is not sys.stdin.buffer:
            f.close()


