"""Bundles as OCI artifacts in a registry (CNCF distribution, Harbor, GHCR, ECR, ACR), through ORAS.

One artifact per bundle: an OCI image manifest whose config has edgetl's own media type
(:data:`CONFIG_MEDIA_TYPE`, the OCI 1.0 way to say "artifact type", which distribution 2.8 stores),
one layer (:data:`BUNDLE_MEDIA_TYPE`) that is the bundle file byte for byte, and annotations
naming it (:data:`ANNOTATIONS`). The signature stays inside the bundle: the registry is storage,
the device's trust keys decide.

The push goes through ``oras.provider.Registry.push``. The device side uses the same client
for the manifest, but downloads the blob itself (:meth:`Registry.download_blob`): oras's
``download_blob`` has no size cap, no resume and no digest check, and a device must refuse a
too-large bundle before it downloads it, resume after an interruption and keep nothing it
has not verified. That download is one ``GET /v2/<repo>/blobs/<digest>`` with a ``Range``
header (OCI distribution spec, "Pulling blobs").

:meth:`Registry.do_request` replaces oras's: oras retries every failed request five times,
sleeping up to 83 s between tries (about 2 minutes in all) and sets no timeout, which would
hold a device's poll for minutes on a registry that is down or slow. Here each request has a
timeout and fails at once; the poller's schedule is the retry. It also answers a ``Basic``
challenge (distribution with htpasswd) as well as a ``Bearer`` one (token registries: oras's
token flow).
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import re
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from edgetl.errors import ConfigError, EdgetlError, MissingDependencyError

CONFIG_MEDIA_TYPE = "application/vnd.edgetl.bundle.config.v1+json"
BUNDLE_MEDIA_TYPE = "application/vnd.edgetl.bundle.v1+zip"
MANIFEST_MEDIA_TYPE = "application/vnd.oci.image.manifest.v1+json"
ANNOTATION = "io.edgetl.bundle."
ANNOTATIONS = ("name", "model_version", "bundle_version", "target", "format", "precision", "created", "digest")
DIGEST = re.compile(r"^sha256:[0-9a-f]{64}$")
CHUNK = 64 * 1024
UPLOAD_CHUNK = 16 * 1024 * 1024  # a bundle larger than this is pushed in chunks (oras's put_upload reads it whole)


class RegistryError(EdgetlError):
    """The registry could not be reached, refused us, or answered something that is not our artifact."""


class BlobTooLarge(RegistryError):
    """The artifact's declared size is over the device's cap: refused before any byte is downloaded."""


class DigestMismatch(RegistryError):
    """The downloaded bytes do not hash to the digest the manifest names (the partial file is removed)."""


@dataclass(frozen=True)
class OciRef:
    """``oci://HOST[:PORT]/REPO[:TAG]``: a registry, a repository and a tag (a channel)."""

    host: str
    repo: str
    tag: str | None = None

    @classmethod
    def parse(cls, text: str, need_tag: bool = True) -> OciRef:
        raw = str(text)
        if not raw.startswith("oci://"):
            raise ConfigError(f"{raw}: expected oci://HOST[:PORT]/REPO:TAG (e.g. oci://registry.local:5000/line1/cam:canary)")
        host, _, rest = raw[len("oci://"):].partition("/")
        repo, tag = rest, None
        if ":" in rest.rsplit("/", 1)[-1]:
            repo, _, tag = rest.rpartition(":")
        if not host or not repo or not re.fullmatch(r"[a-z0-9]+(?:[._-][a-z0-9]+)*(?:/[a-z0-9]+(?:[._-][a-z0-9]+)*)*", repo):
            raise ConfigError(f"{raw}: expected oci://HOST[:PORT]/REPO:TAG with a lower-case repository name")
        if tag is not None and not re.fullmatch(r"[A-Za-z0-9_][A-Za-z0-9._-]{0,127}", tag):
            raise ConfigError(f"{raw}: '{tag}' is not a valid tag (letters, digits, '_', '.', '-')")
        if need_tag and not tag:
            raise ConfigError(f"{raw}: a tag is needed (the channel), e.g. {raw}:canary")
        return cls(host, repo, tag)

    def with_tag(self, tag: str) -> OciRef:
        return OciRef(self.host, self.repo, tag)

    def __str__(self) -> str:
        return f"oci://{self.host}/{self.repo}" + (f":{self.tag}" if self.tag else "")


def load_credentials(host: str, auth_file: str | Path | None) -> tuple[str, str] | None:
    """(user, password) for ``host`` from a docker-config file (``{"auths": {HOST: {"auth": b64}}}``,
    or ``username``/``password``), else from the standard docker config (``$DOCKER_CONFIG``,
    ``~/.docker/config.json``); None when neither names the host (anonymous)."""
    if auth_file is not None:
        path = Path(auth_file)
        try:
            doc = json.loads(path.read_text(encoding="utf-8"))
        except OSError as exc:
            raise ConfigError(f"{path}: cannot read the registry credentials ({exc.strerror or exc})") from None
        except ValueError as exc:
            raise ConfigError(f"{path}: not JSON ({exc}); expected a docker config "
                              '{"auths": {"HOST:PORT": {"auth": "base64(user:password)"}}}') from None
        entries = [(path, doc)]
    else:
        entries = []
        default = Path(os.environ.get("DOCKER_CONFIG", Path.home() / ".docker")) / "config.json"
        if default.is_file():
            try:
                entries = [(default, json.loads(default.read_text(encoding="utf-8")))]
            except (OSError, ValueError):
                entries = []
    for path, doc in entries:
        auths = doc.get("auths") if isinstance(doc, dict) else None
        if not isinstance(auths, dict):
            raise ConfigError(f"{path}: expected a docker config with an 'auths' object")
        entry = auths.get(host) or auths.get(f"https://{host}") or auths.get(f"http://{host}")
        if not isinstance(entry, dict):
            continue
        if entry.get("username") and entry.get("password") is not None:
            return str(entry["username"]), str(entry["password"])
        try:
            user, sep, password = base64.b64decode(str(entry.get("auth", ""))).decode("utf-8").partition(":")
        except (ValueError, UnicodeDecodeError):
            sep = ""
        if not sep:
            raise ConfigError(f"{path}: auths.{host}.auth must be base64 of 'user:password'")
        return user, password
    if auth_file is not None:
        raise ConfigError(f"{auth_file}: no credentials for {host} in 'auths'")
    return None


def _oras_registry():
    try:
        import oras.provider
    except ModuleNotFoundError:
        raise MissingDependencyError("oras", "agent", "OCI registry push/pull") from None
    return oras.provider.Registry


def _error_text(response) -> str:
    try:
        errors = response.json().get("errors") or []
        return "; ".join(f"{e.get('code')}: {e.get('message')}" for e in errors if isinstance(e, dict))[:300]
    except Exception:  # garbage bodies are common on errors: the status says enough
        return ""


class Registry:
    """One registry host, its credentials and TLS; the calls edgetl makes (push, manifest, blob, tag).

    Args:
        ref: the artifact reference (its host is the registry).
        insecure: plain HTTP (loopback tests, a trusted lab network); never the default.
        ca: CA certificate file (PEM) for a registry with its own CA.
        auth_file: docker-config JSON with the credentials; None: the standard docker config.
        timeout: seconds to connect and between bytes read.
    """

    def __init__(self, ref: OciRef, *, insecure: bool = False, ca: str | Path | None = None,
                 auth_file: str | Path | None = None, timeout: float = 10.0):
        if ca is not None and not Path(ca).is_file():
            raise ConfigError(f"--registry-ca {ca}: file not found")
        self.ref, self.timeout, self.insecure = ref, timeout, insecure
        self.credentials = load_credentials(ref.host, auth_file)
        self.auth_file = auth_file
        self._client = _make_client(ref.host, insecure, str(ca) if ca else True, self.credentials, timeout)

    @property
    def requests(self) -> int:
        """HTTP requests sent so far, auth challenges included (the benchmark counts them)."""
        return self._client.sent

    # -- reading -----------------------------------------------------------------
    def _url(self, kind: str, what: str) -> str:
        return f"{self._client.prefix}://{self.ref.host}/v2/{self.ref.repo}/{kind}/{what}"

    def _request(self, url: str, method: str = "GET", **kwargs: Any):
        import requests

        try:
            return self._client.do_request(url, method, **kwargs)
        except requests.exceptions.SSLError as exc:
            raise RegistryError(f"{self.ref.host}: TLS failed ({_short(exc)}); give --registry-ca CA.pem, or "
                                "--insecure for a plain-HTTP registry on a trusted network") from None
        except requests.exceptions.Timeout:
            raise RegistryError(f"{self.ref.host}: no answer within {self.timeout:g} s") from None
        except requests.exceptions.ConnectionError as exc:
            raise RegistryError(f"{self.ref.host}: cannot connect ({_short(exc)})") from None
        except requests.exceptions.RequestException as exc:
            raise RegistryError(f"{self.ref.host}: {type(exc).__name__}: {_short(exc)}") from None

    def _check(self, response, what: str, ok: tuple[int, ...] = (200, 201, 202)) -> None:
        if response.status_code in ok:
            return
        detail = _error_text(response)
        if response.status_code == 401:
            raise RegistryError(f"{self.ref}: the registry refused the credentials ({what}: 401)"
                                + ("" if self.credentials else "; give --registry-auth FILE (docker config)"))
        if response.status_code == 403:
            raise RegistryError(f"{self.ref}: access denied ({what}: 403){': ' + detail if detail else ''}")
        if response.status_code == 404:
            raise RegistryError(f"{self.ref}: not found ({what}: 404){': ' + detail if detail else ''}")
        raise RegistryError(f"{self.ref}: the registry answered {response.status_code} to {what}"
                            + (f": {detail}" if detail else ""))

    def ping(self) -> None:
        """``GET /v2/``: reachable and the credentials accepted (one clear error otherwise)."""
        response = self._request(f"{self._client.prefix}://{self.ref.host}/v2/")
        self._check(response, "GET /v2/")

    def head_digest(self, tag: str | None = None) -> str:
        """The manifest digest the tag points to now: one ``HEAD`` (no body), the unchanged-poll cost."""
        tag = tag or self.ref.tag
        response = self._request(self._url("manifests", tag), "HEAD", headers={"Accept": MANIFEST_MEDIA_TYPE})
        self._check(response, f"HEAD manifest {tag}", ok=(200,))
        digest = response.headers.get("Docker-Content-Digest", "")
        if not DIGEST.match(digest):  # a registry that does not send it: read the manifest itself
            return self.manifest(tag)[0]
        return digest

    def manifest(self, reference: str | None = None, expect: str | None = None,
                 max_bytes: int = 256 * 1024) -> tuple[str, bytes, dict[str, Any]]:
        """(digest, raw bytes, parsed) of a manifest by tag or digest; ``expect`` must match its sha256."""
        reference = reference or self.ref.tag
        response = self._request(self._url("manifests", reference), headers={"Accept": MANIFEST_MEDIA_TYPE},
                                 stream=True)
        try:
            self._check(response, f"GET manifest {reference}", ok=(200,))
            raw = _read_capped(response, max_bytes, f"{self.ref}: manifest")
        finally:
            response.close()
        digest = "sha256:" + hashlib.sha256(raw).hexdigest()
        if expect and digest != expect:
            raise DigestMismatch(f"{self.ref}: the manifest hashes to {digest[:19]}…, not {expect[:19]}…")
        try:
            doc = json.loads(raw)
        except ValueError:
            raise RegistryError(f"{self.ref}: the manifest is not JSON") from None
        return digest, raw, doc

    def download_blob(self, layer: dict[str, Any], dest: Path, cap: int,
                      on_bytes: Callable[[int], None] | None = None) -> dict[str, Any]:
        """Download the bundle layer into ``dest`` (resuming a partial ``dest``), verify its digest.

        Refused before any request when its declared size is over ``cap``; stopped when the
        registry sends more than it declared. A digest mismatch removes ``dest``; any other
        failure keeps the partial file for the next try (``Range: bytes=N-``).

        Returns ``{"bytes": downloaded now, "resumed_from": N}``.
        """
        size, digest = int(layer["size"]), str(layer["digest"])
        if size > cap:
            raise BlobTooLarge(f"{self.ref}: the bundle is {size} bytes, over this device's cap of {cap} bytes "
                               "(--max-bundle-mb); not downloaded")
        have = dest.stat().st_size if dest.exists() else 0
        if have > size:
            dest.unlink()
            have = 0
        got = 0
        if have < size:
            headers = {"Range": f"bytes={have}-"} if have else {}
            response = self._request(self._url("blobs", digest), headers=headers, stream=True)
            try:
                if have and response.status_code == 200:  # the registry ignored the range: start over
                    have = 0
                self._check(response, f"GET blob {digest[:19]}…", ok=(200, 206))
                with open(dest, "ab" if have else "wb") as out:
                    for chunk in response.iter_content(CHUNK):
                        if have + got + len(chunk) > size:
                            raise RegistryError(f"{self.ref}: the blob is longer than the {size} bytes the "
                                                "manifest declares; refused")
                        out.write(chunk)
                        got += len(chunk)
                        if on_bytes is not None:
                            on_bytes(have + got)
                    out.flush()
                    os.fsync(out.fileno())
            except OSError as exc:  # requests' errors are OSErrors too: the network first, then the disk
                import requests

                if isinstance(exc, requests.exceptions.RequestException):
                    raise RegistryError(f"{self.ref}: the download broke off after {have + got} of {size} bytes "
                                        f"({_short(exc)}); it resumes at the next poll") from None
                raise RegistryError(f"{self.ref}: cannot write the download ({exc.strerror or exc}); the "
                                    f"{have + got} bytes kept resume at the next poll") from None
            finally:
                response.close()
        if dest.stat().st_size != size:
            raise RegistryError(f"{self.ref}: the download ended after {dest.stat().st_size} of {size} bytes; "
                                "it resumes at the next poll")
        actual = "sha256:" + _sha256_file(dest)
        if actual != digest:
            dest.unlink(missing_ok=True)
            raise DigestMismatch(f"{self.ref}: the downloaded blob hashes to {actual[:19]}…, not the manifest's "
                                 f"{digest[:19]}…; discarded")
        return {"bytes": got, "resumed_from": have}

    # -- writing -----------------------------------------------------------------
    def push(self, bundle: Path, annotations: dict[str, str], chunk: int = UPLOAD_CHUNK) -> str:
        """Push ``bundle`` as one artifact under ``ref``'s tag; return the manifest digest.

        A bundle over ``chunk`` bytes goes up in ``chunk``-sized PATCHes (oras's chunked upload)
        rather than in one PUT that oras reads into memory whole."""
        self.ping()
        target = f"{self.ref.host}/{self.ref.repo}:{self.ref.tag}"
        with tempfile.TemporaryDirectory(prefix="edgetl-push-") as tmp:
            config = Path(tmp) / "config.json"
            config.write_text("{}")
            try:
                response = self._client.push(target=target, files=[f"{bundle.resolve()}:{BUNDLE_MEDIA_TYPE}"],
                                             manifest_config=f"{config}:{CONFIG_MEDIA_TYPE}",
                                             manifest_annotations=annotations, disable_path_validation=True,
                                             do_chunked=bundle.stat().st_size > chunk, chunk_size=chunk,
                                             quiet=True)
            except RegistryError:
                raise
            except ValueError as exc:  # oras's _check_200_response / session errors
                raise RegistryError(f"{self.ref}: push refused ({_short(exc)})") from None
        digest = response.headers.get("Docker-Content-Digest", "")
        return digest if DIGEST.match(digest) else self.head_digest()

    def put_manifest(self, tag: str, raw: bytes, media_type: str = MANIFEST_MEDIA_TYPE) -> str:
        """Point ``tag`` at the manifest ``raw`` (the same bytes, so the same digest): a promotion."""
        response = self._request(self._url("manifests", tag), "PUT", data=raw,
                                 headers={"Content-Type": media_type})
        self._check(response, f"PUT manifest {tag}")
        return "sha256:" + hashlib.sha256(raw).hexdigest()

    def delete_manifest(self, digest: str) -> None:
        """Delete a manifest by digest (every tag naming it goes; the registry must allow deletes)."""
        response = self._request(self._url("manifests", digest), "DELETE")
        self._check(response, f"DELETE manifest {digest[:19]}…")


def _make_client(host: str, insecure: bool, tls_verify: bool | str, credentials, timeout: float):
    """An ``oras.provider.Registry`` whose requests time out, are not retried, and answer Basic challenges."""
    base = _oras_registry()

    class _Client(base):  # type: ignore[misc, valid-type]
        def __init__(self):
            super().__init__(hostname=host, insecure=insecure, tls_verify=tls_verify, auth_backend="token")
            # oras's token request (the auth backend shares this session) sets no timeout: a token service
            # that accepts and never answers would hold a device's poll for good. Every request of the
            # session gets ours unless it names one.
            plain = self.session.request

            def with_timeout(method, url, **kwargs):
                kwargs.setdefault("timeout", timeout)
                return plain(method, url, **kwargs)

            self.session.request = with_timeout  # type: ignore[method-assign]
            self._verify, self._auth_header = tls_verify, {}
            self._basic, self.sent = None, 0
            if credentials:
                self.auth.set_basic_auth(*credentials)
                self._basic = base64.b64encode(f"{credentials[0]}:{credentials[1]}".encode()).decode()

        def do_request(self, url, method="GET", data=None, headers=None, json=None, stream=False):
            """oras's request without its retry loop and with a timeout; Basic or Bearer on a 401."""
            import requests

            headers = dict(headers or {})
            headers.update(self._auth_header)
            send = dict(method=method, url=url, data=data, json=json, stream=stream, verify=self._verify,
                        timeout=timeout, allow_redirects=True)
            self.sent += 1
            response = self.session.request(headers=headers, **send)
            if response.status_code != 401:
                return response
            retried = bool(self._auth_header)  # credentials were sent and refused: a Basic 401 is final
            challenge = response.headers.get("Www-Authenticate", "")
            if challenge.lower().startswith("basic"):
                if not self._basic or retried:
                    return response
                self._auth_header = {"Authorization": f"Basic {self._basic}"}
            else:  # Bearer: oras's token flow (a refused token is fetched again once)
                bare = {k: v for k, v in headers.items() if k != "Authorization"}
                try:
                    new, changed = self.auth.authenticate_request(response, bare, refresh=retried)
                except requests.exceptions.RequestException as exc:
                    realm = re.search(r'realm="([^"]+)"', challenge)
                    where = realm.group(1) if realm else "the registry's token service"
                    why = (f"no answer within {timeout:g} s" if isinstance(exc, requests.exceptions.Timeout)
                           else f"cannot be reached ({_short(exc)})")
                    raise RegistryError(f"{host}: token service {where}: {why}") from None
                if not changed or "Authorization" not in new:
                    return response
                self._auth_header = {"Authorization": new["Authorization"]}
            response.close()
            headers.update(self._auth_header)
            self.sent += 1
            return self.session.request(headers=headers, **send)

    return _Client()


def _read_capped(response, cap: int, what: str) -> bytes:
    data = bytearray()
    for chunk in response.iter_content(CHUNK):
        data += chunk
        if len(data) > cap:
            raise RegistryError(f"{what} is over {cap} bytes; refused")
    return bytes(data)


def _sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _short(exc: BaseException) -> str:
    text = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
    match = re.search(r"\[Errno -?\d+\] [^'\")]+|Connection refused|timed out|Read timed out", text)
    return (match.group(0) if match else text)[:200]


def bundle_layer(doc: dict[str, Any], ref: OciRef) -> dict[str, Any]:
    """The one bundle layer of an edgetl artifact manifest; RegistryError for anything else."""
    if not isinstance(doc, dict) or not isinstance(doc.get("config"), dict) or not isinstance(doc.get("layers"), list):
        raise RegistryError(f"{ref}: the manifest is not an OCI image manifest")
    if doc["config"].get("mediaType") != CONFIG_MEDIA_TYPE:
        raise RegistryError(f"{ref}: not an edgetl bundle (config mediaType {doc['config'].get('mediaType')!r}, "
                            f"expected {CONFIG_MEDIA_TYPE}); push it with edgetl push")
    layers = [x for x in doc["layers"] if isinstance(x, dict) and x.get("mediaType") == BUNDLE_MEDIA_TYPE]
    if len(layers) != 1:
        raise RegistryError(f"{ref}: expected one layer of type {BUNDLE_MEDIA_TYPE}, found {len(layers)}")
    layer = layers[0]
    if not DIGEST.match(str(layer.get("digest", ""))) or not isinstance(layer.get("size"), int) \
            or isinstance(layer.get("size"), bool) or layer["size"] < 0:
        raise RegistryError(f"{ref}: the bundle layer has no valid sha256 digest and size")
    return layer


def artifact_annotations(manifest: dict[str, Any], digest: str) -> dict[str, str]:
    """The manifest annotations of a bundle artifact (from its validated bundle manifest)."""
    target = manifest.get("target") or {}
    values = {"name": manifest.get("name"), "model_version": manifest.get("model_version"),
              "bundle_version": manifest.get("bundle_version"),
              "target": target.get("profile") or target.get("format"), "format": target.get("format"),
              "precision": target.get("precision"),
              "created": manifest.get("created"), "digest": digest}
    out = {ANNOTATION + k: str(v) for k, v in values.items() if v is not None}
    if manifest.get("created"):
        out["org.opencontainers.image.created"] = str(manifest["created"])
    out["org.opencontainers.image.title"] = str(manifest.get("model_version") or "bundle")
    return out


def push_bundle(bundle: str | Path, target: str, *, insecure: bool = False, ca: str | Path | None = None,
                auth_file: str | Path | None = None, timeout: float = 60.0,
                chunk: int = UPLOAD_CHUNK) -> dict[str, Any]:
    """Push a bundle file to ``oci://HOST/REPO:TAG``; ``{ref, digest, bundle_digest, size, annotations}``.

    The bundle is read (manifest only: schema, not the signature, which the devices check) so the
    annotations say what it is; the layer is the file unchanged.
    """
    from edgetl.bundle import open_bundle

    path = Path(bundle)
    if not path.is_file():
        raise ConfigError(f"{path}: bundle not found")
    ref = OciRef.parse(target)
    with open_bundle(path) as opened:
        manifest = dict(opened.manifest)
    bundle_digest = "sha256:" + _sha256_file(path)
    annotations = artifact_annotations(manifest, bundle_digest)
    registry = Registry(ref, insecure=insecure, ca=ca, auth_file=auth_file, timeout=timeout)
    digest = registry.push(path, annotations, chunk=chunk)
    return {"ref": str(ref), "digest": digest, "bundle_digest": bundle_digest, "size": path.stat().st_size,
            "annotations": annotations}
