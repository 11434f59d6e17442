"""persona/export/variants.py: the --variant names shared by export, animate and view."""

import subprocess
import sys

from persona.avatar.posing import VARIANTS as RENDER_VARIANTS
from persona.export.variants import VARIANT_HELP, VARIANTS


def test_variants_are_the_render_passes_default_first():
    assert set(VARIANTS) == set(RENDER_VARIANTS) and len(VARIANTS) == len(RENDER_VARIANTS)
    assert VARIANTS[0] == "refined" and "refined (default)" in VARIANT_HELP
    assert all(name in VARIANT_HELP for name in VARIANTS)


def test_the_viewer_does_not_load_the_export_cli():
    """The viewer shares the names without importing persona.export.cli (and what it loads)."""
    code = "import sys, persona.export.viewer; print('persona.export.cli' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True).stdout.strip()
    assert out == "False"
