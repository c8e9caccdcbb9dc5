"""Running a cloud service inside a test: started, its loop on a thread, and
stopped and closed afterwards whatever the test did."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any, TypeVar

S = TypeVar("S")


@contextmanager
def running_service(service_cls: type[S], config: Any, *, join_s: float = 30.0, **kwargs: Any) -> Iterator[S]:
    """``service_cls(config, health_port=None, **kwargs)``, started, with
    ``run()`` on a daemon thread; stopped, joined and closed on exit."""
    svc = service_cls(config, health_port=None, **kwargs).start()  # type: ignore[call-arg]
    thread = threading.Thread(target=svc.run, daemon=True, name=f"{service_cls.__name__}.run")  # type: ignore[attr-defined]
    thread.start()
    try:
        yield svc
    finally:
        svc.stop()  # type: ignore[attr-defined]
        thread.join(join_s)
        svc.close()  # type: ignore[attr-defined]


__all__ = ["running_service"]
