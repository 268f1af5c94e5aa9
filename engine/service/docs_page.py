"""``GET /docs``: the OpenAPI document as one plain HTML page, with nothing fetched from elsewhere.

FastAPI's own /docs page loads Swagger UI from a CDN (and its icon from fastapi's site): on an
offline workstation it shows nothing, and on a connected one every visit tells a third party
that someone here opened Lantern's API. This page is made on the server from the same
OpenAPI document (served as is at /openapi.json): each route, what it does, its form fields and
its answers. No script, no style sheet, no image from anywhere.
"""

from __future__ import annotations

from html import escape

_STYLE = ("body{font-family:sans-serif;max-width:60em;margin:2em auto;line-height:1.4}"
          "code{background:#eee;padding:0 .2em}table{border-collapse:collapse}"
          "td,th{border:1px solid #ccc;padding:.2em .5em;text-align:left;vertical-align:top}")


def _field_type(schema: dict) -> str:
    if schema.get("format") == "binary" or schema.get("contentMediaType") == "application/octet-stream":
        return "file"
    if schema.get("type") == "array":
        return f"list of {_field_type(schema.get('items', {}))}"
    if "anyOf" in schema:
        return " or ".join(_field_type(s) for s in schema["anyOf"])
    return str(schema.get("type", "value"))


def _form_rows(operation: dict, schemas: dict) -> list[str]:
    content = operation.get("requestBody", {}).get("content", {})
    schema = next(iter(content.values()), {}).get("schema", {})
    if "$ref" in schema:
        schema = schemas.get(schema["$ref"].rpartition("/")[2], {})
    required = set(schema.get("required", ()))
    rows = []
    for name, field in schema.get("properties", {}).items():
        default = f" (default {field['default']!r})" if "default" in field else ""
        rows.append(f"<tr><td><code>{escape(name)}</code></td><td>{escape(_field_type(field))}</td>"
                    f"<td>{'required' if name in required else 'optional' + escape(default)}</td>"
                    f"<td>{escape(field.get('description', ''))}</td></tr>")
    return rows


def docs_html(spec: dict) -> str:
    info, schemas = spec.get("info", {}), spec.get("components", {}).get("schemas", {})
    title = f"{escape(info.get('title', ''))} {escape(info.get('version', ''))}"
    parts = [f"<!doctype html><html><head><meta charset='utf-8'><title>{title} API</title>"
             f"<style>{_STYLE}</style></head><body><h1>{title}</h1>"
             f"<p>{escape(info.get('description', ''))}</p><p>The OpenAPI document: "
             "<a href='openapi.json'>openapi.json</a>. Examples and security defaults: docs/service.md.</p>"]
    for path, methods in spec.get("paths", {}).items():
        for method, operation in methods.items():
            parts.append(f"<h2><code>{escape(method.upper())} {escape(path)}</code></h2>"
                         f"<p>{escape(operation.get('summary', ''))}</p>")
            if operation.get("description"):
                parts.append(f"<p>{escape(operation['description'])}</p>")
            rows = _form_rows(operation, schemas)
            if rows:
                parts.append("<p>multipart/form-data fields:</p><table><tr><th>field</th><th>type</th><th></th>"
                             f"<th>what</th></tr>{''.join(rows)}</table>")
            codes = ", ".join(escape(code) for code in operation.get("responses", {}))
            parts.append(f"<p>Answers: {codes}.</p>")
    parts.append("</body></html>")
    return "".join(parts)
