"""A user who only loads a pretrained optimizer imports nothing heavy."""

import subprocess
import sys


def test_importing_learned_opt_stays_light():
    code = (
        "import sys, learned_opt\n"
        "heavy = [m for m in ('ray', 'tensorflow', 'tensorflow_datasets', 'tasks', 'meta_train', 'flax', 'haiku')"
        " if m in sys.modules]\n"
        "print(heavy)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]", out.stdout + out.stderr
