"""protocol/ is sans-IO: importing any of its modules must not pull in trio, libp2p or torch.

The check walks the package, so modules added later are covered without editing this test, and runs
in a fresh interpreter so nothing imported by other tests can mask (or cause) a failure.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import protocol

FORBIDDEN = ("trio", "libp2p", "torch")
REPO = Path(protocol.__file__).resolve().parents[1]

PROBE = """
import importlib, json, pkgutil, sys
package, forbidden = sys.argv[1], sys.argv[2].split(",")
found, failed = {}, {}
root = importlib.import_module(package)
names = [package] + [m.name for m in pkgutil.walk_packages(root.__path__, package + ".")]
for name in names:
    try:
        importlib.import_module(name)
    except Exception as exc:
        failed[name] = f"{type(exc).__name__}: {exc}"
    for lib in forbidden:
        if lib in sys.modules and lib not in found:
            found[lib] = name
print(json.dumps({"modules": names, "forbidden": found, "failed": failed}))
"""


def probe(package: str, extra_path: Path | None = None) -> dict[str, Any]:
    env = dict(os.environ)
    if extra_path is not None:
        env["PYTHONPATH"] = os.pathsep.join([str(extra_path), env.get("PYTHONPATH", "")])
    proc = subprocess.run(
        [sys.executable, "-c", PROBE, package, ",".join(FORBIDDEN)],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    result: dict[str, Any] = json.loads(proc.stdout.strip().splitlines()[-1])
    return result


def test_protocol_package_imports_no_io_or_ml_framework() -> None:
    report = probe("protocol")
    assert "protocol.codec" in report["modules"] and "protocol.sealing" in report["modules"]
    assert report["failed"] == {}, report["failed"]
    assert report["forbidden"] == {}, f"first imported by: {report['forbidden']}"


def test_the_probe_notices_a_nested_offender(tmp_path: Path) -> None:
    """Control: the same probe flags a sub-sub-module that imports trio."""
    pkg = tmp_path / "veilnet_probe_pkg"
    (pkg / "inner").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "inner" / "__init__.py").write_text("")
    (pkg / "inner" / "uses_trio.py").write_text("import trio\n")
    report = probe("veilnet_probe_pkg", tmp_path)
    assert report["forbidden"] == {"trio": "veilnet_probe_pkg.inner.uses_trio"}
