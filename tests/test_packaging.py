"""The built wheel carries the Alembic migrations and creates a registry from them."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).parents[1]


def test_wheel_ships_migrations_and_creates_a_registry(tmp_path):
    wheels = tmp_path / "wheels"
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(wheels), str(ROOT)],
                   check=True, capture_output=True, timeout=300)
    (wheel,) = wheels.glob("adapterhub_sdk-*.whl")
    target = tmp_path / "site"
    subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "-q", "--target", str(target), str(wheel)],
                   check=True, capture_output=True, timeout=300)
    code = (
        "import adapterhub_sdk as ah, adapterhub_sdk.db as d, sys;"
        "print(d.migrations_dir());"
        f"r = ah.Registry.open('sqlite:///{tmp_path / 'r.db'}');"
        "print(r.stats()['versions'])"
    )
    env = {**os.environ, "PYTHONPATH": str(target)}
    out = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True, env=env,
                         cwd=tmp_path, timeout=120)
    migrations, versions = out.stdout.split()
    assert Path(migrations) == target / "adapterhub_sdk" / "_registry" / "migrations"
    assert versions == "0"
