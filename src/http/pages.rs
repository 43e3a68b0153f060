//! The subscriber pages: one-click unsubscribe (RFC 8058), double opt-in confirmation, the
//! optional sign-up form, and the archive with its web views and Atom feed. GET never changes
//! anything (link scanners and previews fetch GET); every bad token gets the same 404 page.

use std::collections::HashMap;

use askama::Template;
use axum::Form;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{Html, IntoResponse, Response};
use serde::Deserialize;

use super::AppState;
use super::client::{self, ClientIp};
use super::error::PageError;
use crate::digest;
use crate::domain::{Purpose, SubscriberEmail, SubscriberName};
use crate::render;
use crate::store::issues;
use crate::store::subscribers::{self as db, Asker, Confirmation};

struct Button {
    action: String,
    label: &'static str,
    hidden: Option<(&'static str, &'static str)>,
    /// An editable `name` field, filled in with this.
    name: Option<String>,
}

#[derive(Template)]
#[template(path = "page.html")]
struct Page<'a> {
    newsletter_name: &'a str,
    postal_address: &'a str,
    base: &'a str,
    title: &'a str,
    heading: &'a str,
    paragraphs: Vec<String>,
    error: Option<String>,
    button: Option<Button>,
    signup: bool,
    links: Vec<(String, String)>,
}

impl AppState {
    fn base(&self) -> String {
        self.settings
            .newsletter
            .base_url
            .as_str()
            .trim_end_matches('/')
            .to_owned()
    }

    pub(super) fn page(
        &self,
        status: StatusCode,
        heading: &str,
        paragraphs: Vec<String>,
    ) -> PageBuilder<'_> {
        PageBuilder {
            app: self,
            status,
            heading: heading.to_owned(),
            paragraphs,
            error: None,
            button: None,
            signup: false,
            links: Vec::new(),
        }
    }
}

pub(super) struct PageBuilder<'a> {
    app: &'a AppState,
    status: StatusCode,
    heading: String,
    paragraphs: Vec<String>,
    error: Option<String>,
    button: Option<Button>,
    signup: bool,
    links: Vec<(String, String)>,
}

impl PageBuilder<'_> {
    fn button(mut self, b: Button) -> Self {
        self.button = Some(b);
        self
    }

    pub(super) fn into_response(self) -> Response {
        let n = &self.app.settings.newsletter;
        let base = self.app.base();
        let page = Page {
            newsletter_name: &n.name,
            postal_address: &n.postal_address,
            base: &base,
            title: &self.heading,
            heading: &self.heading,
            paragraphs: self.paragraphs,
            error: self.error,
            button: self.button,
            signup: self.signup,
            links: self.links,
        };
        match page.render() {
            Ok(html) => (self.status, Html(html)).into_response(),
            Err(e) => {
                tracing::error!("rendering a page failed: {e}");
                (StatusCode::INTERNAL_SERVER_ERROR, "internal error\n").into_response()
            }
        }
    }
}

/// `/unsubscribe/` and `/confirm/` with no token at all: the same page as a bad token.
pub async fn empty_token() -> PageError {
    PageError::NotFound
}

// ---- unsubscribe ------------------------------------------------------------------------------

/// GET /unsubscribe: how to unsubscribe (the footer link of the web view).
pub async fn unsubscribe_help(State(app): State<AppState>) -> Response {
    app.page(
        StatusCode::OK,
        "Unsubscribing",
        vec![
            "Every issue you receive ends with a link that unsubscribes you with one click.".into(),
            "Your mail program may also show an Unsubscribe button next to the sender.".into(),
        ],
    )
    .into_response()
}

/// GET /unsubscribe/{token}: a page with one button; changes nothing.
pub async fn unsubscribe_page(
    State(app): State<AppState>,
    Path(token): Path<String>,
) -> Result<Response, PageError> {
    if app.keys.verify(Purpose::Unsubscribe, &token).is_none() {
        return Err(PageError::NotFound);
    }
    let base = app.base();
    let mut lines = vec!["You will not receive any more issues.".to_owned()];
    // Only promise a way back that exists: without the sign-up form /subscribe is a 404.
    if app.settings.http.signup {
        lines.push(format!(
            "You can subscribe again at any time at {base}/subscribe."
        ));
    }
    Ok(app
        .page(
            StatusCode::OK,
            &format!("Unsubscribe from {}?", app.settings.newsletter.name),
            lines,
        )
        .button(Button {
            action: format!("{base}/unsubscribe/{token}"),
            label: "Unsubscribe",
            hidden: Some(("source", "page")),
            name: None,
        })
        .into_response())
}

/// POST /unsubscribe/{token}: RFC 8058 one-click (`List-Unsubscribe=One-Click`, no cookies, no
/// redirect, 200) or the page's button. Repeating it is harmless. The body is read as raw
/// bytes: mail providers differ in the content type they send, and the token alone decides.
pub async fn unsubscribe(
    State(app): State<AppState>,
    Path(token): Path<String>,
    body: axum::body::Bytes,
) -> Result<Response, PageError> {
    let id = app
        .keys
        .verify(Purpose::Unsubscribe, &token)
        .ok_or(PageError::NotFound)?;
    let fields: HashMap<String, String> = url::form_urlencoded::parse(&body).into_owned().collect();
    let method = if fields.get("List-Unsubscribe").map(String::as_str) == Some("One-Click") {
        "one-click"
    } else if fields.get("source").map(String::as_str) == Some("page") {
        "page"
    } else {
        "link"
    };
    if !db::unsubscribe_by_link(&app.pool, id, method).await? {
        return Err(PageError::NotFound);
    }
    tracing::info!(subscriber_id = id, method, "unsubscribed");
    Ok(app
        .page(
            StatusCode::OK,
            "You are unsubscribed",
            vec![format!(
                "You will not receive {} any more. Sorry to see you go.",
                app.settings.newsletter.name
            )],
        )
        .into_response())
}

// ---- confirmation -----------------------------------------------------------------------------

/// GET /confirm/{token}: a page with one button and the name we would greet them with;
/// changes nothing.
pub async fn confirm_page(
    State(app): State<AppState>,
    Path(token): Path<String>,
) -> Result<Response, PageError> {
    let Some((id, nonce)) = app.keys.verify_confirm(&token) else {
        return Err(PageError::NotFound);
    };
    // Whoever filled in the sign-up form typed the name, and the confirmation mail does not
    // repeat it: the owner of the mailbox sees it here, and may change or clear it. A link
    // used or replaced already shows no form (nor the name): its edits would be lost.
    let Some(name) = db::pending_name(&app.pool, id, nonce).await? else {
        return Ok(nothing_to_confirm(&app));
    };
    Ok(confirm_form(&app, &token, name.unwrap_or_default(), StatusCode::OK, None).into_response())
}

fn nothing_to_confirm(app: &AppState) -> Response {
    app.page(
        StatusCode::OK,
        "Nothing to confirm",
        vec![
            "This link was used already or has been replaced by a newer one. Nothing changed."
                .into(),
        ],
    )
    .into_response()
}

/// The confirmation page, its name field filled in with `name`.
fn confirm_form<'a>(
    app: &'a AppState,
    token: &str,
    name: String,
    status: StatusCode,
    error: Option<String>,
) -> PageBuilder<'a> {
    let base = app.base();
    let mut page = app
        .page(
            status,
            &format!(
                "Confirm your subscription to {}",
                app.settings.newsletter.name
            ),
            vec![
                "One click and the next issue is on its way to you.".into(),
                "Each issue opens with the name below; clear it to be greeted without one.".into(),
            ],
        )
        .button(Button {
            action: format!("{base}/confirm/{token}"),
            label: "Yes, subscribe me",
            hidden: None,
            name: Some(name),
        });
    page.error = error;
    page
}

/// POST /confirm/{token}: confirms and records the consent evidence (time, method, client).
pub async fn confirm(
    State(app): State<AppState>,
    ClientIp(client): ClientIp,
    Path(token): Path<String>,
    body: axum::body::Bytes,
) -> Result<Response, PageError> {
    let (id, nonce) = app.keys.verify_confirm(&token).ok_or(PageError::NotFound)?;
    // The name as the page showed it, changed or not; a POST without the field (a client
    // that only presses the button) keeps the stored one.
    let name = match url::form_urlencoded::parse(&body).find(|(k, _)| k == "name") {
        None => None,
        Some((_, typed)) => match SubscriberName::parse_optional(&typed) {
            Ok(name) => Some(name),
            Err(e) => {
                let page = confirm_form(
                    &app,
                    &token,
                    typed.into_owned(),
                    StatusCode::UNPROCESSABLE_ENTITY,
                    Some(e.to_string()),
                );
                return Ok(page.into_response());
            }
        },
    };
    let detail = format!("confirmed from {client}");
    let name = name.as_ref().map(Option::as_ref);
    Ok(
        match db::confirm(&app.pool, id, nonce, name, "web", Some(&detail)).await? {
            Confirmation::Confirmed => {
                tracing::info!(subscriber_id = id, "subscription confirmed");
                app.page(
                StatusCode::OK,
                "You are subscribed",
                vec![format!(
                    "Thank you. {} arrives with the next issue; every issue has a one-click unsubscribe link.",
                    app.settings.newsletter.name
                )],
            )
            .into_response()
            }
            Confirmation::Stale => nothing_to_confirm(&app),
        },
    )
}

// ---- sign-up ----------------------------------------------------------------------------------

/// GET /subscribe: the form (only with `http.signup = true`).
pub async fn subscribe_page(State(app): State<AppState>) -> Result<Response, PageError> {
    if !app.settings.http.signup {
        return Err(PageError::NotFound);
    }
    let mut page = app.page(
        StatusCode::OK,
        &format!("Subscribe to {}", app.settings.newsletter.name),
        vec!["A weekly email of practical tips and new articles for backend engineers.".into()],
    );
    page.signup = true;
    Ok(page.into_response())
}

#[derive(Deserialize)]
pub struct SubscribeForm {
    email: String,
    #[serde(default)]
    name: String,
}

/// POST /subscribe: creates a pending subscriber and sends the confirmation. The answer is the
/// same whether or not the address was known, and the mail goes out after the answer, so
/// neither the page nor its timing tells anyone who subscribes.
pub async fn subscribe(
    State(app): State<AppState>,
    ClientIp(client): ClientIp,
    headers: HeaderMap,
    Form(form): Form<SubscribeForm>,
) -> Result<Response, PageError> {
    if !app.settings.http.signup {
        return Err(PageError::NotFound);
    }
    let base = app.base();
    if !client::same_origin(&headers, &base, &app.settings.http.signup_origins) {
        tracing::info!(%client, "sign-up form posted from another site; refused");
        return Ok(app
            .page(
                StatusCode::FORBIDDEN,
                "Please use our own form",
                vec![format!("Sign up at {base}/subscribe.")],
            )
            .into_response());
    }
    if !app.signup_limiter.allow(client) {
        return Ok(app
            .page(
                StatusCode::TOO_MANY_REQUESTS,
                "Too many requests",
                vec!["Please try again later.".into()],
            )
            .into_response());
    }
    let parsed = SubscriberEmail::parse(&form.email)
        .map_err(|e| e.to_string())
        .and_then(|email| {
            SubscriberName::parse_optional(&form.name)
                .map(|name| (email, name))
                .map_err(|e| e.to_string())
        });
    let (email, name) = match parsed {
        Ok(v) => v,
        Err(reason) => {
            let mut page = app.page(
                StatusCode::UNPROCESSABLE_ENTITY,
                &format!("Subscribe to {}", app.settings.newsletter.name),
                vec![],
            );
            page.error = Some(reason);
            page.signup = true;
            return Ok(page.into_response());
        }
    };
    let worker = app.clone();
    tokio::spawn(async move {
        let sent = digest::send_confirmation(
            &worker.pool,
            &worker.settings,
            &worker.keys,
            &email,
            name.as_ref(),
            Asker::Form {
                resend_after: worker.settings.http.signup_resend_after,
            },
        )
        .await;
        match sent {
            Ok(db::ConfirmRequest::Send { .. }) => {}
            // Say why in the log, never on the page: the answer must not tell who subscribes.
            Ok(other) => tracing::info!(%client, "sign-up: no confirmation mail: {other:?}"),
            Err(e) => tracing::warn!("sign-up confirmation failed: {e:#}"),
        }
    });
    Ok(app.page(
        StatusCode::OK,
        "Check your inbox",
        vec![
            "If the address can receive our email, a message with a confirmation link is on its way."
                .into(),
            "Nothing is sent to you until you click it.".into(),
        ],
    )
    .into_response())
}

// ---- archive ----------------------------------------------------------------------------------

/// GET /issues: the archive.
pub async fn archive(State(app): State<AppState>) -> Result<Response, PageError> {
    let list = issues::list(&app.pool).await?;
    let base = app.base();
    let links: Vec<(String, String)> = list
        .iter()
        .filter(|i| i.number.is_some())
        .map(|i| {
            let n = i.number.unwrap_or_default();
            (format!("{base}/issues/{n}"), i.subject.clone())
        })
        .collect();
    let mut page = app.page(
        StatusCode::OK,
        &format!("{} archive", app.settings.newsletter.name),
        if links.is_empty() {
            vec!["No issues yet.".into()]
        } else {
            vec![]
        },
    );
    page.links = links;
    Ok(page.into_response())
}

/// Issues' web views, each rendered once: rendering and inlining the CSS take about 0.4 ms of
/// CPU, which anyone could ask for over and over, on the cores that send the mail. An issue's
/// content is a snapshot that never changes and this process's settings are fixed, so the page
/// once rendered stays right.
#[derive(Default)]
pub struct WebViews(std::sync::Mutex<HashMap<i32, axum::body::Bytes>>);

impl WebViews {
    /// Issues kept at most; the cache starts over when full (readers ask for the last few).
    const MAX: usize = 64;

    fn get(&self, number: i32) -> Option<axum::body::Bytes> {
        self.0.lock().ok()?.get(&number).cloned()
    }

    fn put(&self, number: i32, html: axum::body::Bytes) {
        if let Ok(mut views) = self.0.lock() {
            if views.len() >= Self::MAX {
                views.clear();
            }
            views.insert(number, html);
        }
    }
}

/// GET /issues/{number}: the issue as the email shows it, without personal data or tokens.
pub async fn web_view(
    State(app): State<AppState>,
    Path(number): Path<String>,
) -> Result<Response, PageError> {
    let number = number
        .parse::<i32>()
        .ok()
        .filter(|n| *n > 0)
        .ok_or(PageError::NotFound)?;
    if let Some(html) = app.web_views.get(number) {
        return Ok(Html(html).into_response());
    }
    let issue = issues::find_by_number(&app.pool, number)
        .await?
        .ok_or(PageError::NotFound)?;
    let content = digest::stored_content(&app.pool, &issue)
        .await?
        .ok_or(PageError::NotFound)?;
    let rendered = render::render_issue(
        &app.settings.newsletter,
        &app.keys,
        app.settings.schedule.cron.zone(),
        &content,
        &app.settings.bounces.address,
    )?;
    let html = axum::body::Bytes::from(rendered.web_html());
    app.web_views.put(number, html.clone());
    Ok(Html(html).into_response())
}

struct FeedEntry {
    title: String,
    number: i32,
    updated: String,
    summary: String,
}

#[derive(Template)]
#[template(path = "feed.xml")]
struct Feed<'a> {
    newsletter_name: &'a str,
    base: &'a str,
    updated: String,
    entries: Vec<FeedEntry>,
}

/// GET /feed.xml: an Atom feed of the archive.
pub async fn feed(State(app): State<AppState>) -> Result<Response, PageError> {
    let list = issues::list(&app.pool).await?;
    let entries: Vec<FeedEntry> = list
        .into_iter()
        .filter_map(|i| {
            Some(FeedEntry {
                number: i.number?,
                updated: i.created_at.to_rfc3339(),
                summary: format!("Issue #{} of {}", i.number?, app.settings.newsletter.name),
                title: i.subject,
            })
        })
        .collect();
    let updated = entries
        .first()
        .map(|e| e.updated.clone())
        .unwrap_or_else(|| "1970-01-01T00:00:00+00:00".into());
    let base = app.base();
    let feed = Feed {
        newsletter_name: &app.settings.newsletter.name,
        base: &base,
        updated,
        entries,
    };
    Ok((
        [(header::CONTENT_TYPE, "application/atom+xml; charset=utf-8")],
        feed.render()?,
    )
        .into_response())
}
