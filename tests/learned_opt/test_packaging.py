"""The wheel: it ships `checkpoints/` as `learned_opt._pretrained`, and its core install alone runs one."""

import os
import shutil
import subprocess
import sys
import tomllib
import zipfile
from pathlib import Path

import jax
import pytest

import learned_opt
from learned_opt import _extras

REPO = Path(__file__).resolve().parents[2]
META_HINT = "pip install 'learned-opt[meta]'"


@pytest.fixture(scope="module")
def wheel(tmp_path_factory):
    """The repo's wheel, built once, with an extra `tiny_demo` checkpoint among the shipped ones."""
    tmp = tmp_path_factory.mktemp("wheel")
    src = tmp / "src"
    src.mkdir()
    for name in ("pyproject.toml", "README.md"):
        if (REPO / name).exists():
            shutil.copy(REPO / name, src / name)
    for pkg in ("learned_opt", "tasks", "meta_train", "checkpoints"):
        shutil.copytree(REPO / pkg, src / pkg, ignore=shutil.ignore_patterns("__pycache__"))
    arch = learned_opt.MLPLOpt(hidden_sizes=(4,))
    learned_opt.save(src / "checkpoints" / "tiny_demo.safetensors", arch, arch.init_theta(jax.random.key(0)))

    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", "-w", str(tmp / "dist"), str(src)],
        check=True,
        capture_output=True,
    )
    (path,) = (tmp / "dist").glob("*.whl")
    return path


def test_wheel_ships_checkpoints_and_list_pretrained_finds_them(wheel, tmp_path):
    with zipfile.ZipFile(wheel) as z:
        assert "learned_opt/_pretrained/tiny_demo.safetensors" in z.namelist()
        z.extractall(tmp_path / "site")

    # Import from the unpacked wheel only (not the repo): the installed layout.
    code = (
        "import learned_opt; print(learned_opt.pretrained_dir()); print(learned_opt.list_pretrained()); "
        "print(learned_opt.load_theta('tiny_demo')[0])"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=tmp_path, env={"PYTHONPATH": str(tmp_path / "site")},
        capture_output=True, text=True, check=True,
    )
    where, names, arch_repr = out.stdout.strip().splitlines()
    assert where == str(tmp_path / "site" / "learned_opt" / "_pretrained")
    shipped = sorted(p.stem for p in (REPO / "checkpoints").glob("*.safetensors"))
    assert names == str(sorted(shipped + ["tiny_demo"]))
    assert arch_repr.startswith("MLPLOpt(hidden_sizes=(4,)")


def test_meta_extra_and_the_modules_checked_for_it_agree():
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    meta = {req.split("==")[0] for req in project["optional-dependencies"]["meta"]}
    assert meta == set(_extras.META_MODULES.values())
    core = {req.split("==")[0] for req in project["dependencies"]}
    assert core == {"jax", "jaxlib", "numpy", "optax", "safetensors"}


def test_every_package_directory_is_in_the_wheel():
    listed = set(tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"])
    found = {".".join(p.parent.relative_to(REPO).parts)
             for top in ("learned_opt", "tasks", "meta_train") for p in (REPO / top).rglob("__init__.py")}
    assert found <= listed, f"add {sorted(found - listed)} to [tool.setuptools] packages in pyproject.toml"


def test_a_missing_meta_extra_is_one_line_naming_the_install(monkeypatch, capsys):
    monkeypatch.setitem(_extras.META_MODULES, "no_such_module_for_this_test", "no-such-dist")
    with pytest.raises(ImportError) as e:
        _extras.require_meta("meta_train")
    assert str(e.value) == f"meta_train needs the 'meta' extra (no-such-dist not installed): {META_HINT}"
    assert _extras.lopt_main(["--help"]) == 1
    out = capsys.readouterr()
    assert out.out == "" and out.err == f"error: lopt needs the 'meta' extra (no-such-dist not installed): {META_HINT}\n"


# Run inside the core-only venv: load and step a shipped optimizer, then report what is importable.
SLIM_CHECK = """
import importlib.util, sys
import jax, jax.numpy as jnp, optax
import learned_opt

assert "adam_schedule_v1" in learned_opt.list_pretrained(), learned_opt.list_pretrained()
tx = learned_opt.load("adam_schedule_v1", num_steps=10)
params = {"w": jnp.ones((8, 4)), "b": jnp.zeros(4)}
state = tx.init(params)
for _ in range(3):
    updates, state = tx.update(jax.tree.map(jnp.ones_like, params), state, params)
    params = optax.apply_updates(params, updates)
assert bool(jnp.all(params["b"] < 0)), params  # a positive gradient moved the bias down
heavy = ("ray", "tensorflow_datasets", "tensorflow", "orbax", "haiku", "flax", "sklearn", "matplotlib")
print("importable:", [m for m in heavy if importlib.util.find_spec(m) is not None])
print("loaded:", [m for m in heavy if m in sys.modules])
try:
    import meta_train
except ImportError as e:
    print("meta_train:", e)
"""


def test_core_install_alone_loads_and_steps_a_shipped_optimizer(wheel, tmp_path):
    """`pip install learned-opt` without extras: a fresh venv with the wheel and its core dependencies only."""
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    python = venv / "bin" / "python"
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    # This test's pip installs into the new venv: the dependencies come from pyproject's core list.
    pip = subprocess.run(
        [sys.executable, "-m", "pip", "--python", str(python), "install", "-q", "--no-compile", str(wheel)],
        env=env, capture_output=True, text=True,
    )
    assert pip.returncode == 0, pip.stderr[-3000:]

    out = subprocess.run([str(python), "-c", SLIM_CHECK], cwd=tmp_path, env=env, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr[-3000:]
    lines = out.stdout.strip().splitlines()
    assert lines[:2] == ["importable: []", "loaded: []"], out.stdout
    assert lines[2].startswith("meta_train: meta_train needs the 'meta' extra (") and lines[2].endswith(META_HINT), lines[2]

    lopt = subprocess.run([str(venv / "bin" / "lopt"), "--help"], cwd=tmp_path, env=env, capture_output=True, text=True)
    assert lopt.returncode == 1
    assert lopt.stdout == "" and lopt.stderr.strip().count("\n") == 0, lopt.stderr
    assert lopt.stderr.strip().endswith(META_HINT), lopt.stderr
