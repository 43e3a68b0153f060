//! Outgoing HTTP: the one way digestif builds an HTTP client (rustls with ring, the system
//! trust store, timeouts, a size cap), used by `doctor` to reach the pages behind
//! `newsletter.base_url`.

use std::time::Duration;

use anyhow::Context;

/// A client that gives up after `timeout` for the whole request and follows no redirects:
/// what answers at the URL itself is what is being checked.
pub fn client(timeout: Duration) -> anyhow::Result<reqwest::Client> {
    // reqwest is built without a crypto provider of its own (its default would pull aws-lc);
    // lettre and sqlx already bring ring. Installing it twice is harmless.
    let _ = rustls::crypto::ring::default_provider().install_default();
    reqwest::Client::builder()
        .user_agent(concat!("digestif/", env!("CARGO_PKG_VERSION")))
        .connect_timeout(timeout)
        .timeout(timeout)
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .context("cannot set up an HTTP client")
}

/// What a GET answered: the status and at most `cap` bytes of the body.
pub struct Answer {
    pub status: u16,
    pub body: String,
}

/// GETs `url`, reading at most `cap` bytes of the body (a hostile or confused server cannot
/// make us hold more).
pub async fn get(client: &reqwest::Client, url: &str, cap: usize) -> Result<Answer, String> {
    let mut resp = client.get(url).send().await.map_err(|e| reason(&e))?;
    let status = resp.status().as_u16();
    let mut body = Vec::new();
    while body.len() < cap {
        match resp.chunk().await {
            Ok(Some(chunk)) => body.extend_from_slice(&chunk),
            Ok(None) => break,
            Err(e) => return Err(reason(&e)),
        }
    }
    body.truncate(cap);
    Ok(Answer {
        status,
        body: String::from_utf8_lossy(&body).into_owned(),
    })
}

/// reqwest's error with its causes on one line ("error sending request" alone says nothing).
pub fn reason(e: &reqwest::Error) -> String {
    let mut text = e.to_string();
    let mut source = std::error::Error::source(e);
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    text
}
