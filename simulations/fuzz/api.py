"""The ``api`` target: requests built from the app's own ``/openapi.json``, then mutated, into the
ASGI app of a running terminal."""

from __future__ import annotations

import contextlib
import json
import random
import re
import shutil
import tempfile
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from meshpos.api_screens import PUBLIC_PATHS
from simulations import hostile
from simulations.fuzz.target import Target, running_terminal, scratch
from simulations.fuzz.values import dump_json, json_value, mutate_bytes, mutate_value, text, weird_str

#: What answers 2xx with something other than JSON, by design: the screens' pages and files, and
#: the Prometheus exposition.  Their errors are JSON like every other.
NOT_JSON = PUBLIC_PATHS | {"/metrics"}

ID_RULE = "[A-Za-z0-9][A-Za-z0-9._:-]{0,63}"
#: Body fields and path parameters that name things the terminal holds: mostly a known one
#: (``@@kind#n@@``, resolved at run time from what the session created), so requests reach the
#: handlers' state checks instead of stopping at 404.
KNOWN_FIELDS = {"order_id": "order", "table": "table", "into": "table", "sku": "sku", "payment_op_id": "payment",
                "table_id": "table", "item_id": "item", "drawer": "drawer", "review_id": "review"}
PLACEHOLDER = re.compile(r"@@([a-z]+)#([0-9]+)@@")
PLACEHOLDER_BYTES = re.compile(rb"@@([a-z]+)#([0-9]+)@@")
CONTENT_TYPES = ["application/json", "application/json; charset=utf-8", "APPLICATION/JSON", "text/plain", "",
                 "application/x-www-form-urlencoded", "multipart/form-data; boundary=x", "application/jsonx",
                 "application/json;", " application/json ", "text/json"]


class SchemaValues:
    """Values for a JSON Schema as msgspec publishes it in /openapi.json: in range most of the
    time, on the bounds or past them otherwise."""

    def __init__(self, spec: dict[str, Any]) -> None:
        self.components = spec["components"]["schemas"]

    def value(self, schema: dict[str, Any], rng: random.Random, name: str = "", depth: int = 0) -> Any:
        if "$ref" in schema:
            schema = self.components[schema["$ref"].rsplit("/", 1)[1]]
        if name in KNOWN_FIELDS and rng.random() < 0.7:
            return f"@@{KNOWN_FIELDS[name]}#{rng.randint(0, 9)}@@"
        if "anyOf" in schema and "type" not in schema and "properties" not in schema:
            return self.value(rng.choice(schema["anyOf"]), rng, name, depth)
        if "enum" in schema:
            return rng.choice(schema["enum"])
        if "const" in schema:
            return schema["const"]
        kind = schema.get("type")
        if kind == "object":
            return self._object(schema, rng, depth)
        if kind == "integer":
            lo, hi = schema.get("minimum", -(2**31)), schema.get("maximum", 2**31)
            r = rng.random()
            value = rng.randint(lo, hi) if r < 0.5 else rng.randint(lo, min(hi, lo + 10)) if r < 0.8 else \
                rng.choice([lo, hi, lo - 1, hi + 1])
            return 1 if value == 0 and "not" in schema and rng.random() < 0.9 else value
        if kind == "string":
            if ID_RULE in schema.get("pattern", ""):
                return rng.choice(["T1", "burger", text(rng, 1, 10)]) if rng.random() < 0.9 else weird_str(rng)
            lo, hi = schema.get("minLength", 0), min(schema.get("maxLength", 30), 60)
            r = rng.random()
            if r < 0.85:
                return text(rng, max(1, lo), max(1, min(hi, 12))) if hi else ""
            return rng.choice(["", "x" * (hi + 1), weird_str(rng), "x" * hi])
        if kind == "array":
            items = schema.get("items", {})
            n = rng.randint(schema.get("minItems", 0), min(schema.get("maxItems", 3), 3))
            return [self.value(items, rng, "", depth + 1) for _ in range(n)]
        if kind == "boolean":
            return rng.random() < 0.5
        if kind == "null":
            return None
        return json_value(rng)

    def _object(self, schema: dict[str, Any], rng: random.Random, depth: int) -> dict[str, Any]:
        props = schema.get("properties", {})
        required = set(schema.get("required", []))
        for group in schema.get("anyOf", []):  # TablePatch, StockFlagsIn: one of these is required
            if "required" in group and rng.random() < 0.6:
                required |= set(group["required"])
        out = {}
        for key, sub in props.items():
            if key in required or rng.random() < 0.4:
                out[key] = self.value(sub, rng, key, depth + 1)
        return out


class ApiTarget(Target):
    name = "api"
    asynchronous = True
    _spec: dict[str, Any] | None = None

    def prepare(self) -> None:
        """The schema the requests are built from: the app's own /openapi.json (fetched once per
        process, before any event loop runs: generation happens inside the batch's loop)."""
        if ApiTarget._spec is None:
            import anyio  # noqa: PLC0415

            async def fetch(workdir: Path) -> dict[str, Any]:
                async with running_terminal(workdir / "t") as terminal, api_client(terminal) as client:
                    return (await client.get("/openapi.json")).json()

            workdir = Path(tempfile.mkdtemp(prefix="fuzz-spec-", dir=scratch()))
            try:
                ApiTarget._spec = anyio.run(fetch, workdir)
            finally:
                shutil.rmtree(workdir, ignore_errors=True)

    def spec(self) -> dict[str, Any]:
        if ApiTarget._spec is None:
            raise RuntimeError("ApiTarget.prepare() fetches the schema first")
        return ApiTarget._spec

    def generate(self, index: int) -> dict[str, Any]:
        rng = self.rng(index)
        spec = self.spec()
        values = SchemaValues(spec)
        operations = sorted((path, method) for path, methods in spec["paths"].items() for method in methods)
        path, method = rng.choice(operations)
        op = spec["paths"][path][method]
        method = method.upper()
        params: dict[str, str] = {}
        query: list[tuple[str, str]] = []
        for p in op.get("parameters", []):
            name = p["name"]
            if p["in"] == "path":
                if rng.random() < 0.88:
                    params[name] = f"@@{KNOWN_FIELDS.get(name, name)}#{rng.randint(0, 9)}@@"
                else:
                    params[name] = rng.choice([weird_str(rng), text(rng, 1, 40), "main.0", "20260615-" + "0" * 19,
                                               "a" * 9000, "%2e%2e", "T1%0A"])
            elif rng.random() < 0.5:
                value = values.value(p["schema"], rng, name)
                if rng.random() < 0.2:
                    value = rng.choice(["", "abc", "-1", "99999999999999999999", "2026-02-30", "2026-06-15",
                                        "1e3", "true", weird_str(rng)])
                query.append((name, json.dumps(value) if isinstance(value, dict | list) else
                              str(value).lower() if isinstance(value, bool) else str(value)))
        if rng.random() < 0.05:
            query.append((text(rng), weird_str(rng)))
        body: bytes | None = None
        headers = {"content-type": "application/json"} if method != "GET" else {}
        schema = op.get("requestBody", {}).get("content", {}).get("application/json", {}).get("schema")
        if schema is not None or rng.random() < 0.03:
            value = values.value(schema, rng) if schema is not None else json_value(rng)
            r = rng.random()
            if r < 0.25:
                value = mutate_value(value, rng, max_nesting=40)
            body = dump_json(value, rng).encode("utf-8", "surrogatepass")
            if r > 0.9:
                body = mutate_bytes(body, rng) if r < 0.96 else rng.choice(
                    [b"", b"null", b"[]", b"{", b"\xff\xfe", hostile.deep_json(rng.choice([33, 100_000]),
                                                                               '{{"items":{}}}').encode(),
                     b'{"name":"' + b"x" * 300_000 + b'","price_cents":1}'])
        if method != "GET" and rng.random() < 0.08:
            ctype = rng.choice(CONTENT_TYPES)
            if ctype:
                headers["content-type"] = ctype
            else:
                headers.pop("content-type", None)
        if rng.random() < 0.05:
            method = rng.choice(["GET", "POST", "PUT", "PATCH", "DELETE", "HEAD", "OPTIONS", "TRACE", "BREW"])
        if rng.random() < 0.02:
            path = rng.choice(["/", "/api", "/api/v1", "/api/v1/orders/", "/api/v2/orders", "/openapi.json",
                               "/api/v1/events", "/api/v1/../v1/tables", "//api/v1/tables", "/api/v1/tables?x"])
        if rng.random() < 0.06:
            header = rng.choice(["host", "origin", "origin", "authorization", "x-forwarded-for", "cookie",
                                 "access-control-request-method", "transfer-encoding"])
            headers[header] = rng.choice(["evil.example", "http://evil.example", "null", "http://127.0.0.1:0",
                                          "localhost", "127.0.0.1:0", "Bearer x", "[::1]", "POST", "a" * 70_000,
                                          "http://localhost:0", "chunked", ""])
        return {"method": method, "path": path, "params": params, "query": query, "headers": headers, "body": body}

    @contextlib.asynccontextmanager
    async def session(self, workdir: Path) -> AsyncIterator[Any]:
        async with running_terminal(workdir) as terminal:
            async with api_client(terminal) as client:
                session = ApiSession(terminal, client)
                await session.setup()
                yield session


def api_client(terminal: Any) -> Any:
    """The app in process: every request goes through the guard, routing, decoding and handlers."""
    import httpx  # noqa: PLC0415

    from meshpos.api import create_app  # noqa: PLC0415

    app = create_app(terminal)
    return httpx.AsyncClient(transport=httpx.ASGITransport(app), base_url="http://127.0.0.1:0", timeout=60)


class ApiSession:
    def __init__(self, terminal: Any, client: Any) -> None:
        self.t = terminal
        self.client = client
        self.known: dict[str, list[str]] = {
            "table": ["T1", "T2", "T3"], "sku": ["burger", "soda"], "order": [], "orderitem": [], "item": [],
            "payment": ["fuzz-pay-1"], "drawer": ["main", "bar"], "review": ["main.0", "main.1", "main.2", "bar.0"]}

    async def setup(self) -> None:
        """What a morning leaves: tables, a menu, an order with items, drawer ``main`` opened and
        paid into.  Every later request can name these (see :data:`KNOWN_FIELDS`)."""
        calls = [("PUT", f"/api/v1/tables/{t}", {"name": t, "seats": 4}) for t in ("T1", "T2", "T3")]
        calls += [("PUT", f"/api/v1/catalog/{s}", {"name": s, "price_cents": 500}) for s in ("burger", "soda")]
        calls += [("POST", "/api/v1/orders", {"table": "T1", "items": [
            {"sku": "burger", "name": "Burger", "qty": 2, "unit_price_cents": 1590},
            {"sku": "soda", "name": "Soda", "qty": 1, "unit_price_cents": 500}]})]
        calls += [("POST", "/api/v1/cashier/drawers/main/open", {"float_cents": 10_000, "operator": "fuzz"})]
        for method, path, body in calls:
            answer = await self.client.request(method, path, json=body)
            if answer.status_code >= 300:
                raise RuntimeError(f"setup {method} {path}: {answer.status_code} {answer.text}")
            self.learn(method, path, answer)
        order = self.known["order"][0]
        answer = await self.client.post("/api/v1/cashier/drawers/main/payments", json={
            "order_id": order, "amount_cents": 1000, "method": "cash", "op_id": "fuzz-pay-1"})
        if answer.status_code >= 300:
            raise RuntimeError(f"setup payment: {answer.status_code} {answer.text}")

    def learn(self, method: str, path: str, answer: Any) -> None:
        """Remember the orders and items a request created, in an order that does not depend on
        their random ids (on the fixed clock every item has the same ``added_at``, and a view
        lists items by time, then id): ``@@item#3@@`` must name the same item in every run."""
        if not 200 <= answer.status_code < 300 or method != "POST":
            return
        if path == "/api/v1/orders" or path.endswith("/items"):
            view = answer.json()
            if isinstance(view, dict) and "id" in view:
                if view["id"] not in self.known["order"]:
                    self.known["order"].append(view["id"])
                new = [item for item in view.get("items", []) if item["id"] not in self.known["item"]]
                for item in sorted(new, key=lambda i: json.dumps({k: v for k, v in i.items() if k != "id"},
                                                                 sort_keys=True)):
                    self.known["item"].append(item["id"])
                    self.known["orderitem"].append(view["id"])

    def resolve(self, textual: str, pair: int | None = None) -> str:
        def one(match: re.Match[str]) -> str:
            kind, n = match.group(1), int(match.group(2))
            if kind == "order" and pair is not None:
                kind = "orderitem"
            values = self.known.get(kind) or ["none"]
            return values[(pair if pair is not None else n) % len(values)]

        return PLACEHOLDER.sub(one, textual)

    async def run(self, inp: dict[str, Any]) -> str:
        from urllib.parse import quote  # noqa: PLC0415

        def escaped(value: str) -> str:  # a lone surrogate travels as the bytes a client would send
            return quote(value.encode("utf-8", "surrogatepass"), safe="")

        params = inp["params"]
        item = PLACEHOLDER.fullmatch(params.get("item_id", ""))
        pair = int(item.group(2)) if item else None  # an item and its own order, not another's
        path = inp["path"]
        for name, value in params.items():
            resolved = self.resolve(value, pair if name == "order_id" else None)
            path = path.replace("{" + name + "}", resolved if len(resolved) > 2000 and resolved.isascii()
                                else escaped(resolved))
        query = "&".join(f"{escaped(k)}={escaped(self.resolve(v))}" for k, v in inp["query"])
        if query:
            path += ("&" if "?" in path else "?") + query
        body = inp["body"]
        if body is not None and b"@@" in body:
            body = PLACEHOLDER_BYTES.sub(lambda m: self.resolve(m.group(0).decode()).encode(), body)
        method = inp["method"]
        answer = await self.client.request(method, path, content=body, headers=inp["headers"])
        status = answer.status_code
        if status >= 500:
            raise AssertionError(f"{method} {path}: HTTP {status}: {answer.text[:500]}")
        if 300 <= status < 400:  # Starlette's redirect of a trailing slash: no error, no body
            if "location" not in answer.headers:
                raise AssertionError(f"{method} {path}: HTTP {status} without a Location")
            return "refused"
        if method != "HEAD" and not (method == "OPTIONS" and status < 400 and not answer.content) and not (
                status < 400 and answer.url.path in NOT_JSON):
            try:
                payload = answer.json()
            except ValueError:
                raise AssertionError(f"{method} {path}: HTTP {status} answered no JSON: "
                                     f"{answer.text[:300]!r}") from None
            if status >= 400 and not (isinstance(payload, dict) and type(payload.get("code")) is int
                                      and isinstance(payload.get("message"), str)):
                raise AssertionError(f"{method} {path}: HTTP {status} error is not {{code, message}}: {payload!r:.300}")
        self.learn(method, inp["path"], answer)
        return "accepted" if status < 400 else "refused"

    async def finish(self) -> None:
        for path in ("/api/v1/orders", "/api/v1/tables", "/api/v1/inventory", "/api/v1/catalog", "/api/v1/status",
                     "/api/v1/cashier/drawers", "/api/v1/review?status=all", "/api/v1/audit"):
            answer = await self.client.get(path)
            if answer.status_code != 200:
                raise AssertionError(f"GET {path} after the batch: HTTP {answer.status_code}: {answer.text[:300]}")
