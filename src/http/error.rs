//! What a page handler can fail with. Each variant says the status it answers with; the page
//! itself is drawn by [`error_pages`], which has the settings a page needs, so handlers can
//! return `Result<Response, PageError>` and use `?`.

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};

use super::AppState;

/// A page handler's failure.
#[derive(Debug)]
pub enum PageError {
    /// 404, the one answer for every unknown, malformed, forged, altered or stale token and
    /// every issue that does not exist: the answer must not tell them apart.
    NotFound,
    /// 503: the database or a template failed. The whole chain goes to the log; the visitor
    /// sees a short page asking to try again.
    Unavailable(anyhow::Error),
}

impl From<anyhow::Error> for PageError {
    fn from(e: anyhow::Error) -> Self {
        Self::Unavailable(e)
    }
}

impl From<sqlx::Error> for PageError {
    fn from(e: sqlx::Error) -> Self {
        Self::Unavailable(e.into())
    }
}

impl From<crate::render::RenderError> for PageError {
    fn from(e: crate::render::RenderError) -> Self {
        Self::Unavailable(e.into())
    }
}

impl From<askama::Error> for PageError {
    fn from(e: askama::Error) -> Self {
        Self::Unavailable(e.into())
    }
}

/// Which page [`error_pages`] draws: a marker in the response's extensions, since
/// `IntoResponse` cannot reach the settings.
#[derive(Clone, Copy)]
enum ErrorPage {
    NotFound,
    Unavailable,
}

impl IntoResponse for PageError {
    fn into_response(self) -> Response {
        let (status, page) = match self {
            Self::NotFound => (StatusCode::NOT_FOUND, ErrorPage::NotFound),
            Self::Unavailable(e) => {
                tracing::error!("request failed: {e:#}");
                (StatusCode::SERVICE_UNAVAILABLE, ErrorPage::Unavailable)
            }
        };
        let mut response = status.into_response();
        response.extensions_mut().insert(page);
        response
    }
}

/// The layer that turns a [`PageError`]'s bare status into its page.
pub async fn error_pages(State(app): State<AppState>, response: Response) -> Response {
    match response.extensions().get::<ErrorPage>() {
        Some(ErrorPage::NotFound) => app
            .page(
                StatusCode::NOT_FOUND,
                "This link does not work",
                vec![
                    "It may be incomplete (some mail programs cut long links), or it no longer exists."
                        .into(),
                    "To unsubscribe, use the link at the bottom of any issue you received.".into(),
                ],
            )
            .into_response(),
        Some(ErrorPage::Unavailable) => app
            .page(
                StatusCode::SERVICE_UNAVAILABLE,
                "Something went wrong",
                vec!["Please try again in a few minutes.".into()],
            )
            .into_response(),
        None => response,
    }
}
