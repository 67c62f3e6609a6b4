"""Counters and gauges for ``GET /metrics`` in the Prometheus text exposition format (v0.0.4).

Deliberately tiny and dependency-free: a metric is a name, a help line and a dict from a label
tuple to a number. Gauges can be callbacks so values such as "connected peers" are read live at
scrape time instead of being pushed from every code path that changes them.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

__all__ = ["Counter", "Gauge", "Metrics"]

Labels = tuple[tuple[str, str], ...]


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _format_labels(labels: Labels) -> str:
    if not labels:
        return ""
    return "{" + ",".join(f'{key}="{_escape(value)}"' for key, value in labels) + "}"


def _format_number(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else repr(float(value))


@dataclass
class Counter:
    name: str
    help: str
    label_names: tuple[str, ...] = ()
    values: dict[Labels, float] = field(default_factory=dict)

    def inc(self, amount: float = 1.0, **labels: str) -> None:
        key = self._key(labels)
        self.values[key] = self.values.get(key, 0.0) + amount

    def get(self, **labels: str) -> float:
        return self.values.get(self._key(labels), 0.0)

    def total(self) -> float:
        return sum(self.values.values())

    def by(self, label: str) -> dict[str, float]:
        """Sum over every other label: e.g. rejected bundles by reason."""
        out: dict[str, float] = {}
        for key, value in self.values.items():
            name = dict(key)[label]
            out[name] = out.get(name, 0.0) + value
        return out

    def _key(self, labels: dict[str, str]) -> Labels:
        if set(labels) != set(self.label_names):
            raise ValueError(f"{self.name} takes labels {self.label_names}, got {sorted(labels)}")
        return tuple((name, str(labels[name])) for name in self.label_names)

    def render(self) -> Iterable[str]:
        yield f"# HELP {self.name} {self.help}"
        yield f"# TYPE {self.name} counter"
        if not self.values and not self.label_names:
            yield f"{self.name} 0"
        for key, value in sorted(self.values.items()):
            yield f"{self.name}{_format_labels(key)} {_format_number(value)}"


@dataclass
class Gauge:
    name: str
    help: str
    read: Callable[[], float]

    def render(self) -> Iterable[str]:
        yield f"# HELP {self.name} {self.help}"
        yield f"# TYPE {self.name} gauge"
        yield f"{self.name} {_format_number(self.read())}"


class Metrics:
    """The node's metric registry; subsystems register their metrics at construction.

    A registry can :meth:`include` another (built before the node's was at hand, e.g. the host's
    guard): its metrics are served too, including ones registered there later, and asking this
    registry for a metric of the same name returns the included one (one counter, one series).
    """

    def __init__(self) -> None:
        self._metrics: dict[str, Counter | Gauge] = {}
        self._included: list[Metrics] = []

    def counter(self, name: str, help: str, label_names: tuple[str, ...] = ()) -> Counter:
        existing = self._find(name)
        if isinstance(existing, Counter):
            return existing
        counter = Counter(name, help, label_names)
        self._metrics[name] = counter
        return counter

    def gauge(self, name: str, help: str, read: Callable[[], float]) -> Gauge:
        gauge = Gauge(name, help, read)
        self._metrics[name] = gauge
        return gauge

    def include(self, other: Metrics) -> None:
        """Serve ``other``'s metrics too, now and as it grows."""
        if other is not self and other not in self._included:
            self._included.append(other)

    def _find(self, name: str) -> Counter | Gauge | None:
        if name in self._metrics:
            return self._metrics[name]
        for other in self._included:
            found = other._find(name)
            if found is not None:
                return found
        return None

    def _all(self) -> dict[str, Counter | Gauge]:
        merged: dict[str, Counter | Gauge] = {}
        for other in self._included:
            merged.update(other._all())
        merged.update(self._metrics)
        return merged

    def render(self) -> str:
        lines: list[str] = []
        for metric in self._all().values():
            lines.extend(metric.render())
        return "\n".join(lines) + "\n"
