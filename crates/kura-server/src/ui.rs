//! The web UI: static files compiled into the binary (rust-embed), served at `/` and
//! `/ui/...`. The pages are a client of the JSON API under `/api/v1` with the session
//! cookie (`POST /api/v1/session`); nothing here reads the home, so the UI can do nothing
//! the API does not.

use axum::extract::Path;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};

#[derive(rust_embed::Embed)]
#[folder = "ui/"]
struct Assets;

/// `GET /`: the application's page.
pub(crate) async fn index() -> Response {
    serve("index.html")
}

/// `GET /ui/{file}`: a script, style sheet or image of the UI.
pub(crate) async fn asset(Path(file): Path<String>) -> Response {
    serve(&file)
}

fn serve(file: &str) -> Response {
    let Some(f) = Assets::get(file) else {
        return crate::error::ApiError::new(
            StatusCode::NOT_FOUND,
            "not_found",
            format!("no UI file {file:?}"),
        )
        .into_response();
    };
    (
        [
            (header::CONTENT_TYPE, f.metadata.mimetype().to_string()),
            // Only this server's own files run in the page, and no other site frames it.
            (
                header::CONTENT_SECURITY_POLICY,
                "default-src 'self'; img-src 'self' data:; frame-ancestors 'none'; base-uri 'none'; form-action 'self'"
                    .to_string(),
            ),
            (header::X_CONTENT_TYPE_OPTIONS, "nosniff".to_string()),
            (header::REFERRER_POLICY, "no-referrer".to_string()),
            (header::CACHE_CONTROL, "no-cache".to_string()),
        ],
        f.data,
    )
        .into_response()
}
