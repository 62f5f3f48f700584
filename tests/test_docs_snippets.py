"""The Python snippets of README.md and docs/user_guide.md run, so they cannot drift from the code.

Convention (also stated for writers of the docs): every fenced block marked
```` ```python ```` is run, in file order, in one namespace per file, from an empty
temporary folder (files the snippets write land there). A block preceded by the line
``<!-- snippet: skip (reason) -->`` is not run; the reason is required. The test
provides the names the snippets take from the reader's world, small and fast:

* ``model``: a small model with ResNet18's names for its first and last layers
  (``conv1``, ``layer4.1.conv2``, ``fc``; ``tests.models.TinyResNet``), in eval mode;
  ``MyNet``: its class;
* ``calib_loader``, ``calib``, ``calib_batches``, ``val_batches``: labelled ``(inputs,
  targets)`` batches; ``other_batches``, ``more_train_batches``: other input batches;
* ``MyConv``, ``MyQuantConv``: a float module type and a quantized class for it.
"""

import re
from pathlib import Path

import pytest
import torch
from torch import nn

import fxquant
from tests.models import TinyResNet

ROOT = Path(__file__).resolve().parent.parent
DOCS = ("README.md", "docs/user_guide.md")
_FENCE = re.compile(r"^(?P<skip><!-- snippet: skip(?P<reason>[^>]*)-->\n)?```python\n(?P<code>.*?)^```$",
                    re.S | re.M)


def snippets(path: Path) -> list[tuple[int, str | None, str]]:
    """``(line, skip reason or None, code)`` of each ```python block."""
    text = path.read_text()
    out = []
    for m in _FENCE.finditer(text):
        line = text.count("\n", 0, m.start("code"))
        reason = m.group("reason").strip(" ()") if m.group("skip") else None
        out.append((line, reason, m.group("code")))
    return out


class MyConv(nn.Conv2d):
    """A float module type fxquant does not know (its own forward)."""

    def forward(self, x):
        return super().forward(x)


class MyQuantConv(fxquant.QuantConv2d):
    _FLOAT_TYPES = (MyConv,)


def _batches(n: int, seed: int, labelled: bool = True):
    gen = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(n):
        x = torch.randn(8, 3, 8, 8, generator=gen)
        out.append((x, torch.randint(0, 10, (8,), generator=gen)) if labelled else x)
    return out


def _namespace() -> dict:
    torch.manual_seed(0)
    labelled = _batches(2, 1)
    return {"__name__": "__snippet__", "model": TinyResNet().eval(), "MyNet": TinyResNet,
            "calib_loader": labelled, "calib": labelled, "calib_batches": labelled,
            "val_batches": _batches(1, 2), "other_batches": _batches(2, 3, labelled=False),
            "more_train_batches": _batches(2, 3, labelled=False), "MyConv": MyConv, "MyQuantConv": MyQuantConv,
            "x": labelled[0][0], "images": labelled[1][0], "stats": _batches(2, 3, labelled=False)}


@pytest.mark.parametrize("doc", DOCS)
def test_python_snippets_run(doc, tmp_path, monkeypatch):
    blocks = snippets(ROOT / doc)
    assert blocks, f"no python snippets found in {doc}"
    monkeypatch.chdir(tmp_path)
    namespace = _namespace()
    ran = 0
    for line, reason, code in blocks:
        if reason is not None:
            assert reason, f"{doc}:{line}: a skipped snippet must say why"
            continue
        try:
            exec(compile(code, f"{doc}:{line}", "exec"), namespace)
        except Exception as e:
            raise AssertionError(f"the snippet at {doc}:{line} fails: {type(e).__name__}: {e}") from e
        ran += 1
    assert ran >= 1


def test_snippet_extraction_sees_skips_and_code(tmp_path):
    doc = tmp_path / "d.md"
    doc.write_text("text\n```python\na = 1\n```\n<!-- snippet: skip (no GPU) -->\n```python\nb = 2\n```\n"
                   "```bash\nls\n```\n")
    assert snippets(doc) == [(2, None, "a = 1\n"), (6, "no GPU", "b = 2\n")]
