//! The OpenAPI document, built from the same route table as the router and from the same
//! Rust types (crate `kura-api`) the handlers read and answer with.

use schemars::generate::SchemaSettings;
use serde_json::{Value, json};

use crate::routes::ROUTES;

/// The OpenAPI 3.1 document served at `/api/v1/openapi.json`.
pub fn openapi() -> Value {
    // OpenAPI 3.1 schemas are JSON Schema 2020-12; shared ones live in the components.
    let mut g = SchemaSettings::draft2020_12()
        .with(|s| {
            s.definitions_path = "/components/schemas".into();
            s.meta_schema = None;
        })
        .into_generator();
    let error = g.subschema_for::<kura_api::Error>().to_value();
    let mut paths = serde_json::Map::new();
    for r in ROUTES {
        let mut params: Vec<Value> = r
            .path
            .split('/')
            .filter_map(|seg| seg.strip_prefix('{')?.strip_suffix('}'))
            .map(|name| json!({"name": name, "in": "path", "required": true, "schema": {"type": "string"}}))
            .collect();
        if let Some(query) = r.query {
            let schema = query(&mut g).to_value();
            params.extend(query_params(&resolve(&g, &schema)));
        }
        let body = (r.response)(&mut g).to_value();
        // Downloads answer with bytes; everything else with JSON.
        let media = if body["format"] == "binary" {
            "application/octet-stream"
        } else {
            "application/json"
        };
        let mut op = json!({
            "operationId": r.operation,
            "summary": r.summary,
            "parameters": params,
            "responses": {
                r.success.to_string(): {"description": "success", "content": {media: {"schema": body}}},
                "4XX": {"description": "the request was refused; nothing was changed", "content": {"application/json": {"schema": error}}},
                "5XX": {"description": "the server failed or is stopping", "content": {"application/json": {"schema": error}}}
            }
        });
        if let Some(request) = r.request {
            let schema = request(&mut g).to_value();
            // A body whose fields are all optional may be left out (it reads as `{}`).
            let required = resolve(&g, &schema)["required"]
                .as_array()
                .is_some_and(|r| !r.is_empty());
            op["requestBody"] =
                json!({"required": required, "content": {"application/json": {"schema": schema}}});
        }
        // The document and the sign-in are open; everything else takes a bearer token or
        // the web UI's session cookie (with its CSRF header for changes).
        if r.path != "/api/v1/openapi.json" && r.operation != "createSession" {
            op["security"] = json!([{"bearer": []}, {"session": []}]);
        }
        let entry = paths.entry(r.path.to_string()).or_insert_with(|| json!({}));
        entry[r.method.to_ascii_lowercase()] = op;
    }
    json!({
        "openapi": "3.1.0",
        "info": {"title": "kura", "version": env!("CARGO_PKG_VERSION")},
        "paths": paths,
        "components": {
            "securitySchemes": {
                "bearer": {"type": "http", "scheme": "bearer"},
                "session": {"type": "apiKey", "in": "cookie", "name": "kura_session"},
            },
            "schemas": g.take_definitions(true),
        }
    })
}

/// The schema a `$ref` points to among the generator's definitions (or the schema itself).
fn resolve(g: &schemars::SchemaGenerator, schema: &Value) -> Value {
    schema["$ref"]
        .as_str()
        .and_then(|r| r.strip_prefix("#/components/schemas/"))
        .and_then(|name| g.definitions().get(name))
        .cloned()
        .unwrap_or_else(|| schema.clone())
}

/// One query parameter per property of a query-string type.
fn query_params(schema: &Value) -> Vec<Value> {
    let required: Vec<&str> = schema["required"]
        .as_array()
        .map(|a| a.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default();
    schema["properties"]
        .as_object()
        .map(|props| {
            props
                .iter()
                .map(|(name, s)| {
                    let mut s = s.clone();
                    // A query parameter is absent or a value, never null.
                    if let Some(types) = s.get_mut("type").and_then(Value::as_array_mut) {
                        types.retain(|t| t != "null");
                        if types.len() == 1 {
                            s["type"] = types[0].clone();
                        }
                    }
                    let description = s.as_object_mut().and_then(|o| o.remove("description"));
                    let mut p = json!({
                        "name": name,
                        "in": "query",
                        "required": required.contains(&name.as_str()),
                        "schema": s,
                    });
                    if let Some(d) = description {
                        p["description"] = d;
                    }
                    p
                })
                .collect()
        })
        .unwrap_or_default()
}
