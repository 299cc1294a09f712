"""Core and extras: a core install trains and predicts, and an extra's module without its packages says
which `pip install` brings them."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest

from megatron_utils.core.extras import EXTRAS, MissingExtraError, extra_imports, install_hint

# The import names each extra installs (pyproject.toml's [project.optional-dependencies], and the two
# installed without their dependencies).
EXTRA_MODULES = {
    "serve": ["fastapi", "uvicorn", "multipart", "httpx", "puremagic", "starlette"],
    "audio": ["librosa"],
    "explain": ["captum"],
    "attacks": ["torchattacks"],
    "ray": ["ray"],
    "mini": ["espeakng_loader", "librosa"],
    "mtcnn": ["facenet_pytorch"],
}
ALL_EXTRA_MODULES = sorted({module for modules in EXTRA_MODULES.values() for module in modules})


def without_extras(code: str, cwd=None) -> subprocess.CompletedProcess:
    """Run `code` in a fresh interpreter where no extra's package can be imported, as after a core install."""
    blocker = f"import sys\nfor name in {ALL_EXTRA_MODULES!r}:\n    sys.modules[name] = None\n"
    return subprocess.run([sys.executable, "-c", blocker + textwrap.dedent(code)], capture_output=True,
                          text=True, timeout=600, cwd=cwd)


def test_every_extra_is_described_and_hinted():
    assert set(EXTRA_MODULES) == set(EXTRAS)
    assert install_hint("serve") == "pip install 'megatron-deepfake[serve]'"
    assert install_hint("attacks") == "pip install --no-deps torchattacks==3.5.1"


def test_a_missing_package_names_its_extra():
    hint = r"'explain' extra, and no_such_package_xyz is not installed: pip install 'megatron-deepfake"
    with pytest.raises(MissingExtraError, match=hint), extra_imports("explain"):
        import no_such_package_xyz  # noqa: F401
    with pytest.raises(ValueError, match="unknown extra"), extra_imports("nope"):
        pass


@pytest.mark.parametrize(("extra", "code"), [
    ("explain", "import megatron_utils.inference.explain"),
    ("mini", "import megatron_utils.datasets.mini.speech"),
    ("serve", "import megatron_utils.serve.app"),
    ("attacks", "from megatron_utils.training.attacks import _torchattacks; _torchattacks()"),
    ("audio", "import numpy as np\nfrom megatron_utils.models.audio import MelConfig\n"
              "from megatron_utils.preprocessing.audio import mel_windows\n"
              "mel_windows(np.ones(16000, np.float32), np.array([0.5]), MelConfig())"),
])
def test_an_extras_module_without_its_packages_gives_the_install_hint(extra, code):
    result = without_extras(code)
    assert result.returncode != 0
    assert "MissingExtraError" in result.stderr, result.stderr[-2000:]
    assert install_hint(extra) in result.stderr


def test_a_core_install_trains_and_predicts(tiny_run, tmp_path):
    """The README's train and predict commands with every extra's package unimportable."""
    run, table, embed_dir = tiny_run
    index, out = run / "index.csv", tmp_path / "core-run"
    video = table.loc[table["label"] == "fake", "path"].iloc[0]
    result = without_extras(f"""
        from megatron_utils.cli import main
        assert main(["train", "--index", {str(index)!r}, "--embeddings", {str(embed_dir)!r},
                     "--model", "megatron-tiny", "--epochs", "1", "--out", {str(out)!r}]) == 0
        assert main(["predict", {str(video)!r}, "--run", {str(out)!r}]) == 0
        loaded = sorted(name for name in {ALL_EXTRA_MODULES!r} if sys.modules.get(name) is not None)
        assert not loaded, loaded
    """)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "fake" in result.stdout or "real" in result.stdout or "uncertain" in result.stdout
