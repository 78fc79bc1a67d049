"""What an image holds, gathered inside a throwaway container of it for
`imagekit sbom` (and the bill of materials `imagekit save` writes beside an
archive). Standard library only: it runs under the image's own `python`, with
no network, and prints one line, MARK followed by a JSON object:

  python   every installed distribution importlib.metadata finds: name,
           version, licence fields, its dist-info folder, the sha256 of its
           RECORD and METADATA files, the WHEEL file's tags
  debian   every package /var/lib/dpkg/status says is installed
  cuda     libcudart / libcudnn* / libnccl* files under site-packages/nvidia,
           with the nvidia-* distribution whose RECORD lists each
  os       /etc/os-release's ID, VERSION_ID, VERSION_CODENAME, PRETTY_NAME
  python_version, prefix

Reading only: nothing in the image changes (the container is removed after)."""

import hashlib
import importlib.metadata
import json
import os
import re
import sys

MARK = "IMAGEKIT_INVENTORY "
DPKG_STATUS = "/var/lib/dpkg/status"
CUDA_LIB = re.compile(r"^(libcudart|libcudnn[a-z_]*|libnccl[a-z_]*)\.so(?:\.([0-9][0-9.]*))?$")


def _sha256(path):
    try:
        with open(path, "rb") as f:
            return hashlib.sha256(f.read()).hexdigest()
    except OSError:
        return None


def _dist_path(dist):
    path = getattr(dist, "_path", None)      # PathDistribution: the dist-info folder
    return str(path) if path is not None else None


def python_packages():
    found, seen = [], set()
    for dist in importlib.metadata.distributions():
        meta = dist.metadata
        name = meta.get("Name") if meta is not None else None
        if not name:
            continue
        where = _dist_path(dist)
        key = (name.lower(), where)
        if key in seen:
            continue
        seen.add(key)
        wheel_tags = []
        if where:
            try:
                with open(os.path.join(where, "WHEEL"), encoding="utf-8", errors="replace") as f:
                    wheel_tags = [line.split(":", 1)[1].strip() for line in f
                                  if line.lower().startswith("tag:")]
            except OSError:
                pass
        found.append({
            "name": name,
            "version": meta.get("Version") or "",
            "license_expression": meta.get("License-Expression"),
            "license": meta.get("License"),
            "classifiers": [c for c in (meta.get_all("Classifier") or [])
                            if c.startswith("License ::")],
            "dist_info": where,
            "record_sha256": _sha256(os.path.join(where, "RECORD")) if where else None,
            "metadata_sha256": _sha256(os.path.join(where, "METADATA")) if where else None,
            "wheel_tags": wheel_tags,
        })
    return found


def debian_packages():
    try:
        with open(DPKG_STATUS, encoding="utf-8", errors="replace") as f:
            text = f.read()
    except OSError:
        return []
    found = []
    for block in text.split("\n\n"):
        fields, last = {}, None
        for line in block.splitlines():
            if line[:1] in (" ", "\t"):
                continue                       # a continued field (Description, Conffiles)
            key, sep, value = line.partition(":")
            if sep:
                last = key.strip()
                fields[last] = value.strip()
        if not fields.get("Package") or not fields.get("Status", "").endswith(" installed"):
            continue
        source, _, source_version = fields.get("Source", "").partition(" ")
        found.append({"name": fields["Package"], "version": fields.get("Version", ""),
                      "architecture": fields.get("Architecture", ""),
                      "source": source or None,
                      "source_version": source_version.strip("()") or None})
    return found


def _owners():
    """Installed file path -> (distribution, version), for the nvidia-* wheels."""
    owners = {}
    for dist in importlib.metadata.distributions():
        name = (dist.metadata.get("Name") or "") if dist.metadata is not None else ""
        if not name.lower().startswith("nvidia"):
            continue
        for f in dist.files or []:
            if ".so" in f.name:
                owners[os.path.realpath(str(f.locate()))] = (name, dist.metadata.get("Version") or "")
    return owners


def cuda_libraries():
    found = []
    owners = None
    roots = {p for p in sys.path if p.endswith("-packages") and os.path.isdir(p)}
    for root in sorted(roots):
        nvidia = os.path.join(root, "nvidia")
        if not os.path.isdir(nvidia):
            continue
        for folder, _dirs, files in os.walk(nvidia):
            for name in sorted(files):
                m = CUDA_LIB.match(name)
                if not m:
                    continue
                path = os.path.join(folder, name)
                if os.path.islink(path):
                    continue
                if owners is None:
                    owners = _owners()
                owner = owners.get(os.path.realpath(path))
                found.append({"file": name, "library": m.group(1), "version": m.group(2) or "",
                              "path": path, "bytes": os.path.getsize(path),
                              "package": owner[0] if owner else None,
                              "package_version": owner[1] if owner else None})
    return found


def os_release():
    out = {}
    try:
        with open("/etc/os-release", encoding="utf-8", errors="replace") as f:
            for line in f:
                key, sep, value = line.strip().partition("=")
                if sep and key in ("ID", "VERSION_ID", "VERSION_CODENAME", "PRETTY_NAME"):
                    out[key] = value.strip().strip('"')
    except OSError:
        pass
    return out


def main():
    report = {"python_version": ".".join(map(str, sys.version_info[:3])), "prefix": sys.prefix,
              "python": python_packages(), "debian": debian_packages(),
              "cuda": cuda_libraries(), "os": os_release()}
    sys.stdout.write(MARK + json.dumps(report, sort_keys=True) + "\n")
    sys.stdout.flush()


if __name__ == "__main__":
    main()
