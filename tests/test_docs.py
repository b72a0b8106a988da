"""The built HTML documentation (``make docs``): every image loads in headless Chromium, every
internal link and anchor resolves, nothing is fetched from the network, every public name of
the package is in the API reference with its docstring, and every gallery example ran.

The tests skip where the docs were not built or Chromium is missing, unless
``FAIRTUNE_REQUIRE_DOCS=1`` (set by ``.ci/run`` after it built them): then they fail instead.
"""

from __future__ import annotations

import functools
import importlib
import inspect
import json
import os
import pkgutil
import re
import shutil
import subprocess
import tempfile
import threading
from html.parser import HTMLParser
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import ModuleType
from urllib.parse import unquote, urlsplit

import pytest

import fairtune

ROOT = Path(__file__).resolve().parents[1]
HTML = ROOT / "docs" / "_build" / "html"
EXAMPLES = sorted((ROOT / "examples").glob("plot_*.py"))
REQUIRED = os.environ.get("FAIRTUNE_REQUIRE_DOCS") == "1"
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


def _unavailable(reason: str) -> None:
    if REQUIRED:
        pytest.fail(f"FAIRTUNE_REQUIRE_DOCS=1 but {reason}")
    pytest.skip(reason)


@pytest.fixture(scope="module")
def pages() -> list[Path]:
    """Every built HTML page (the search page and the generated indices included; not the
    theme's template files copied into ``_static``)."""
    if not (HTML / "index.html").is_file():
        _unavailable("the docs are not built (make docs)")
    return sorted(path for path in HTML.rglob("*.html") if "_static" not in path.relative_to(HTML).parts)


class _Page(HTMLParser):
    """The ids, links and loaded resources of one HTML page."""

    def __init__(self) -> None:
        super().__init__()
        self.ids: set[str] = set()
        self.links: list[str] = []
        self.resources: list[str] = []
        self.images: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        values = {key: value or "" for key, value in attrs}
        for key in ("id", "name"):
            if key in values:
                self.ids.add(values[key])
        if tag == "a" and "href" in values:
            self.links.append(values["href"])
        if tag == "link" and "href" in values:
            self.links.append(values["href"])
            self.resources.append(values["href"])
        if tag in ("script", "img", "iframe", "source") and values.get("src"):
            self.resources.append(values["src"])
        if tag == "img":
            self.images.append(values.get("src", ""))


@functools.cache
def parsed(path: Path) -> _Page:
    page = _Page()
    page.feed(path.read_text(encoding="utf-8"))
    return page


def _is_external(url: str) -> bool:
    return bool(urlsplit(url).scheme) or url.startswith("//")


def test_every_internal_link_and_anchor_resolves(pages):
    broken = []
    for path in pages:
        for url in parsed(path).links:
            if _is_external(url) or not url or url.startswith("?"):
                continue
            parts = urlsplit(url)
            target = (path.parent / unquote(parts.path)).resolve() if parts.path else path
            if target.is_dir():
                target = target / "index.html"
            if not target.is_file():
                broken.append(f"{path.relative_to(HTML)}: {url} (no such file)")
            elif parts.fragment and target.suffix == ".html" and unquote(parts.fragment) not in parsed(target).ids:
                broken.append(f"{path.relative_to(HTML)}: {url} (no such anchor)")
    assert not broken, "\n".join(broken[:30])


def test_nothing_is_loaded_from_the_network(pages):
    remote = [f"{path.relative_to(HTML)}: {url}" for path in pages for url in parsed(path).resources
              if _is_external(url) and not url.startswith("data:")]
    remote += [f"{css.relative_to(HTML)}: {match}" for css in HTML.rglob("*.css")
               for match in re.findall(r"url\(\s*['\"]?((?:https?:)?//[^)'\"]+)", css.read_text(errors="replace"))]
    assert not remote, "\n".join(remote[:30])


# --- the API reference ------------------------------------------------------------------------


def _public_modules() -> list[ModuleType]:
    names = ["fairtune"] + [info.name for info in pkgutil.walk_packages(fairtune.__path__, prefix="fairtune.")
                            if not any(part.startswith("_") for part in info.name.split("."))]
    return [importlib.import_module(name) for name in names]


def _public_objects() -> dict[int, tuple[object, list[str]]]:
    """Every public function and class: id -> (object, the dotted names it is public under)."""
    found: dict[int, tuple[object, list[str]]] = {}
    for module in _public_modules():
        names = getattr(module, "__all__", None)
        if names is None:
            names = [key for key, value in vars(module).items()
                     if not key.startswith("_") and getattr(value, "__module__", None) == module.__name__]
        for key in names:
            value = getattr(module, key)
            if inspect.isclass(value) or inspect.isroutine(value):
                found.setdefault(id(value), (value, []))[1].append(f"{module.__name__}.{key}")
    return found


def _documented(pages: list[Path]) -> dict[str, str]:
    """Anchor id -> the text of its description (the ``<dd>`` after the ``<dt id=...>``)."""
    entries: dict[str, str] = {}
    for path in pages:
        if path.parent.name != "api":
            continue
        text = path.read_text(encoding="utf-8")
        for match in re.finditer(r'<dt class="sig[^"]*" id="([^"]+)">.*?</dt>\s*<dd>(.*?)</dd>', text, re.DOTALL):
            entries.setdefault(match.group(1), " ".join(re.sub(r"<[^>]+>", " ", match.group(2)).split()))
    return entries


def _words(text: str) -> list[str]:
    """The words of a docstring as rendered: a role's name is not shown, ``:func:`~a.b``` shows ``b``."""
    text = re.sub(r":[\w:]+:`~?([^`]*?)`", lambda m: m.group(1).rsplit(".", 1)[-1] if "~" in m.group(0) else m.group(1), text)
    return re.findall(r"[A-Za-z]{4,}", text)


def test_every_public_function_and_class_is_in_the_api_reference_with_its_docstring(pages):
    documented = _documented(pages)
    missing, undocumented = [], []
    for value, names in _public_objects().values():
        anchors = [name for name in names if name in documented]
        if not anchors:
            missing.append(names[0])
            continue
        doc = inspect.cleandoc(value.__doc__) if isinstance(value.__doc__, str) else ""  # its own, not inherited
        first = _words(doc.split("\n\n")[0])[:3]
        if first and not all(word in documented[anchors[0]] for word in first):
            undocumented.append(f"{anchors[0]} (expected {first})")
    assert not missing, f"not in the API reference: {missing}"
    assert not undocumented, f"docstring not shown: {undocumented}"
    assert "Fine-tune the linear layer of a pre-trained classifier" in documented["fairtune.FairFineTuner"]


# --- the gallery ------------------------------------------------------------------------------


def test_every_example_ran_and_shows_its_figures(pages):
    assert EXAMPLES, "no examples/plot_*.py"
    for example in EXAMPLES:
        page = HTML / "auto_examples" / f"{example.stem}.html"
        assert page.is_file(), f"{example.name} has no page"
        text = page.read_text(encoding="utf-8")
        assert "Total running time of the script" in text, example.name
        figures = [src for src in parsed(page).images if f"sphx_glr_{example.stem}_" in src and "thumb" not in src]
        assert figures, f"{example.name} shows no figure"
    gallery = parsed(HTML / "auto_examples" / "index.html").links
    assert all(any(link.startswith(f"{example.stem}.html") for link in gallery) for example in EXAMPLES)


# --- headless browser -------------------------------------------------------------------------

#: The page that opens the others in an iframe, one after the other, and writes every <img>'s
#: src and naturalWidth into the DOM as JSON (lazy images are made eager and awaited).
HARNESS = """<!DOCTYPE html><html><body><pre id="image-check"></pre><script>
const pages = %s;
async function imagesOf(url) {
  const frame = document.createElement("iframe");
  frame.style.width = "1200px"; frame.style.height = "900px";
  const loaded = new Promise(resolve => frame.onload = resolve);
  frame.src = url; document.body.appendChild(frame); await loaded;
  const images = Array.from(frame.contentDocument.images);
  for (const image of images) image.loading = "eager";
  await Promise.all(images.map(image => image.complete ? null : new Promise(r => { image.onload = r; image.onerror = r; })));
  const found = images.map(image => ({page: url, src: image.getAttribute("src"), width: image.naturalWidth}));
  frame.remove();
  return found;
}
(async () => {
  let all = [];
  for (const url of pages) all = all.concat(await imagesOf(url));
  document.getElementById("image-check").textContent = JSON.stringify(all);
})();
</script></body></html>"""
BROKEN = '<!DOCTYPE html><html><body><img src="_images/no-such-image.png" alt="control"></body></html>'


def _serve(directory: Path, extra: dict[str, str]) -> ThreadingHTTPServer:
    """Serve ``directory`` and the in-memory pages ``extra`` on a free port of 127.0.0.1."""

    class Handler(SimpleHTTPRequestHandler):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, directory=str(directory), **kwargs)

        def do_GET(self) -> None:  # noqa: N802 (http.server's name)
            body = extra.get(urlsplit(self.path).path)
            if body is None:
                return super().do_GET()
            data = body.encode()
            self.send_response(200)
            self.send_header("Content-Type", "text/html; charset=utf-8")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, *args) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


def test_every_page_shows_every_image_in_a_headless_browser(pages):
    if CHROMIUM is None:
        _unavailable("chromium is not installed (apt-get install -y chromium)")
    with_images = ["/" + str(path.relative_to(HTML)) for path in pages if parsed(path).images]
    assert len(with_images) >= len(EXAMPLES) + 2  # the gallery, its examples, the results page
    urls = with_images + ["/__broken__.html"]
    server = _serve(HTML, {"/__check__.html": HARNESS % json.dumps(urls), "/__broken__.html": BROKEN})
    try:
        with tempfile.TemporaryDirectory() as profile:
            dom = subprocess.run(
                [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 f"--user-data-dir={profile}", "--virtual-time-budget=60000", "--dump-dom",
                 f"http://127.0.0.1:{server.server_address[1]}/__check__.html"],
                capture_output=True, text=True, timeout=300, check=True,
            ).stdout
    finally:
        server.shutdown()
    found = re.search(r'<pre id="image-check">(.*?)</pre>', dom, re.DOTALL)
    assert found and found.group(1), f"the image check did not finish; DOM starts: {dom[:300]!r}"
    images = json.loads(found.group(1).replace("&quot;", '"').replace("&amp;", "&").replace("&lt;", "<").replace("&gt;", ">"))
    control = [image for image in images if image["page"] == "/__broken__.html"]
    assert [image["width"] for image in control] == [0]  # the check can fail
    shown = [image for image in images if image["page"] != "/__broken__.html"]
    assert {image["page"] for image in shown} == set(with_images)
    assert len(shown) == sum(len(parsed(HTML / page[1:]).images) for page in with_images)
    broken = [f"{image['page']}: {image['src']}" for image in shown if image["width"] == 0]
    assert not broken, "\n".join(broken)
