"""Sbom stage: a bill of materials of a built image, as CycloneDX 1.5 JSON.

Why CycloneDX: one component model covers everything an ML image holds —
Python distributions (purl pkg:pypi/NAME@VERSION), Debian packages
(pkg:deb/debian/NAME@VERSION?arch=ARCH), the CUDA libraries that come inside
the nvidia-* wheels, the base image and the image itself (type "container") —
each with hashes, licences and free-form properties; and its JSON schema is
small, published and checkable offline (the tests validate every document
against the official 1.5 schema).

What is in the image is read inside a throwaway container of it (no network,
removed on every way out) by imagekit/checks/inventory.py, a standard-library
script run by the image's own `python`, which prints one JSON line. The
document then says, honestly, what can be known:

- a Python package's hash is the sha256 of its wheel when imagekit's
  wheelhouse holds that wheel (same name, version and tags, and the wheel's
  METADATA is byte-for-byte the installed one); otherwise no hash is claimed
  and the property imagekit:dist-info:record-sha256 gives the sha256 of the
  installed RECORD file (it lists every installed file with its own hash);
- licences come from License-Expression, else License, else the licence
  classifiers;
- libcudart / libcudnn* / libnccl* files under site-packages/nvidia are
  "library" components named after the file, versioned by its soname;
- the base image is the image's pedigree ancestor: the spec's base (and the
  image it is built FROM after imagekit.toml's [bases] mapping), or for an
  image from outside the catalog its org.opencontainers.image.base.name label;
- metadata.component is the image: its reference, the engine's image ID, its
  identity (the same on every image store) and, on the classic store where the
  ID is the config digest, the config digest.

`imagekit sbom NAME` prints the document or writes it with -o (a temporary
file beside it, renamed when complete); `imagekit save` writes it beside the
archive as PATH.sbom.json (save.py)."""

from __future__ import annotations

import datetime
import hashlib
import json
import time
import uuid
import zipfile
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import quote

from packaging.utils import InvalidWheelFilename, canonicalize_name, parse_wheel_filename
from packaging.version import InvalidVersion, Version

from . import __version__
from .archive import tar_of, write_atomically
from .config import Project
from .engine import EngineAPI
from .errors import DiskFullError, Interrupted, SbomError
from .events import Event, Info, SbomResult
from .targets import ImageTarget

INVENTORY = Path(__file__).resolve().parent / "checks" / "inventory.py"
INVENTORY_IN_CONTAINER = "/imagekit/sbom/inventory.py"
MARK = "IMAGEKIT_INVENTORY "
TIMEOUT = 300                 # seconds the inventory container may take
SPEC_VERSION = "1.5"
BASE_LABEL = "org.opencontainers.image.base.name"
SCHEMA = "http://cyclonedx.org/schema/bom-1.5.schema.json"
HASH_CHUNK = 4 * 1024 * 1024
DISK_FULL = (28, 122)          # ENOSPC, EDQUOT

_wheel_hashes: dict[tuple[str, int, int], str] = {}   # (path, size, mtime_ns) -> sha256


# -- gathering ------------------------------------------------------------------


def inventory(engine: EngineAPI, target: ImageTarget, timeout: int = TIMEOUT) -> dict:
    """Run the inventory script in a throwaway container of the image (no
    network) and return what it printed. SbomError when it cannot."""
    name = target.name
    files = tar_of({INVENTORY_IN_CONTAINER.lstrip("/"): INVENTORY.read_bytes()})
    with engine.container(target.ref, ["python", INVENTORY_IN_CONTAINER],
                          name=f"imagekit-sbom-{uuid.uuid4().hex[:10]}", files=files,
                          network=False) as cid:
        try:
            code = engine.wait(cid, timeout=timeout)
        except TimeoutError:
            raise SbomError(f"{name}: listing what {target.ref} holds took longer than "
                            f"{timeout}s; the container was removed") from None
        buf = b"".join(engine.logs(cid, follow=False))
    lines = buf.decode(errors="replace").splitlines()
    found = next((ln for ln in reversed(lines) if ln.startswith(MARK)), None)
    if code != 0 or found is None:
        tail = [ln for ln in lines if not ln.startswith(MARK)][-3:]
        last = f": {tail[-1][:200]}" if tail else ""
        if code in (126, 127):
            why = f"it has no `python` on its PATH to run the inventory script (exit {code}{last})"
        else:
            why = f"its `python` ran the inventory script with exit {code}{last}"
        raise SbomError(f"{name}: could not list what {target.ref} holds: {why}",
                        details=[f"| {t}" for t in tail])
    try:
        data = json.loads(found[len(MARK):])
    except json.JSONDecodeError as e:
        raise SbomError(f"{name}: the inventory script printed unreadable JSON ({e.msg})") from None
    if not isinstance(data, dict):
        raise SbomError(f"{name}: the inventory script printed no JSON object")
    return data


# -- wheels ---------------------------------------------------------------------

def _same_version(a: str, b: str) -> bool:
    try:
        return Version(a) == Version(b)
    except InvalidVersion:
        return a == b


def _wheel_metadata_sha256(path: Path) -> str | None:
    try:
        with zipfile.ZipFile(path) as zf:
            for info in zf.infolist():
                parts = info.filename.split("/")
                if len(parts) == 2 and parts[0].endswith(".dist-info") and parts[1] == "METADATA":
                    return hashlib.sha256(zf.read(info)).hexdigest()
    except (OSError, zipfile.BadZipFile, KeyError):
        return None
    return None


def _file_sha256(path: Path) -> str:
    st = path.stat()
    key = (str(path), st.st_size, st.st_mtime_ns)
    if key not in _wheel_hashes:
        h = hashlib.sha256()
        with path.open("rb") as f:
            while chunk := f.read(HASH_CHUNK):
                h.update(chunk)
        _wheel_hashes[key] = h.hexdigest()
    return _wheel_hashes[key]


class Wheelhouse:
    """The project's wheelhouse, indexed by (canonical name, version) once."""

    def __init__(self, folder: Path | None):
        self.folder = folder
        self.index: dict[str, list[tuple[Path, str, frozenset[str]]]] = {}
        if folder is None or not folder.is_dir():
            return
        for p in folder.iterdir():
            if not p.name.endswith(".whl") or not p.is_file():
                continue
            try:
                wname, wver, _build, tags = parse_wheel_filename(p.name)
            except (InvalidWheelFilename, InvalidVersion):
                continue
            self.index.setdefault(wname, []).append((p, str(wver), frozenset(map(str, tags))))

    def match(self, pkg: dict) -> tuple[Path, str] | None:
        """(the wheel file, its sha256) when the wheelhouse holds the very wheel
        this installed distribution came from, else None."""
        candidates = [(p, tags) for p, ver, tags in
                      self.index.get(canonicalize_name(str(pkg.get("name", ""))), [])
                      if _same_version(ver, str(pkg.get("version", "")))]
        installed = set(pkg.get("wheel_tags") or [])
        if installed:
            candidates = [(p, tags) for p, tags in candidates if tags & installed]
        want = pkg.get("metadata_sha256")
        for p, _tags in sorted(candidates):
            if want and _wheel_metadata_sha256(p) == want:
                return p, _file_sha256(p)
        return None


# -- the document -----------------------------------------------------------------

def pypi_purl(name: str, version: str) -> str:
    return f"pkg:pypi/{quote(canonicalize_name(name), safe='')}@{quote(version, safe='')}"


def deb_purl(name: str, version: str, arch: str) -> str:
    purl = f"pkg:deb/debian/{quote(name, safe='')}@{quote(version, safe=':')}"
    return f"{purl}?arch={quote(arch, safe='')}" if arch else purl


def licenses(pkg: dict) -> list[dict]:
    """CycloneDX licences from the metadata: License-Expression, else License
    (its first line, when it is not the whole licence text), else the
    classifiers' last part."""
    expression = (pkg.get("license_expression") or "").strip()
    if expression:
        return [{"expression": expression}]
    text = (pkg.get("license") or "").strip()
    if text and text.upper() != "UNKNOWN":
        first = text.splitlines()[0].strip()
        if len(text.splitlines()) == 1 and len(first) <= 120:
            return [{"license": {"name": first}}]
    names = []
    for c in pkg.get("classifiers") or []:
        last = c.split("::")[-1].strip()
        if last and last not in ("OSI Approved", "License") and last not in names:
            names.append(last)
    if names:
        return [{"license": {"name": n}} for n in names]
    if text and text.upper() != "UNKNOWN":
        return [{"license": {"name": text.splitlines()[0].strip()[:120] + " (first line)"}}]
    return []


LOCK_LABEL = "io.imagekit.lock"     # the sha256 of the requirements.lock a build installed


def _prop(name: str, value) -> dict:
    return {"name": name, "value": str(value)}


def _python_component(pkg: dict, wheels: Wheelhouse) -> tuple[dict, bool]:
    name, version = str(pkg["name"]), str(pkg.get("version") or "")
    purl = pypi_purl(name, version)
    comp: dict = {"type": "library", "bom-ref": purl, "name": name, "version": version,
                  "purl": purl}
    lic = licenses(pkg)
    if lic:
        comp["licenses"] = lic
    props = [_prop("imagekit:package-type", "python")]
    hashed = wheels.match(pkg)
    if hashed is not None:
        comp["hashes"] = [{"alg": "SHA-256", "content": hashed[1]}]
        props.append(_prop("imagekit:hash-of", f"wheel {hashed[0].name} (imagekit's wheelhouse)"))
    elif pkg.get("record_sha256"):
        props.append(_prop("imagekit:dist-info:record-sha256", pkg["record_sha256"]))
        props.append(_prop("imagekit:hash-of", "none: the wheel is not in imagekit's wheelhouse; "
                           "imagekit:dist-info:record-sha256 is the sha256 of the installed "
                           "RECORD file, which lists every installed file's hash"))
    if pkg.get("dist_info"):
        props.append(_prop("imagekit:dist-info", pkg["dist_info"]))
    comp["properties"] = props
    return comp, hashed is not None


def _debian_component(pkg: dict) -> dict:
    name, version, arch = str(pkg["name"]), str(pkg.get("version") or ""), \
        str(pkg.get("architecture") or "")
    purl = deb_purl(name, version, arch)
    props = [_prop("imagekit:package-type", "debian")]
    if arch:
        props.append(_prop("imagekit:deb:architecture", arch))
    if pkg.get("source"):
        src = pkg["source"] + (f" ({pkg['source_version']})" if pkg.get("source_version") else "")
        props.append(_prop("imagekit:deb:source", src))
    return {"type": "library", "bom-ref": purl, "name": name, "version": version, "purl": purl,
            "properties": props}


def _cuda_component(lib: dict) -> dict:
    path = str(lib.get("path") or lib["file"])
    props = [_prop("imagekit:package-type", "cuda-library"), _prop("imagekit:file", lib["file"]),
             _prop("imagekit:path", path), _prop("imagekit:bytes", lib.get("bytes", 0))]
    if lib.get("package"):
        # the soname says only the major version; the wheel that installed it says the rest
        props.append(_prop("imagekit:installed-by",
                           pypi_purl(str(lib["package"]), str(lib.get("package_version") or ""))))
    return {"type": "library", "bom-ref": f"file:{path}", "name": str(lib["library"]),
            "version": str(lib.get("version") or ""), "properties": props}


def _split_ref(ref: str) -> tuple[str, str]:
    base = ref.split("@")[0]
    last = base.rsplit("/", 1)[-1]
    if ":" in last:
        return base[:len(base) - len(last)] + last.split(":")[0], last.split(":", 1)[1]
    return base, "latest"


def base_images(project: Project | None, target: ImageTarget) -> list[dict]:
    """The image's pedigree: the base it was built on."""
    if target.plan is not None:
        spec_base = target.plan.base_image
        built_from = project.map_base(spec_base) if project is not None else spec_base
    else:
        spec_base = built_from = target.image.labels.get(BASE_LABEL) or ""
    if not spec_base:
        return []
    name, version = _split_ref(spec_base)
    props = [_prop("imagekit:role", "base image")]
    if built_from != spec_base:
        props.append(_prop("imagekit:built-from", built_from))
    return [{"type": "container", "bom-ref": f"base:{spec_base}", "name": name,
             "version": version, "properties": props}]


def document(project: Project | None, target: ImageTarget, inv: dict, *,
             wheelhouse: Path | None = None, config_digest: str | None = None,
             now: float | None = None, serial: str | None = None) -> tuple[dict, dict]:
    """The CycloneDX 1.5 document for an inventory, and its counts."""
    wheels = Wheelhouse(wheelhouse)
    components: list[dict] = []
    seen: set[str] = set()
    hashed = 0
    py = sorted(inv.get("python") or [], key=lambda p: (canonicalize_name(str(p.get("name"))),
                                                         str(p.get("version"))))
    n_py = 0
    for pkg in py:
        if not pkg.get("name"):
            continue
        comp, ok = _python_component(pkg, wheels)
        if comp["bom-ref"] in seen:
            continue
        seen.add(comp["bom-ref"])
        components.append(comp)
        hashed += ok
        n_py += 1
    n_deb = 0
    for pkg in sorted(inv.get("debian") or [], key=lambda p: (str(p.get("name")),
                                                             str(p.get("architecture")))):
        if not pkg.get("name"):
            continue
        comp = _debian_component(pkg)
        if comp["bom-ref"] in seen:
            continue
        seen.add(comp["bom-ref"])
        components.append(comp)
        n_deb += 1
    n_cuda = 0
    for lib in sorted(inv.get("cuda") or [], key=lambda x: str(x.get("path"))):
        comp = _cuda_component(lib)
        if comp["bom-ref"] in seen:
            continue
        seen.add(comp["bom-ref"])
        components.append(comp)
        n_cuda += 1
    osr = inv.get("os") or {}
    if osr.get("ID"):
        ref = f"os:{osr['ID']}@{osr.get('VERSION_ID', '')}"
        os_comp = {"type": "operating-system", "bom-ref": ref, "name": osr["ID"],
                   "version": osr.get("VERSION_ID", "")}
        if osr.get("PRETTY_NAME"):
            os_comp["description"] = osr["PRETTY_NAME"]
        components.append(os_comp)
        seen.add(ref)

    image = target.image
    repo, tag = _split_ref(target.ref)
    image_ref = f"image:{image.key}"
    props = [_prop("imagekit:image-id", image.id), _prop("imagekit:reference", target.ref)]
    if image.identity:
        props.append(_prop("imagekit:identity", image.identity))
    if config_digest:
        props.append(_prop("imagekit:config-digest", config_digest))
    facts = {k: target.fact(k) for k in ("framework", "version", "device", "python", "cuda")}
    for k, v in facts.items():
        if v:
            props.append(_prop(f"imagekit:{k}", v))
    if inv.get("python_version"):
        props.append(_prop("imagekit:python-in-image", inv["python_version"]))
    locked = image.labels.get(LOCK_LABEL)
    props.append(_prop("imagekit:requirements-lock", locked or
                       "none: its Python packages were resolved at build time"))
    main: dict = {"type": "container", "bom-ref": image_ref, "name": repo, "version": tag,
                  "properties": props}
    ancestors = base_images(project, target)
    if ancestors:
        main["pedigree"] = {"ancestors": ancestors}
    when = datetime.datetime.fromtimestamp(time.time() if now is None else now,
                                           tz=datetime.timezone.utc)
    doc = {
        "$schema": SCHEMA,
        "bomFormat": "CycloneDX",
        "specVersion": SPEC_VERSION,
        "serialNumber": serial or f"urn:uuid:{uuid.uuid4()}",
        "version": 1,
        "metadata": {
            "timestamp": when.strftime("%Y-%m-%dT%H:%M:%SZ"),
            "tools": {"components": [{"type": "application", "name": "imagekit",
                                      "version": __version__}]},
            "component": main,
        },
        "components": components,
        "dependencies": [{"ref": image_ref, "dependsOn": [c["bom-ref"] for c in components]}],
    }
    counts = {"python_packages": n_py, "debian_packages": n_deb, "cuda_libraries": n_cuda,
              "wheel_hashes": hashed}
    return doc, counts


def _config_digest(engine: EngineAPI, target: ImageTarget) -> str | None:
    """The config digest where the engine's ID is one (the classic store)."""
    try:
        return target.image_id if engine.facts().store == "classic" else None
    except Exception:  # noqa: BLE001 - a fact that is only nice to have
        return None


def build(project: Project, target: ImageTarget, engine: EngineAPI) -> tuple[dict, dict]:
    """Gather and assemble: (the document, its counts). SbomError when the
    image cannot be listed; the engine's own refusals as EngineError."""
    inv = inventory(engine, target)
    return document(project, target, inv, wheelhouse=project.wheelhouse,
                    config_digest=_config_digest(engine, target))


def text(doc: dict) -> str:
    return json.dumps(doc, indent=2) + "\n"


def sbom(project: Project, target: ImageTarget, engine: EngineAPI, *,
         output: Path | None = None, keep: list[dict] | None = None) -> Iterator[Event]:
    """The image's bill of materials, written to `output` when given and
    appended to `keep` when given: yields Info and a final SbomResult. Raises
    SbomError (13), DiskFullError (15), Interrupted (130)."""
    name = target.name
    path = Path(output).absolute() if output is not None else None
    if path is not None and path.is_dir():
        path = path / f"{_split_ref(target.ref)[0].rsplit('/', 1)[-1]}.sbom.json"
    if path is not None and not path.parent.is_dir():
        raise SbomError(f"{name}: cannot write {path}: folder {path.parent} does not exist")
    yield Info(name, f"listing what {target.ref} ({target.image_id[:19]}) holds, in a container "
                     "with no network")
    started = time.monotonic()
    try:
        doc, counts = build(project, target, engine)
        if path is not None:
            write_atomically(path, text(doc))
    except KeyboardInterrupt:
        raise Interrupted(f"{name}: sbom interrupted; the container was removed"
                          + (f" and {path} was not written" if path else "")) from None
    except OSError as e:
        if e.errno in DISK_FULL:
            raise DiskFullError(f"{name}: disk full writing {path}") from None
        raise SbomError(f"{name}: writing {path} failed: {e.strerror or e}") from None
    if keep is not None:
        keep.append(doc)
    seconds = round(time.monotonic() - started, 2)
    yield SbomResult(name, ref=target.ref, image_id=target.image_id,
                     path=str(path) if path else "", seconds=seconds, **counts)

