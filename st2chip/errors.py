"""Errors that st2chip reports to users as one clear line.

Every error that the CLI turns into exit code 2 derives from :class:`St2chipError`;
its message names what is wrong and where (file, node, field, layer).
"""

from __future__ import annotations


class St2chipError(Exception):
    """Base class for errors caused by the user's input, not by a bug."""

    exit_code = 2


class InputError(St2chipError):
    """A file or argument could not be read or understood."""


class GraphError(St2chipError):
    """A NIR graph is malformed; names the node and field at fault."""

    def __init__(self, reason: str, *, node: str | None = None, field: str | None = None,
                 source: str | None = None) -> None:
        where = []
        if source:
            where.append(str(source))
        if node is not None:
            where.append(f"node '{node}'")
        if field is not None:
            where.append(f"field '{field}'")
        prefix = ", ".join(where)
        super().__init__(f"{prefix}: {reason}" if prefix else reason)
        self.reason = reason
        self.node = node
        self.field = field
        self.source = source

    def at(self, source: str | None) -> "GraphError":
        """This error naming ``source`` (the file the graph came from) too, unless it names one already."""
        if source is None or self.source:
            return self
        return GraphError(self.reason, node=self.node, field=self.field, source=str(source))


class ChipRangeError(St2chipError):
    """A ChipGraph value lies outside the range the chip can hold."""


class BackendError(St2chipError):
    """A backend's run failed for a reason outside the user's files (a Lava process killed, a Ray
    cluster lost): the CLI prints it as one line and exits 1, not 2, since the input was not at fault."""

    exit_code = 1



class St2chipWarning(UserWarning):
    """Something the user should know that does not stop the run; the CLI prints it as one line."""
