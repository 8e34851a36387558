"""One way for the test helpers that own processes, namespaces or files to be used in ``with``."""

from __future__ import annotations

from typing import Self


class Scoped:
    """``with Thing(...) as thing:`` runs ``thing.start()`` and always ``thing.cleanup()``, also
    when the block fails, so a failed test leaves no process, namespace or XDP program behind."""

    def start(self) -> Self:
        raise NotImplementedError

    def cleanup(self) -> None:
        raise NotImplementedError

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.cleanup()
