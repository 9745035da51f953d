"""More training hands for ``synth text``: handwriting fonts from the npm registry (Fontsource packages).

The Debian packages give 16 training hand families (data.synth.hands), and a model trained on them
learns those fonts' letter shapes more than letters. Corpus version 4 adds the handwriting faces of
Google Fonts, which the npm registry (reachable from the development machines and CI, like PyPI and
Debian) publishes as ``@fontsource/<name>`` packages. They serve **training writers only**: the
validation and test hands stay the Debian faces of every earlier version, so results still compare.

Fetched once at setup time (``recognizers synth fonts``, ``make fonts``), never at run time: each
package version is pinned in ``npm_fonts.json`` with the registry's SHA-512 integrity, which the
download must match. The Latin 400-weight WOFF of each package is converted to TrueType with fontTools
into the font folder (``$RECOGNIZERS_FONT_DIR``, else ``$RECOGNIZERS_CACHE_DIR/fonts``, else
``~/.cache/recognizers/fonts``). Licences: OFL-1.1 (most), Apache-2.0 and MIT, as the manifest records;
the fonts are never committed to this repository.

Chosen from the Google Fonts handwriting category by looking at every face (2026-11-27): kept if
``hands.face_problem`` accepts it and its lower case is not small capitals (Permanent Marker, Rock
Salt and Walter Turncoat were dropped for that; Amatic SC and Long Cang fail the capitals check) and
it is not a Debian hand already (Nanum Pen Script). None belongs to a validation or test family.
"""

from __future__ import annotations

import base64
import functools
import hashlib
import io
import json
import os
import tarfile
import tempfile
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

__all__ = ["REGISTRY", "FetchSummary", "NpmFont", "fetch_fonts", "font_dir", "installed", "manifest"]

REGISTRY = "https://registry.npmjs.org"
_MANIFEST = Path(__file__).with_name("npm_fonts.json")


@dataclass(frozen=True)
class NpmFont:
    """One pinned Fontsource package."""

    name: str  # package name without the scope: "caveat" for @fontsource/caveat
    version: str
    license: str
    integrity: str  # the registry's "sha512-<base64>" of the tarball

    @property
    def package(self) -> str:
        return f"@fontsource/{self.name}"

    @property
    def file(self) -> str:
        """The TrueType file name in the font folder (prefixed so it never shadows a system font)."""
        return f"fontsource-{self.name}.ttf"

    @property
    def url(self) -> str:
        return f"{REGISTRY}/@fontsource/{self.name}/-/{self.name}-{self.version}.tgz"


@functools.cache  # read by every face lookup, the fetch and the tests' checks
def manifest() -> tuple[NpmFont, ...]:
    """The pinned packages, in manifest order (which fixes the training faces' order)."""
    return tuple(NpmFont(**entry) for entry in json.loads(_MANIFEST.read_text()))


def font_dir() -> Path:
    """Where the converted fonts live (see the module docstring)."""
    if os.environ.get("RECOGNIZERS_FONT_DIR"):
        return Path(os.environ["RECOGNIZERS_FONT_DIR"])
    root = os.environ.get("RECOGNIZERS_CACHE_DIR") or Path.home() / ".cache" / "recognizers"
    return Path(root) / "fonts"


def installed(folder: Path | None = None) -> dict[str, str]:
    """Font files of the manifest present in ``folder``: ``{file name: path}``."""
    folder = folder or font_dir()
    return {f.file: str(folder / f.file) for f in manifest() if (folder / f.file).is_file()}


def _check_integrity(data: bytes, font: NpmFont) -> None:
    algo, _, expected = font.integrity.partition("-")
    digest = base64.b64encode(hashlib.new(algo, data).digest()).decode()
    if digest != expected:
        raise ValueError(f"{font.url}: {algo} integrity mismatch (got {digest[:16]}..., pinned "
                         f"{expected[:16]}...)")


def _woff_member(archive: tarfile.TarFile, font: NpmFont) -> tarfile.TarInfo:
    """The Latin subset's regular (400) upright WOFF; the lightest upright Latin WOFF when no 400."""
    members = {m.name: m for m in archive.getmembers() if m.isfile()}
    wanted = f"package/files/{font.name}-latin-400-normal.woff"
    if wanted in members:
        return members[wanted]
    latin = sorted(n for n in members if n.startswith(f"package/files/{font.name}-latin-")
                   and n.endswith("-normal.woff") and "-latin-ext-" not in n)
    if not latin:
        raise ValueError(f"{font.url}: no Latin WOFF among {len(members)} files")
    return members[latin[0]]


def _convert(woff: bytes, target: Path) -> None:
    """WOFF to TrueType (Pillow's FreeType reads both; fontTools and a plain .ttf keep it simple)."""
    from fontTools.ttLib import TTFont

    font = TTFont(io.BytesIO(woff))
    font.flavor = None
    with tempfile.NamedTemporaryFile(dir=target.parent, suffix=".ttf.part", delete=False) as tmp:
        try:
            font.save(tmp)
        except BaseException:
            os.unlink(tmp.name)
            raise
    os.replace(tmp.name, target)  # atomic: a concurrent reader never sees half a font


def _download(url: str) -> bytes:
    with urllib.request.urlopen(url, timeout=60) as response:  # a pinned https URL
        return response.read()


@dataclass
class FetchSummary:
    """Outcome of :func:`fetch_fonts`."""

    folder: Path
    fetched: list[str] = field(default_factory=list)
    present: list[str] = field(default_factory=list)
    failed: dict[str, str] = field(default_factory=dict)  # package: why


def fetch_fonts(folder: Path | None = None, download: Callable[[str], bytes] | None = None) -> FetchSummary:
    """Download, verify and convert every manifest font missing from ``folder``.

    One package failing (network, integrity) does not stop the others; rerunning fetches only what
    is missing.

    Args:
        folder: the font folder (default :func:`font_dir`).
        download: ``url -> bytes`` (default: an HTTPS GET; tests pass a fake registry).

    Returns:
        What was fetched, what was already there and what failed with why.
    """
    from fontTools.ttLib import TTLibError

    folder, download = folder or font_dir(), download or _download
    folder.mkdir(parents=True, exist_ok=True)
    summary = FetchSummary(folder)
    for font in manifest():
        if (folder / font.file).is_file():
            summary.present.append(font.package)
            continue
        try:
            data = download(font.url)
            _check_integrity(data, font)
            with tarfile.open(fileobj=io.BytesIO(data), mode="r:gz") as archive:
                woff = archive.extractfile(_woff_member(archive, font)).read()
            _convert(woff, folder / font.file)
            summary.fetched.append(font.package)
        except (OSError, ValueError, tarfile.TarError, TTLibError) as exc:
            summary.failed[font.package] = str(exc)
    return summary
