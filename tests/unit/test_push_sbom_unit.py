"""`imagekit push --sbom` without an engine or a registry: the bill of
materials attached as an OCI artifact to the pushed image, against a
registry kept in memory (fakes.FakeRegistry) that has the referrers API or
not, already lists another referrer, refuses the artifact, or echoes what
it was sent; over the engine's push and over imagekit's own."""

from __future__ import annotations

import base64
import json
import types

import pytest
from fakes import FakeEngine, FakeRegistry, FakeResponse, FakeSession, image_archive, push_ok

from imagekit import attach, records, registry, targets
from imagekit import push as push_stage
from imagekit import sbom as sbom_stage
from imagekit.config import load_project
from imagekit.display import Display, error
from imagekit.errors import ConfigError, PushError, SbomError
from imagekit.events import PushResult, Warn

TAR, IMAGE_ID = image_archive(["x:v1"])
HOST = "reg.example.com"
REPO = "team/x_train"
SCHEMA2 = "application/vnd.docker.distribution.manifest.v2+json"
IMAGE_MANIFEST = json.dumps({"schemaVersion": 2, "mediaType": SCHEMA2, "layers": [],
                             "config": {"mediaType": "application/vnd.docker.container.image.v1+json",
                                        "digest": "sha256:" + "12" * 32, "size": 7}}).encode()
INVENTORY = {"python_version": "3.11.2",
             "python": [{"name": "numpy", "version": "2.3.1", "license_expression": "BSD-3-Clause",
                         "classifiers": [], "dist_info": "/n", "record_sha256": "44" * 32,
                         "metadata_sha256": "55" * 32, "wheel_tags": []}],
             "debian": [{"name": "libc6", "version": "2.36-9", "architecture": "amd64",
                         "source": "glibc", "source_version": None}],
             "os": {"ID": "debian", "VERSION_ID": "12"}}
USER, SECRET = "ci-bot", "s3cret-Passw0rd-9f"
MANIFEST_INVALID = {"errors": [{"code": "MANIFEST_INVALID", "message": "manifest invalid"}]}
OTHER = {"mediaType": attach.OCI_MANIFEST, "digest": "sha256:" + "77" * 32, "size": 500,
         "artifactType": "application/vnd.dev.cosign.artifact.sig.v1+json",
         "annotations": {"org.opencontainers.image.created": "2024-05-01T00:00:00Z"}}


def sbom_bytes(timestamp: str = "2025-06-01T12:00:00Z") -> bytes:
    return json.dumps({"bomFormat": "CycloneDX", "specVersion": "1.5",
                       "metadata": {"timestamp": timestamp}}).encode()


def _requests(fake: FakeRegistry, method: str, part: str) -> list[str]:
    return [p for m, p in fake.requests if m == method and part in p]


def _attach(fake: FakeRegistry, digest: str, doc: bytes, auth=None):
    reg, _ = fake.session(auth)
    return attach.attach(reg, REPO, "v1", digest, doc, where=f"{HOST}/{REPO}",
                         title="x_train.sbom.json")


def _check_artifact(fake: FakeRegistry, got, subject: str, doc: bytes) -> dict:
    """The artifact manifest the registry holds for GOT, checked against the
    OCI 1.1 artifact shape; returned."""
    media_type, data = fake.manifests[got.digest]
    m = json.loads(data)
    assert media_type == m["mediaType"] == attach.OCI_MANIFEST and m["schemaVersion"] == 2
    assert m["artifactType"] == "application/vnd.cyclonedx+json"
    assert m["subject"] == {"mediaType": SCHEMA2, "digest": subject, "size": len(IMAGE_MANIFEST)}
    assert m["config"]["mediaType"] == "application/vnd.oci.empty.v1+json"
    assert fake.blobs[m["config"]["digest"]] == b"{}" and m["config"]["size"] == 2
    [layer] = m["layers"]
    assert layer["mediaType"] == "application/vnd.cyclonedx+json"
    assert fake.blobs[layer["digest"]] == doc and layer["size"] == len(doc)
    assert m["annotations"]["org.opencontainers.image.created"] == \
        json.loads(doc)["metadata"]["timestamp"]
    assert m["annotations"]["org.opencontainers.image.title"] == "x_train.sbom.json"
    assert got.ref == f"{HOST}/{REPO}@{got.digest}" and got.subject == subject
    return m


@pytest.mark.parametrize("how", ["OCI-Subject header", "GET referrers"])
def test_a_registry_with_the_referrers_api_lists_it_itself(how):
    fake = FakeRegistry(subject_header=how == "OCI-Subject header",
                        referrers_api=how == "GET referrers")
    subject = fake.seed(REPO, "v1", SCHEMA2, IMAGE_MANIFEST)
    doc = sbom_bytes()
    got = _attach(fake, subject, doc)
    _check_artifact(fake, got, subject, doc)
    assert got.how == "referrers API" and got.tag == ""
    assert (REPO, attach.referrers_tag(subject)) not in fake.tags   # no fallback tag written
    asked = _requests(fake, "GET", "/referrers/")
    assert asked == ([] if how == "OCI-Subject header" else [f"/v2/{REPO}/referrers/{subject}"])
    # the artifact went up by digest, never as a tag
    assert _requests(fake, "PUT", "/manifests/") == [f"/v2/{REPO}/manifests/{got.digest}"]


def test_the_tag_scheme_keeps_the_referrers_already_listed():
    fake = FakeRegistry()                    # distribution 2.8: referrers answer 404
    subject = fake.seed(REPO, "v1", SCHEMA2, IMAGE_MANIFEST)
    tag = "sha256-" + subject.removeprefix("sha256:")
    assert attach.referrers_tag(subject) == tag
    fake.seed(REPO, tag, attach.OCI_INDEX, json.dumps(
        {"schemaVersion": 2, "mediaType": attach.OCI_INDEX, "manifests": [OTHER]}).encode())
    fake.blobs[attach._sha256(b"{}")] = b"{}"      # the empty config is there already
    doc = sbom_bytes()
    got = _attach(fake, subject, doc)
    m = _check_artifact(fake, got, subject, doc)
    assert got.how == "referrers tag" and got.tag == tag
    media_type, data = fake.manifests[fake.tags[(REPO, tag)]]
    index = json.loads(data)
    assert media_type == index["mediaType"] == attach.OCI_INDEX
    ours = {"mediaType": attach.OCI_MANIFEST, "digest": got.digest,
            "size": len(fake.manifests[got.digest][1]),
            "artifactType": "application/vnd.cyclonedx+json", "annotations": m["annotations"]}
    assert index["manifests"] == [OTHER, ours]
    # HEAD first: the blob the registry held is not sent; only the SBOM is
    assert len(_requests(fake, "POST", "/blobs/uploads/")) == 1
    # the same artifact again: listed once, nothing uploaded again
    again = _attach(fake, subject, doc)
    assert again.digest == got.digest
    assert json.loads(fake.manifests[fake.tags[(REPO, tag)]][1])["manifests"] == [OTHER, ours]
    assert len(_requests(fake, "POST", "/blobs/uploads/")) == 1


def test_a_tag_that_holds_no_index_is_left_alone():
    fake = FakeRegistry()
    subject = fake.seed(REPO, "v1", SCHEMA2, IMAGE_MANIFEST)
    held = fake.seed(REPO, attach.referrers_tag(subject), SCHEMA2, IMAGE_MANIFEST)
    with pytest.raises(PushError, match="holds something other than an OCI image index"):
        _attach(fake, subject, sbom_bytes())
    assert fake.tags[(REPO, attach.referrers_tag(subject))] == held


def test_a_tag_that_moved_since_the_push_gets_nothing():
    fake = FakeRegistry(subject_header=True)
    fake.seed(REPO, "v1", SCHEMA2, IMAGE_MANIFEST)
    with pytest.raises(PushError, match="now holds sha256:.*not the pushed sha256:" + "ee" * 32):
        _attach(fake, "sha256:" + "ee" * 32, sbom_bytes())
    assert _requests(fake, "PUT", "") == []


# -- the push stage ------------------------------------------------------------------

@pytest.fixture
def proj(offline):
    """Image x, pushed as x_train (with the smoke gate off: no smoke record)."""
    offline.add("x", {"framework": {"name": "pytorch", "version": "2.13.0"}, "tags": ["v1"],
                      "push": {"repository": "x_train"}})
    return load_project(offline.root)


def _engine(digest: str, inventory: dict | None = INVENTORY) -> FakeEngine:
    eng = FakeEngine(export=TAR, pushes={HOST: [push_ok(digest=digest)]})
    eng.add_image("x:v1", IMAGE_ID, size=len(TAR))
    if inventory is not None:
        eng.on_run("inventory.py", logs=[sbom_stage.MARK + json.dumps(inventory)])
    else:
        eng.on_run("inventory.py", exit_code=127, logs=["exec: python: not found"])
    return eng


def _through(monkeypatch, fake) -> dict:
    """The push's registry sessions talk to FAKE; the sessions made, by host."""
    made: dict[str, registry.Registry] = {}
    real = attach.sessions

    def sessions(auths):
        regs = real(auths)
        for reg in regs.values():
            reg._local = types.SimpleNamespace(session=FakeSession(fake))
        made.update(regs)
        return regs
    monkeypatch.setattr(attach, "sessions", sessions)
    return made


def _push(proj, eng, events: list, **kw) -> None:
    kw.setdefault("sleep", lambda s: None)
    kw.setdefault("via", "engine")
    target = targets.resolve(proj, eng, "x", error=PushError)
    for ev in push_stage.push(proj, target, eng, to=[f"{HOST}/team"], sbom=True,
                              smoke_gate=False, **kw):
        events.append(ev)


def test_push_sbom_through_the_engine_attaches_the_image_bill_of_materials(
        proj, monkeypatch, capsys):
    fake = FakeRegistry()
    subject = fake.seed(REPO, "v1", SCHEMA2, IMAGE_MANIFEST)   # what the engine's push left
    _through(monkeypatch, fake)
    eng = _engine(subject)
    events: list = []
    _push(proj, eng, events)
    [dest] = events[-1].destinations
    got = dest.sbom
    assert dest.digest == subject and got.how == "referrers tag"
    assert got.tag == "sha256-" + subject[7:]
    m = json.loads(fake.manifests[got.digest][1])
    assert m["subject"]["digest"] == subject
    doc = json.loads(fake.blobs[m["layers"][0]["digest"]])
    component = doc["metadata"]["component"]
    assert component["name"] == "x" and component["version"] == "v1"
    assert {"name": "imagekit:image-id", "value": IMAGE_ID} in component["properties"]
    assert [c["name"] for c in doc["components"]] == ["numpy", "libc6", "debian"]
    # the one display: the plain line, and the JSON result
    with Display("plain") as d:
        d.show(events[-1])
    with Display("json") as d:
        d.show(events[-1])
    out = capsys.readouterr().out.splitlines()
    assert f"    sbom: {HOST}/{REPO}@{got.digest} (referrers tag {got.tag})" in out
    data = json.loads(out[-1])["data"]["destinations"][0]["sbom"]
    assert data == {"ref": got.ref, "digest": got.digest, "subject": subject,
                    "how": "referrers tag", "tag": got.tag}


def test_push_sbom_on_the_own_path_attaches_with_the_push_sessions(proj, monkeypatch):
    fake = FakeRegistry(subject_header=True)
    subject = fake.seed(REPO, "v1", SCHEMA2, IMAGE_MANIFEST)
    made = _through(monkeypatch, fake)
    given = []

    def fake_push(chunks, targets_, auths, **kw):     # the own path: its upload, scripted
        given.append(kw["registries"])
        b"".join(chunks)
        for t in targets_:
            yield registry.TargetPushed(t.ref, subject, 1234, 0.5)
    monkeypatch.setattr(registry, "push", fake_push)
    events: list = []
    _push(proj, _engine(subject), events, via="own")
    [dest] = events[-1].destinations
    assert dest.via == "direct" and dest.sbom.how == "referrers API"
    # the attach went through the very Registry the push was handed (its auth, its tokens)
    assert given == [made] and made[HOST]._local.session.sent


def test_a_registry_that_refuses_the_artifact_keeps_the_image_and_fails_the_push(
        proj, monkeypatch, capsys):
    fake = FakeRegistry(refuse=lambda media_type, doc: MANIFEST_INVALID if doc.get("subject")
                        else None)
    subject = fake.seed(REPO, "v1", SCHEMA2, IMAGE_MANIFEST)
    _through(monkeypatch, fake)
    eng = _engine(subject)
    events: list = []
    with pytest.raises(PushError) as e:
        _push(proj, eng, events)
    assert e.value.exit_code == 10
    message = e.value.message
    assert "\n" not in message and e.value.details == []
    assert message.startswith(f"x: {HOST}/{REPO}:v1: pushed ({subject}), but its bill of "
                              "materials was not attached: ")
    assert f"{HOST}: PUT the SBOM's artifact manifest: 400 MANIFEST_INVALID" in message
    # the image push stands: reported, recorded, its tag in the registry and the engine
    assert isinstance(events[-1], PushResult) and events[-1].destinations[0].sbom is None
    assert events[-1].destinations[0].digest == subject
    assert records.read(proj, IMAGE_ID).pushed == [f"{HOST}/{REPO}@{subject}"]
    assert fake.tags[(REPO, "v1")] == subject and len(fake.tags) == 1
    assert eng.image(f"{HOST}/{REPO}:v1") is not None
    error(message, e.value.details)
    assert capsys.readouterr().err.count("\n") == 1


def test_a_transient_failure_while_attaching_is_retried(proj, monkeypatch):
    fake = FakeRegistry()
    subject = fake.seed(REPO, "v1", SCHEMA2, IMAGE_MANIFEST)
    busy = [2]

    def flaky(method, url, headers, kw):
        if method == "PUT" and "/manifests/sha256:" in url and busy[0]:
            busy[0] -= 1
            return FakeResponse(503, raw=b"busy")
        return fake(method, url, headers, kw)
    _through(monkeypatch, flaky)
    waits: list[float] = []
    events: list = []
    _push(proj, _engine(subject), events, backoff=1.0, sleep=waits.append)
    assert waits == [1.0, 2.0] and events[-1].destinations[0].sbom is not None
    said = [e.message for e in events if isinstance(e, Warn) and "attaching" in e.message]
    assert len(said) == 2 and said[0].startswith(
        f"{HOST}/{REPO}:v1: attaching its bill of materials failed (")


def test_credentials_reach_the_registry_only_and_are_never_shown(proj, monkeypatch, capsys):
    """A registry that echoes what it was sent in its refusal: the password
    and the Basic header it rode in are never printed, in any output mode."""
    basic = base64.b64encode(f"{USER}:{SECRET}".encode()).decode()

    def echo(media_type, doc):
        if doc.get("subject"):
            return {"errors": [{"code": "MANIFEST_INVALID",
                                "message": f"bad manifest from Basic {basic} ({USER}:{SECRET})"}]}
        return None
    fake = FakeRegistry(user=USER, password=SECRET, refuse=echo)
    subject = fake.seed(REPO, "v1", SCHEMA2, IMAGE_MANIFEST)
    made = _through(monkeypatch, fake)
    creds = push_stage.credentials(USER, SECRET, to=[f"{HOST}/team"])
    events: list = []
    with pytest.raises(PushError) as e:
        _push(proj, _engine(subject), events, creds=creds)
    sent = made[HOST]._local.session.sent
    assert {h.get("Authorization") for m, u, h in sent if "/v2/" != u[-4:]} == {f"Basic {basic}"}
    assert all(u.startswith(f"https://{HOST}/") for _, u, _ in sent)
    assert "***" in e.value.message
    for mode in ("plain", "json"):
        with Display(mode) as d:
            for ev in events:
                d.show(ev)
        error(e.value.message, e.value.details, as_json=mode == "json", code=10)
    shown = capsys.readouterr()
    for text in (shown.out, shown.err, repr(events), e.value.message):
        assert SECRET not in text and basic not in text


def test_an_image_that_cannot_be_listed_is_not_pushed(proj, monkeypatch):
    fake = FakeRegistry()
    _through(monkeypatch, fake)
    eng = _engine("sha256:" + "cd" * 32, inventory=None)
    with pytest.raises(SbomError, match="no `python` on its PATH") as e:
        _push(proj, eng, [])
    assert e.value.exit_code == 13 and eng.push_calls == [] and fake.requests == []


def test_push_sbom_in_imagekit_toml(offline):
    (offline.root / "imagekit.toml").write_text("[push]\nsbom = true\n")
    assert load_project(offline.root).config.push.sbom is True
    (offline.root / "imagekit.toml").write_text("[push]\nsbom = true\nsboms = 1\n")
    with pytest.raises(ConfigError, match="sboms"):
        load_project(offline.root)
    assert load_project(offline.root.parent).config.push.sbom is False
