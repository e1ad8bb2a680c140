"""The wheel ships `checkpoints/` as `learned_opt._pretrained`, so installed users find pretrained files."""

import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import jax

import learned_opt

REPO = Path(__file__).resolve().parents[2]


def test_wheel_ships_checkpoints_and_list_pretrained_finds_them(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    for name in ("pyproject.toml", "README.md"):
        if (REPO / name).exists():
            shutil.copy(REPO / name, src / name)
    for pkg in ("learned_opt", "tasks", "meta_train", "checkpoints"):
        shutil.copytree(REPO / pkg, src / pkg, ignore=shutil.ignore_patterns("__pycache__"))
    arch = learned_opt.MLPLOpt(hidden_sizes=(4,))
    learned_opt.save(src / "checkpoints" / "tiny_demo.safetensors", arch, arch.init_theta(jax.random.key(0)))

    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", "-w", str(tmp_path / "dist"), str(src)],
        check=True,
        capture_output=True,
    )
    (wheel,) = (tmp_path / "dist").glob("*.whl")
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
