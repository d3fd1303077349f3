"""The reports in a real browser (headless Chromium, off the network): they load with no console errors and
no network requests, every image decodes, and a screenshot is not blank.

Needs Chromium: with CI=true its absence fails the test (`.ci/run` installs Debian's chromium).
"""

from __future__ import annotations

import io
import os
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from chromium import Chromium, find_chromium
from PIL import Image

pytestmark = pytest.mark.browser


@pytest.fixture(scope="module")
def browser(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Chromium]:
    exe = find_chromium()
    if exe is None:
        if os.environ.get("CI") == "true":
            pytest.fail("chromium is not installed (apt-get install -y chromium): the browser test must run in CI")
        pytest.skip("chromium is not installed (apt-get install -y chromium)")
    b = Chromium(exe, tmp_path_factory.mktemp("chromium-profile"))
    yield b
    b.close()


@pytest.mark.parametrize("pair", ["seed_copy", "seed_twin", "hostile",
                                  pytest.param("real_pair", marks=pytest.mark.realmodels)])
def test_report_loads_cleanly_in_chromium(browser: Chromium, pair: str, request: pytest.FixtureRequest,
                                          tmp_path: Path) -> None:
    paths: dict[str, Path] = request.getfixturevalue(pair)
    page = browser.load(paths["html"].as_uri())
    assert page["errors"] == []
    # nothing leaves the file: the page itself and its embedded data: images are the only loads
    assert [u for u in page["requests"] if not u.startswith("data:image/png;base64,")] == [paths["html"].as_uri()]
    assert page["scripts"] == 0 and page["sections"] >= 12
    assert page["images"] and all(done and w > 0 and h > 0 for done, w, h in page["images"])
    with Image.open(io.BytesIO(page["screenshot"])) as im:
        px = np.asarray(im.convert("L"), dtype=np.float64)
    assert px.shape[0] > 2000 and px.shape[1] == 1200  # the whole page, not just the viewport
    assert px.std() > 20 and (px < 128).mean() > 0.01  # text and pictures, not a blank page
    (tmp_path / f"{pair}.png").write_bytes(page["screenshot"])


def test_the_harness_sees_console_errors_remote_loads_and_broken_images(browser: Chromium, tmp_path: Path) -> None:
    page = tmp_path / "bad.html"
    page.write_text('<!DOCTYPE html><html><body><p>x</p><img src="http://127.0.0.1:9/x.png">'
                    '<img src="data:image/png;base64,AAAA"><script>console.error("boom")</script></body></html>')
    seen = browser.load(page.as_uri())
    assert any(e.get("type") == "error" for e in seen["errors"])
    assert "http://127.0.0.1:9/x.png" in seen["requests"]
    assert seen["scripts"] == 1 and [w for _, w, _ in seen["images"]] == [0, 0]
