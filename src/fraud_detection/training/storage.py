"""Object-store URLs (``s3://``, ``gs://``, ``memory://``, ``file://``, …) read and written
through fsspec.

Used by ingest (data files given as URLs), by the evaluate step (the bundle an InferenceService
serves), by the deploy step (:func:`put_tree`: a bundle copied into the versioned model store)
and by the drift monitor (a version's drift reference and manifest). Every failure is a
:class:`StorageError` whose message names the URL and the reason: the protocol's package is
missing (``s3://`` needs ``s3fs``), the object is absent (:class:`StorageNotFoundError`), access
was refused, the store could not be reached.

S3 settings come from the environment the pipeline pods get (the same variables as KServe's
storage initializer and the AWS SDKs): ``AWS_ACCESS_KEY_ID``, ``AWS_SECRET_ACCESS_KEY``
(``AWS_SESSION_TOKEN``), the endpoint ``AWS_ENDPOINT_URL_S3`` / ``AWS_ENDPOINT_URL`` (a URL) or
``S3_ENDPOINT`` (``host:port``, with ``S3_USE_HTTPS=0`` for plain HTTP), ``AWS_REGION`` /
``AWS_DEFAULT_REGION``, and ``S3_VERIFY_SSL=0``. A custom endpoint (MinIO, SeaweedFS) is
addressed path-style.

``pvc://`` is not readable here: KServe mounts the claim into the serving pods only.
"""

from __future__ import annotations

import os
import re
from collections.abc import Collection, Mapping, Sequence
from pathlib import Path
from typing import Any

#: KFP writes its MinIO artifacts as ``minio://``; they are S3 objects.
_ALIASES = {"minio": "s3"}
_URL = re.compile(r"^(?P<protocol>[A-Za-z][A-Za-z0-9+.-]*)://")
_FALSE = ("0", "false", "no", "off")
#: The endpoint of a custom S3 store as a URL (what a pipeline step is given).
S3_ENDPOINT_URL_ENV = "AWS_ENDPOINT_URL_S3"
#: The endpoint variables of a custom S3 store: ``host:port``, and "0" for plain HTTP.
S3_ENDPOINT_ENV = "S3_ENDPOINT"
S3_USE_HTTPS_ENV = "S3_USE_HTTPS"
#: Seconds to wait for a connection to an S3 endpoint before giving up on an attempt.
S3_CONNECT_TIMEOUT_S = 10


class StorageError(OSError):
    """A URL could not be read or written; the message names the URL and the reason."""


class StorageNotFoundError(StorageError):
    """Nothing is at the URL (no object, no prefix): absent, not unreachable."""


def url_protocol(text: str) -> str | None:
    """The protocol of ``text`` (``s3`` for ``s3://b/k``), or None for a plain path."""
    match = _URL.match(text.strip())
    return match.group("protocol").lower() if match else None


def is_url(text: str) -> bool:
    """Whether ``text`` is a URL (``scheme://…``) rather than a plain file path."""
    return url_protocol(text) is not None


def normalize_url(url: str) -> str:
    """``url`` with KFP's ``minio://`` written as ``s3://``; other URLs unchanged."""
    protocol = url_protocol(url)
    if protocol in _ALIASES:
        return f"{_ALIASES[protocol]}://{url.strip()[len(protocol) + 3 :]}"
    return url.strip()


def _is_false(value: str | None) -> bool:
    return value is not None and value.strip().lower() in _FALSE


def s3_options(environ: Mapping[str, str] | None = None) -> dict[str, Any]:
    """``s3fs.S3FileSystem`` options from the environment (see the module's docstring)."""
    env = os.environ if environ is None else environ
    options: dict[str, Any] = {}
    client: dict[str, Any] = {}
    config: dict[str, Any] = {"connect_timeout": S3_CONNECT_TIMEOUT_S}
    key, secret = env.get("AWS_ACCESS_KEY_ID"), env.get("AWS_SECRET_ACCESS_KEY")
    if key and secret:
        options.update(key=key, secret=secret)
        if env.get("AWS_SESSION_TOKEN"):
            options["token"] = env["AWS_SESSION_TOKEN"]
    endpoint = (
        env.get(S3_ENDPOINT_URL_ENV) or env.get("AWS_ENDPOINT_URL") or env.get(S3_ENDPOINT_ENV)
    )
    if endpoint:
        endpoint = endpoint.strip()
        if not is_url(endpoint):
            scheme = "http" if _is_false(env.get(S3_USE_HTTPS_ENV)) else "https"
            endpoint = f"{scheme}://{endpoint}"
        options["endpoint_url"] = endpoint
        config["s3"] = {"addressing_style": "path"}
    region = env.get("AWS_REGION") or env.get("AWS_DEFAULT_REGION")
    if region:
        client["region_name"] = region
    if _is_false(env.get("S3_VERIFY_SSL")):
        client["verify"] = False
    if client:
        options["client_kwargs"] = client
    options["config_kwargs"] = config
    return options


def storage_options(protocol: str, environ: Mapping[str, str] | None = None) -> dict[str, Any]:
    """fsspec options for ``protocol`` from the environment (S3 only; others need none)."""
    return s3_options(environ) if protocol in ("s3", "s3a") else {}


def _fsspec() -> Any:
    try:
        import fsspec
    except ImportError as exc:  # pragma: no cover - fsspec is a dependency
        raise StorageError("reading URLs needs the fsspec package") from exc
    return fsspec


def filesystem(url: str, environ: Mapping[str, str] | None = None) -> tuple[Any, str]:
    """The fsspec filesystem of ``url`` and the path within it.

    Raises :class:`StorageError` for ``pvc://``, an unknown protocol, or a protocol whose
    package is not installed (naming the package).
    """
    url = normalize_url(url)
    protocol = url_protocol(url) or "file"
    if protocol == "pvc":
        raise StorageError(
            f"{url}: pvc:// is not readable from a pipeline step (KServe mounts the claim into "
            "its serving pods only); use an object-store URL such as s3://"
        )
    fsspec = _fsspec()
    from fsspec.registry import known_implementations

    try:
        fsspec.get_filesystem_class(protocol)
    except ImportError as exc:
        known = known_implementations.get(protocol) or {}
        package = str(known.get("class", protocol)).split(".")[0]
        raise StorageError(f"{url}: {protocol}:// needs the {package} package ({exc})") from exc
    except ValueError as exc:
        raise StorageError(f"{url}: unknown URL protocol {protocol}://") from exc
    try:
        return fsspec.core.url_to_fs(url, **storage_options(protocol, environ))
    except Exception as exc:  # the backends raise their own types for bad options
        raise StorageError(f"{url}: {type(exc).__name__}: {exc}") from exc


def describe_error(url: str, exc: BaseException, action: str = "read") -> str:
    """``exc`` raised while reading (``action``) ``url``, as one line naming the URL and the
    reason."""
    if isinstance(exc, StorageError):
        return str(exc)
    if isinstance(exc, FileNotFoundError):
        return f"{url}: no such object"
    if isinstance(exc, PermissionError):
        return f"{url}: access denied ({exc})"
    return f"{url}: cannot {action} ({type(exc).__name__}: {exc})"


def fetch_tree(
    url: str,
    dest: str | Path,
    environ: Mapping[str, str] | None = None,
    include: Collection[str] | None = None,
) -> Path:
    """Copy every object under ``url`` (a directory or prefix) into ``dest``; return ``dest``.

    ``include``: only these paths relative to ``url`` (e.g. ``{"manifest.json"}``); each must be
    there. Raises :class:`StorageNotFoundError` when nothing (or an included path) is there, and
    :class:`StorageError` naming the URL when a read fails.
    """
    dest = Path(dest)
    fs, root = filesystem(url, environ)
    root = root.rstrip("/")
    try:
        found = fs.find(root)
    except FileNotFoundError as exc:
        raise StorageNotFoundError(f"{url}: no such object or prefix") from exc
    except Exception as exc:  # network and backend errors: reported with the URL
        raise StorageError(describe_error(url, exc)) from exc
    if not found:
        raise StorageNotFoundError(f"{url}: no such object or prefix")
    objects: dict[str, str] = {}
    for path in sorted(found):
        relative = path[len(root) :].lstrip("/") if path.startswith(root) else ""
        if not relative or ".." in Path(relative).parts:
            raise StorageError(f"{url}: unexpected object {path!r} under the prefix")
        objects[relative] = path
    if include is not None:
        missing = sorted(set(include) - set(objects))
        if missing:
            raise StorageNotFoundError(f"{url}: no {', '.join(missing)} under the prefix")
        objects = {relative: objects[relative] for relative in sorted(include)}
    for relative, path in objects.items():
        target = dest / relative
        target.parent.mkdir(parents=True, exist_ok=True)
        try:
            fs.get_file(path, str(target))
        except Exception as exc:  # network and backend errors: reported with the URL
            raise StorageError(describe_error(fs.unstrip_protocol(path), exc)) from exc
    return dest


def read_object(url: str, environ: Mapping[str, str] | None = None) -> bytes | None:
    """The bytes of the object at ``url``, or None when there is none.

    Raises :class:`StorageError` naming the URL when the store cannot be read.
    """
    fs, path = filesystem(url, environ)
    try:
        return bytes(fs.cat_file(path))
    except FileNotFoundError:
        return None
    except IsADirectoryError:
        return None
    except Exception as exc:  # network and backend errors: reported with the URL
        raise StorageError(describe_error(url, exc)) from exc


def join_url(base: str, *parts: str) -> str:
    """``base`` and ``parts`` joined with single slashes (``s3://b/models`` + ``v1``)."""
    return "/".join([base.rstrip("/"), *(part.strip("/") for part in parts)])


def put_tree(
    src: str | Path,
    url: str,
    environ: Mapping[str, str] | None = None,
    last: Sequence[str] = (),
) -> list[str]:
    """Copy every file under the local directory ``src`` to ``url/<relative path>``.

    The files named in ``last`` (paths relative to ``src``) are written after all the others,
    in that order: a reader that takes one of them (a manifest) as the sign of a complete copy
    never sees a partial one. Returns the URLs written. Raises :class:`StorageError` naming the
    URL when ``src`` is not a directory or a write fails.
    """
    src = Path(src)
    if not src.is_dir():
        raise StorageError(f"{src}: not a directory (the tree to copy to {url})")
    fs, root = filesystem(url, environ)
    root = root.rstrip("/")
    relatives = sorted(p.relative_to(src).as_posix() for p in src.rglob("*") if p.is_file())
    ordered = [r for r in relatives if r not in last] + [r for r in last if r in relatives]
    written: list[str] = []
    for relative in ordered:
        target = f"{root}/{relative}"
        try:
            fs.makedirs(target.rsplit("/", 1)[0], exist_ok=True)
            fs.put_file(str(src / relative), target)
        except Exception as exc:  # network and backend errors: reported with the URL
            where = fs.unstrip_protocol(target)
            raise StorageError(describe_error(where, exc, "write")) from exc
        written.append(fs.unstrip_protocol(target))
    return written


def open_files(url: str, environ: Mapping[str, str] | None = None) -> list[Any]:
    """fsspec ``OpenFile`` objects for ``url`` (globs expanded; compression from the name).

    Raises :class:`StorageError` when a glob matches nothing or an object is absent.
    """
    fs, path = filesystem(url, environ)
    fsspec = _fsspec()
    try:
        if fsspec.core.has_magic(path):
            paths = sorted(fs.glob(path))
            if not paths:
                raise StorageError(f"{url}: the pattern matches no object")
        else:
            if not fs.isfile(path):
                raise FileNotFoundError(path)
            paths = [path]
    except Exception as exc:  # network and backend errors: reported with the URL
        raise StorageError(describe_error(url, exc)) from exc
    return [
        fsspec.core.OpenFile(fs, found, mode="rb", compression=_compression(found))
        for found in paths
    ]


def _compression(path: str) -> str | None:
    from fsspec.utils import infer_compression

    return infer_compression(path)
