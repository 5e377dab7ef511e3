"""A small Hugging Face Hub-compatible HTTP server for tests: real `huggingface_hub` requests, no network.

The Hub support promises that `push_to_hub`, `PeftModel.from_pretrained(base, repo_id)` and the HF cache work with
softprompt adapters *unchanged*. Patching `huggingface_hub` would only prove that our patch works, so the
test suite points the real client at this server with `HF_ENDPOINT=http://127.0.0.1:PORT` (read by
`huggingface_hub.constants` at import, hence client code runs in a subprocess).

Design decisions
----------------
* Only the endpoints huggingface_hub 2.4 calls on the paths we test, found by reading its source:
  `create_repo` (POST /api/repos/create), `repo_info`/`model_info` (GET /api/models/{id}[/revision/{rev}]),
  the commit API used by `create_commit`/`upload_folder`/`push_to_hub` (POST .../preupload/{rev}, POST
  .../commit/{rev} as ndjson, POST /api/validate-yaml for README.md), `list_repo_tree`/`list_repo_files`
  (GET .../tree/{rev}[/{path}]) and `hf_hub_download`'s HEAD + GET of /{id}/resolve/{rev}/{file}.
* Regular uploads only. The client does not choose LFS: the preupload answer does (`_fetch_upload_modes`),
  so the server answers `"regular"` for every file and never needs the LFS batch or Xet protocols. Downloads
  carry no `X-Xet-Hash`, so the client uses plain HTTP GET too.
* Commits are real revisions: each one gets a 40-hex id and keeps a full snapshot of the tree; `main` moves,
  old ids stay resolvable, so `revision=<old id>` pins an old file. A repo starts with an empty initial
  commit (the real Hub seeds `.gitattributes`; leaving it out makes "the repo holds exactly what the client
  uploaded" checkable).
* Headers that `hf_hub_download` relies on: `X-Repo-Commit` (commit id; also on 404 so the cache can record
  a missing file), a quoted `ETag` (git blob sha1, as the Hub gives for non-LFS files) and `Content-Length`;
  errors carry the Hub's `X-Error-Code` (RepoNotFound, RevisionNotFound, EntryNotFound) so the client raises
  its own typed errors.
* Writes need `Authorization: Bearer <token>`; reads are anonymous (public repos).
* Bounded: request bodies above `max_body_bytes` get 413, idle connections time out, and the server stops
  itself after `max_lifetime_s` even if a test forgets to. `with HubServer() as hub:` stops it on exit.
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, quote, unquote, urlsplit

import yaml

DEFAULT_USER = "tester"
_REPO = r"(?P<repo>[\w.-]+/[\w.-]+)"
_TYPES = {"models": "model", "datasets": "dataset", "spaces": "space"}
_API = re.compile(rf"^/api/(?P<kind>models|datasets|spaces)/{_REPO}(?P<rest>/.*)?$")
_RESOLVE = re.compile(rf"^/(?:(?P<kind>datasets|spaces)/)?{_REPO}/resolve/(?P<rev>[^/]+)/(?P<path>.+)$")
_COMMIT_ID = re.compile(r"^[0-9a-f]{40}$")


def git_blob_id(data: bytes) -> str:
    """The id git gives a file's content (`git hash-object`), which the Hub uses as a regular file's ETag."""
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


@dataclass
class Commit:
    """One revision: a full snapshot of the repo's files."""

    oid: str
    parent: str | None
    message: str
    files: dict[str, bytes]
    created: float = field(default_factory=time.time)


@dataclass
class Repo:
    """A repo: its commits by id and its branches (`main` only, unless a test adds more)."""

    repo_id: str
    repo_type: str
    commits: dict[str, Commit] = field(default_factory=dict)
    refs: dict[str, str] = field(default_factory=dict)

    def head(self, branch: str = "main") -> Commit:
        return self.commits[self.refs[branch]]

    def resolve(self, revision: str) -> Commit | None:
        """A branch name or a commit id (full, or a unique prefix of at least 7 characters)."""
        if revision in self.refs:
            return self.commits[self.refs[revision]]
        if len(revision) >= 7:
            matches = [oid for oid in self.commits if oid.startswith(revision)]
            if len(matches) == 1:
                return self.commits[matches[0]]
        return None

    def commit(self, files: dict[str, bytes], message: str, branch: str = "main") -> Commit:
        parent = self.refs.get(branch)
        digest = hashlib.sha1(json.dumps([parent, message, time.time_ns(), len(self.commits)]).encode())
        for path in sorted(files):
            digest.update(path.encode() + b"\0" + git_blob_id(files[path]).encode())
        new = Commit(oid=digest.hexdigest(), parent=parent, message=message, files=dict(files))
        self.commits[new.oid] = new
        self.refs[branch] = new.oid
        return new


class HubError(Exception):
    """An HTTP error answer: status, the Hub's `X-Error-Code`, a message and extra headers."""

    def __init__(
        self,
        status: int,
        message: str,
        code: str | None = None,
        headers: dict[str, str] | None = None,
        **extra: Any,
    ):
        super().__init__(message)
        self.status, self.code, self.headers, self.extra = status, code, headers or {}, extra


class HubServer:
    """The server: `with HubServer(token="hf_test") as hub: ... hub.url ...`.

    Attributes:
        url: the endpoint to put in `HF_ENDPOINT`.
        repos: the stored repos by `(repo_type, repo_id)`; tests read them to check what was pushed.
        requests: `(method, path)` of every request served, in order.
        unhandled: requests that matched no endpoint (a sign the client needs something this server lacks).
    """

    def __init__(
        self, token: str = "hf_test_token", max_body_bytes: int = 64 << 20, max_lifetime_s: float = 600.0
    ):
        self.token = token
        self.max_body_bytes = max_body_bytes
        self.max_lifetime_s = max_lifetime_s
        self.repos: dict[tuple[str, str], Repo] = {}
        self.requests: list[tuple[str, str]] = []
        self.unhandled: list[tuple[str, str]] = []
        self.lock = threading.Lock()
        self._httpd: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None
        self._timer: threading.Timer | None = None
        self.url = ""

    # ------------------------------------------------------------------ lifecycle
    def start(self) -> HubServer:
        handler = type("Handler", (_Handler,), {"hub": self})
        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), handler)  # port 0: the OS picks a free port
        self._httpd.daemon_threads = True
        self.url = f"http://127.0.0.1:{self._httpd.server_address[1]}"
        self._thread = threading.Thread(target=self._httpd.serve_forever, name="hub-server", daemon=True)
        self._thread.start()
        self._timer = threading.Timer(self.max_lifetime_s, self.stop)  # the bound on a forgotten server
        self._timer.daemon = True
        self._timer.start()
        return self

    def stop(self) -> None:
        """Stop serving (idempotent); the stored repos stay readable."""
        if self._timer is not None:
            self._timer.cancel()
        httpd, self._httpd = self._httpd, None
        if httpd is not None:
            httpd.shutdown()
            httpd.server_close()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout=10)

    @property
    def running(self) -> bool:
        return self._httpd is not None  # False once stopped, by a test or by the lifetime bound

    def __enter__(self) -> HubServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # ------------------------------------------------------------------ store
    def repo(self, repo_id: str, repo_type: str = "model") -> Repo:
        found = self.repos.get((repo_type, repo_id))
        if found is None:
            raise HubError(404, f"Repository {repo_id!r} not found", "RepoNotFound")
        return found

    def files(self, repo_id: str, revision: str = "main", repo_type: str = "model") -> dict[str, bytes]:
        """The files of a repo at a revision (for assertions)."""
        commit = self.repo(repo_id, repo_type).resolve(revision)
        if commit is None:
            raise KeyError(f"{repo_id}@{revision}")
        return dict(commit.files)


class _Handler(BaseHTTPRequestHandler):
    hub: HubServer
    protocol_version = "HTTP/1.1"  # keep-alive, as httpx expects from the Hub
    timeout = 30  # seconds an idle connection may hold a thread

    def log_message(self, format: str, *args: Any) -> None:  # signature fixed by BaseHTTPRequestHandler
        pass  # tests read hub.requests instead of stderr noise

    # ------------------------------------------------------------------ plumbing
    def do_GET(self) -> None:
        self._serve("GET")

    def do_HEAD(self) -> None:
        self._serve("HEAD")

    def do_POST(self) -> None:
        self._serve("POST")

    def _serve(self, method: str) -> None:
        split = urlsplit(self.path)
        path, query = unquote(split.path), parse_qs(split.query)
        self.hub.requests.append((method, split.path))
        try:
            body = self._read_body()
            with self.hub.lock:
                try:
                    status, payload, headers = self._route(method, split.path, path, query, body)
                except (ValueError, KeyError, TypeError) as exc:  # malformed JSON / ndjson from the client
                    raise HubError(400, f"malformed request: {type(exc).__name__}: {exc}") from None
        except HubError as err:
            status, payload, headers = err.status, {"error": str(err), **err.extra}, dict(err.headers)
            if err.code:
                headers["X-Error-Code"] = err.code
            headers["X-Error-Message"] = str(err)
        self._send(method, status, payload, headers)

    def _read_body(self) -> bytes:
        if self.headers.get("Transfer-Encoding"):  # huggingface_hub sends sized bodies (json=, content=)
            self.close_connection = True
            raise HubError(411, "send a Content-Length; chunked bodies are not accepted by this test Hub")
        length = int(self.headers.get("Content-Length") or 0)
        if length > self.hub.max_body_bytes:
            self.close_connection = True  # the unread body would corrupt the next request on this connection
            raise HubError(413, f"request body of {length} bytes is over {self.hub.max_body_bytes}")
        return self.rfile.read(length) if length else b""

    def _send(self, method: str, status: int, payload: Any, headers: dict[str, str]) -> None:
        if isinstance(payload, bytes):
            data, content_type = payload, "application/octet-stream"
        else:
            data, content_type = json.dumps(payload).encode(), "application/json"
        self.send_response(status)
        self.send_header("Content-Type", headers.pop("Content-Type", content_type))
        self.send_header("Content-Length", str(len(data)))
        for key, value in headers.items():
            self.send_header(key, value)
        self.end_headers()
        if method != "HEAD":
            self.wfile.write(data)

    def _require_token(self) -> None:
        if self.headers.get("Authorization") != f"Bearer {self.hub.token}":
            raise HubError(401, "Invalid credentials in Authorization header")

    # ------------------------------------------------------------------ routing
    def _route(self, method: str, raw_path: str, path: str, query: dict[str, list[str]], body: bytes):
        if method == "POST" and path == "/api/repos/create":
            return self._create_repo(json.loads(body or b"{}"))
        if method == "POST" and path == "/api/validate-yaml":
            return self._validate_yaml(json.loads(body or b"{}"))
        if (match := _RESOLVE.match(raw_path)) and method in ("GET", "HEAD"):
            kind = _TYPES[match["kind"] or "models"]
            return self._resolve(kind, match["repo"], unquote(match["rev"]), unquote(match["path"]))
        if match := _API.match(raw_path):
            repo = self.hub.repo(match["repo"], _TYPES[match["kind"]])
            rest = match["rest"] or ""
            if method == "GET" and rest in ("", "/"):
                return self._info(repo, "main")
            if method == "GET" and (sub := re.match(r"^/revision/([^/]+)$", rest)):
                return self._info(repo, unquote(sub[1]))
            if method == "GET" and (sub := re.match(r"^/tree/([^/]+)(/.*)?$", rest)):
                return self._tree(repo, unquote(sub[1]), unquote(sub[2] or "").strip("/"), query)
            if method == "POST" and (sub := re.match(r"^/preupload/([^/]+)$", rest)):
                return self._preupload(repo, unquote(sub[1]), json.loads(body or b"{}"))
            if method == "POST" and (sub := re.match(r"^/commit/([^/]+)$", rest)):
                return self._commit(repo, unquote(sub[1]), body, query)
        self.hub.unhandled.append((method, raw_path))
        return 404, {"error": f"no such endpoint: {method} {raw_path}"}, {}

    @staticmethod
    def _commit_of(repo: Repo, revision: str) -> Commit:
        commit = repo.resolve(revision)
        if commit is None:
            raise HubError(404, f"Invalid rev id: {revision}", "RevisionNotFound")
        return commit

    # ------------------------------------------------------------------ endpoints
    def _create_repo(self, payload: dict[str, Any]):
        self._require_token()
        name, namespace = payload.get("name"), payload.get("organization") or DEFAULT_USER
        repo_type = payload.get("type") or "model"
        if not name or repo_type not in _TYPES.values():
            raise HubError(400, f"bad create request {payload!r}")
        repo_id = f"{namespace}/{name}"
        prefix = "" if repo_type == "model" else f"{repo_type}s/"
        url = f"{self.hub.url}/{prefix}{repo_id}"
        if (repo_type, repo_id) in self.hub.repos:
            # create_repo(exist_ok=True) reads the url from this answer
            raise HubError(409, "You already created this model repo", url=url)
        repo = Repo(repo_id=repo_id, repo_type=repo_type)
        repo.commit({}, "initial commit")
        self.hub.repos[(repo_type, repo_id)] = repo
        return 200, {"url": url, "name": repo_id}, {}

    def _validate_yaml(self, payload: dict[str, Any]):
        content = payload.get("content") or ""
        if content.startswith("---"):
            front = content.split("---", 2)[1] if content.count("---") >= 2 else ""
            try:
                meta = yaml.safe_load(front)
            except yaml.YAMLError as exc:
                return 400, {"errors": [{"message": f"invalid YAML: {exc}"}]}, {}
            if meta is not None and not isinstance(meta, dict):
                return 400, {"errors": [{"message": "metadata must be a YAML mapping"}]}, {}
        return 200, {"errors": [], "warnings": []}, {}

    def _info(self, repo: Repo, revision: str):
        commit = self._commit_of(repo, revision)
        siblings = [
            {"rfilename": p, "size": len(data), "blobId": git_blob_id(data)}
            for p, data in sorted(commit.files.items())
        ]
        modified = time.strftime("%Y-%m-%dT%H:%M:%S.000Z", time.gmtime(commit.created))
        info = {"id": repo.repo_id, "sha": commit.oid, "private": False, "siblings": siblings,
                "lastModified": modified, "tags": []}
        return 200, info, {}

    def _tree(self, repo: Repo, revision: str, folder: str, query: dict[str, list[str]]):
        commit = self._commit_of(repo, revision)
        recursive = query.get("recursive", ["False"])[0].lower() in ("true", "1")
        prefix = f"{folder}/" if folder else ""
        under = {p: data for p, data in commit.files.items() if p.startswith(prefix)}
        if folder and not under:
            raise HubError(404, f"{folder!r} does not exist at {revision}", "EntryNotFound",
                           {"X-Repo-Commit": commit.oid})
        entries: dict[str, dict[str, Any]] = {}
        for p, data in sorted(under.items()):
            parts = p[len(prefix):].split("/")
            for depth in range(1, len(parts)):  # the folders on the way
                sub = prefix + "/".join(parts[:depth])
                if recursive or depth == 1:
                    entries.setdefault(sub, {"type": "directory", "oid": git_blob_id(sub.encode()), "size": 0,
                                             "path": sub})
            if recursive or len(parts) == 1:
                entries[p] = {"type": "file", "oid": git_blob_id(data), "size": len(data), "path": p}
        return 200, list(entries.values()), {}

    def _preupload(self, repo: Repo, revision: str, payload: dict[str, Any]):
        self._require_token()
        commit = self._commit_of(repo, revision)
        answers = []
        for item in payload.get("files", []):
            existing = commit.files.get(item["path"])
            answers.append({
                "path": item["path"],
                "uploadMode": "regular",  # the server, not the client, picks LFS; regular keeps this small
                "shouldIgnore": False,
                "oid": git_blob_id(existing) if existing is not None else None,
            })
        return 200, {"files": answers, "commitOid": commit.oid}, {}

    def _commit(self, repo: Repo, revision: str, body: bytes, query: dict[str, list[str]]):
        self._require_token()
        if query.get("create_pr"):
            raise HubError(400, "this test Hub does not implement pull requests")
        if revision not in repo.refs:
            raise HubError(404, f"Invalid rev id: {revision} (commits go to a branch)", "RevisionNotFound")
        files = dict(repo.head(revision).files)
        summary = ""
        for line in body.decode().splitlines():
            if not line.strip():
                continue
            item = json.loads(line)
            key, value = item["key"], item["value"]
            if key == "header":
                summary = value.get("summary", "")
                parent = value.get("parentCommit")
                if parent and not repo.refs[revision].startswith(parent):
                    raise HubError(412, f"parentCommit {parent} is not the head of {revision}")
            elif key == "file":
                if value.get("encoding") != "base64":
                    raise HubError(400, f"unsupported encoding {value.get('encoding')!r}")
                files[value["path"]] = base64.b64decode(value["content"])
            elif key == "deletedFile":
                if files.pop(value["path"], None) is None:
                    raise HubError(404, f"{value['path']!r} does not exist", "EntryNotFound")
            elif key == "deletedFolder":
                folder = value["path"].rstrip("/") + "/"
                files = {p: d for p, d in files.items() if not p.startswith(folder)}
            else:  # lfsFile / copies: never offered by _preupload
                raise HubError(400, f"this test Hub accepts regular uploads only, got {key!r}")
        new = repo.commit(files, summary or "commit", revision)
        prefix = "" if repo.repo_type == "model" else f"{repo.repo_type}s/"
        return 200, {"commitUrl": f"{self.hub.url}/{prefix}{repo.repo_id}/commit/{new.oid}",
                     "commitOid": new.oid, "success": True}, {}

    def _resolve(self, repo_type: str, repo_id: str, revision: str, path: str):
        repo = self.hub.repo(repo_id, repo_type)
        commit = self._commit_of(repo, revision)
        data = commit.files.get(path)
        if data is None:
            raise HubError(404, f"Entry not found: {path}", "EntryNotFound", {"X-Repo-Commit": commit.oid})
        headers = {
            "ETag": f'"{git_blob_id(data)}"',
            "X-Repo-Commit": commit.oid,
            "Accept-Ranges": "bytes",
            "Content-Disposition": f"inline; filename*=UTF-8''{quote(path.rsplit('/', 1)[-1])}",
        }
        return 200, data, headers
