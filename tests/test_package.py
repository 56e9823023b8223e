"""Package-level promises: importing never pulls in torch, transformers or matplotlib."""

import subprocess
import sys


def test_import_does_not_pull_heavy_optional_dependencies():
    code = ("import sys, mini_encdec, mini_encdec.nn, mini_encdec.models; "
            "bad = [m for m in ('torch', 'transformers', 'matplotlib') if m in sys.modules]; "
            "print(','.join(bad))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "", f"import mini_encdec imported {out.stdout.strip()}"
