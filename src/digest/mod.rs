//! The use case, and the only place that knows the order of things: pick content for a slot,
//! snapshot it as an issue and fan it out, render it, deliver it (`deliver`). The CLI, the
//! scheduler and the tests all come through here.

mod breaker;
mod counters;
pub mod deliver;
mod worker;
mod writer;

use std::path::{Path, PathBuf};

use anyhow::{Context, anyhow, bail};
use chrono::{DateTime, Utc};
use secrecy::ExposeSecret;
use sqlx::{PgConnection, PgPool};

use crate::config::{Settings, WhenEmpty};
use crate::domain::{
    IssueStatus, MIN_SECRET_LEN, SubscriberEmail, SubscriberName, TokenKey, TokenKeys,
};
use crate::render::{self, IssueContent, Recipient, RenderedIssue};
use crate::send::{Mailer, Outcome};
use crate::store::deliveries;
use crate::store::issues::{self, Candidate, IssueRow, NewIssue};
use crate::store::subscribers::{self, ConfirmRequest};

/// The keys that sign links: `http.token_secret` when configured, else the secret digestif
/// generated in the database at migration time.
pub async fn token_keys(settings: &Settings, pool: &PgPool) -> anyhow::Result<TokenKeys> {
    let configured = settings.http.token_secret.expose_secret();
    let key = if configured.is_empty() {
        let stored = issues::stored_token_secret(pool)
            .await?
            .ok_or_else(|| anyhow!("no token secret in the database: run `digestif migrate`"))?;
        TokenKey::new(&stored)
    } else {
        TokenKey::new(configured.as_bytes())
    };
    let key = key.ok_or_else(|| {
        anyhow!("config: http.token_secret: must be at least {MIN_SECRET_LEN} characters")
    })?;
    let previous = settings
        .http
        .previous_token_secrets
        .iter()
        .map(|p| {
            TokenKey::new(p.expose_secret().as_bytes()).ok_or_else(|| {
                anyhow!("config: http.previous_token_secrets: every entry must be at least {MIN_SECRET_LEN} characters")
            })
        })
        .collect::<anyhow::Result<Vec<_>>>()?;
    Ok(TokenKeys::new(key, previous))
}

/// What composing a slot yields.
#[derive(Debug)]
pub enum Plan {
    /// An issue with this content.
    Compose(Vec<Candidate>),
    /// No issue for this slot, and why.
    Skip(String),
}

/// What composing a slot yields, and the articles it considered.
#[derive(Debug)]
pub struct Planned {
    /// The issue, or why there is none.
    pub plan: Plan,
    /// Every article the slot considered, picked or left out; creating its issue records them.
    pub considered: Vec<i64>,
}

/// Picks the content for `slot` without writing anything (docs/ARCHITECTURE.md §5).
pub async fn plan(
    conn: &mut PgConnection,
    settings: &Settings,
    slot: DateTime<Utc>,
) -> anyhow::Result<Planned> {
    let c = &settings.content;
    let tips = issues::pick_tips(conn, c.tips_per_issue).await?;
    // Picked among a list read once, so an article that commits in between is neither picked
    // nor recorded: the next issue considers it.
    let considered = issues::articles_to_consider(conn, slot).await?;
    let articles = issues::pick_articles(conn, &considered, c.max_articles).await?;
    let plan = if articles.is_empty() && tips.is_empty() {
        Plan::Skip("no tips left and no new articles".into())
    } else if articles.is_empty() && c.when_empty == WhenEmpty::Skip {
        Plan::Skip("no new articles and content.when_empty = \"skip\"".into())
    } else {
        Plan::Compose(tips.into_iter().chain(articles).collect())
    };
    Ok(Planned { plan, considered })
}

/// Creates the issue for `slot` (or returns the one that exists: one issue per slot, whoever
/// asks). A slot with nothing to send is recorded as `skipped` so it is not reconsidered.
pub async fn create_issue(
    pool: &PgPool,
    settings: &Settings,
    slot: DateTime<Utc>,
) -> anyhow::Result<IssueRow> {
    let mut tx = pool.begin().await?;
    issues::lock_issue_creation(&mut tx).await?;
    if let Some(existing) = issues::find_by_slot(&mut *tx, slot).await? {
        return Ok(existing);
    }
    let Planned { plan, considered } = plan(&mut tx, settings, slot).await?;
    let (number, items, status, reason, subject) = match plan {
        Plan::Compose(items) => {
            let number = issues::next_number(&mut tx).await?;
            let content = IssueContent {
                number,
                slot,
                items: items.iter().map(|c| c.item.clone()).collect(),
            };
            let subject = content.subject(&settings.newsletter);
            (Some(number), items, IssueStatus::Sending, None, subject)
        }
        Plan::Skip(reason) => {
            tracing::info!(%slot, %reason, "skipping the slot");
            (
                None,
                Vec::new(),
                IssueStatus::Skipped,
                Some(reason),
                "(skipped)".to_owned(),
            )
        }
    };
    let row = issues::insert(
        &mut tx,
        &NewIssue {
            slot,
            number,
            subject: &subject,
            status,
            reason: reason.as_deref(),
            items: &items,
            considered: &considered,
        },
    )
    .await?
    .ok_or_else(|| anyhow!("the issue for {slot} was created concurrently"))?;
    if row.status == IssueStatus::Sending {
        // In the same transaction: the issue never exists without its recipients.
        let recipients = deliveries::fan_out(&mut tx, row.issue_id).await?;
        tracing::info!(
            number = row.number.unwrap_or_default(),
            recipients,
            "issue created"
        );
    }
    tx.commit().await?;
    if row.status == IssueStatus::Sending {
        deliveries::analyze(pool).await;
    }
    Ok(row)
}

/// The content of a stored issue.
pub async fn stored_content(
    pool: &PgPool,
    issue: &IssueRow,
) -> anyhow::Result<Option<IssueContent>> {
    let Some(number) = issue.number else {
        return Ok(None);
    };
    Ok(Some(IssueContent {
        number,
        slot: issue.slot,
        items: issues::items(pool, issue.issue_id).await?,
    }))
}

/// The slot due at `now`: the latest scheduled one, if it is within the grace window.
pub fn due_slot(settings: &Settings, now: DateTime<Utc>) -> Option<DateTime<Utc>> {
    let due = settings.schedule.cron.latest_at_or_before(now)?;
    let grace = chrono::Duration::from_std(settings.schedule.grace).unwrap_or_default();
    (now - due <= grace).then_some(due)
}

/// Which issue a send command may create (docs/ARCHITECTURE.md §6; README "Sending by hand").
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SendRequest {
    /// `issue send`: the slot due within `schedule.grace`, as `run` does.
    Due,
    /// `issue send --now`: this period's issue (the latest slot at or before now, however
    /// late) unless it, or a later one, exists or another issue is unfinished. Running it again,
    /// after a crash or not, finishes what is open and never creates a second issue.
    Now,
    /// `issue send --next-slot`: the next slot's issue ahead of its time; refused while an
    /// issue is unfinished or this period's issue was sent, unless `force`.
    NextSlot {
        /// Send it anyway.
        force: bool,
    },
}

/// What a send command does before delivering what is ready.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SendPlan {
    /// Create the issue of this slot (or reuse it: one issue per slot, whoever asks).
    Create(DateTime<Utc>),
    /// Create nothing, for this reason; deliveries that are ready still go out.
    Nothing(String),
}

/// Decides which issue, if any, a send command creates at `now`. Refusals are errors.
pub async fn plan_send(
    pool: &PgPool,
    settings: &Settings,
    now: DateTime<Utc>,
    request: SendRequest,
) -> anyhow::Result<SendPlan> {
    let schedule = &settings.schedule.cron;
    let local = |t: DateTime<Utc>| schedule.local(t);
    match request {
        SendRequest::Due => Ok(match due_slot(settings, now) {
            Some(slot) => SendPlan::Create(slot),
            None => SendPlan::Nothing(format!(
                "no issue is due (next slot: {})",
                schedule
                    .next_after(now)
                    .map(|t| local(t).to_string())
                    .unwrap_or_else(|| "none".into())
            )),
        }),
        SendRequest::Now => {
            if let Some(open) = issues::oldest_incomplete(pool).await? {
                return Ok(SendPlan::Nothing(format!(
                    "issue #{} ({}) is not finished: finishing it, no new issue is created",
                    open.number.unwrap_or_default(),
                    open.status
                )));
            }
            let Some(current) = schedule.latest_at_or_before(now) else {
                bail!(
                    "schedule.cron has no slot before now, so there is no issue to send now; \
                     `issue send --next-slot` sends the next slot's issue ahead of its time"
                );
            };
            match issues::latest(pool, false).await? {
                Some(last) if last.slot >= current => Ok(SendPlan::Nothing(format!(
                    "{} already covers this period; nothing new is created \
                     (`issue send --next-slot` sends the next slot's issue ahead of its time)",
                    describe(&last, &local(last.slot).to_string())
                ))),
                _ => Ok(SendPlan::Create(current)),
            }
        }
        SendRequest::NextSlot { force } => {
            let next = schedule
                .next_after(now)
                .ok_or_else(|| anyhow!("config: schedule.cron: the schedule never fires again"))?;
            if issues::find_by_slot(pool, next).await?.is_some() || force {
                return Ok(SendPlan::Create(next));
            }
            if let Some(open) = issues::oldest_incomplete(pool).await? {
                bail!(
                    "issue #{} is still {}: finish it first (`issue send --now`), or pass --force",
                    open.number.unwrap_or_default(),
                    open.status
                );
            }
            if let (Some(current), Some(last)) = (
                schedule.latest_at_or_before(now),
                issues::latest(pool, true).await?,
            ) && last.slot >= current
            {
                bail!(
                    "{} was already sent this period; sending the next slot's issue ({}) \
                     now would mean two issues in one period: pass --force to do it anyway",
                    describe(&last, &local(last.slot).to_string()),
                    local(next)
                );
            }
            Ok(SendPlan::Create(next))
        }
    }
}

/// "issue #3 (sent, slot Mon 2026-11-30 09:00 CET)", or the skipped slot.
fn describe(issue: &IssueRow, slot: &str) -> String {
    match issue.number {
        Some(n) => format!("issue #{n} ({}, slot {slot})", issue.status),
        None => format!("the slot {slot} (skipped)"),
    }
}

/// The slot the next issue belongs to at `now`: the one `issue send --now` would create, else
/// the next one to come. What `issue preview` and `issue test-send` render.
pub async fn next_slot(
    pool: &PgPool,
    settings: &Settings,
    now: DateTime<Utc>,
) -> anyhow::Result<DateTime<Utc>> {
    if settings.schedule.cron.latest_at_or_before(now).is_some()
        && let SendPlan::Create(slot) = plan_send(pool, settings, now, SendRequest::Now).await?
    {
        return Ok(slot);
    }
    settings
        .schedule
        .cron
        .next_after(now)
        .ok_or_else(|| anyhow!("config: schedule.cron: the schedule never fires again"))
}

/// Records a double opt-in request and mails the confirmation link at once (outside the
/// queue: it is one message, and the person is waiting for it).
pub async fn send_confirmation(
    pool: &PgPool,
    settings: &Settings,
    keys: &TokenKeys,
    email: &SubscriberEmail,
    name: Option<&SubscriberName>,
    asker: subscribers::Asker,
) -> anyhow::Result<ConfirmRequest> {
    let request = subscribers::request_confirmation(pool, email, name, asker).await?;
    if let ConfirmRequest::Send {
        subscriber_id,
        nonce,
        ..
    } = request
    {
        let recipient = Recipient {
            subscriber_id,
            email: email.to_string(),
            name: name.map(|n| n.to_string()),
        };
        let message = render::confirmation_message(&settings.newsletter, keys, &recipient, nonce)?;
        send_single(
            settings,
            message,
            &format!("confirm-s{subscriber_id}-{nonce}"),
        )
        .await
        .context("sending the confirmation failed")?;
        tracing::info!(subscriber_id, "confirmation sent");
    }
    Ok(request)
}

/// Sends one message outside the delivery queue (a confirmation, a test copy) through the
/// configured transport, DKIM-signed like every issue; the error says why it was not sent.
/// `name` names the file with the file transport.
async fn send_single(
    settings: &Settings,
    message: lettre::Message,
    name: &str,
) -> anyhow::Result<()> {
    let mailer = Mailer::from_settings(settings)?;
    match mailer.send(message, None, name).await {
        Outcome::Sent => Ok(()),
        Outcome::Transient(f) | Outcome::Bounced(f) | Outcome::Failed(f) => Err(anyhow!(f.reason)),
    }
}

/// A test copy sent by `issue test-send`.
#[derive(Debug)]
pub struct TestCopy {
    /// The number the next issue will have.
    pub number: i32,
    /// The address is a subscriber's, so the copy is theirs and its unsubscribe link works;
    /// otherwise its links name no subscriber and change nothing.
    pub own_copy: bool,
}

/// `issue test-send`: the next issue, as `to` would receive it, sent to `to` alone. A
/// subscriber gets the copy they would get, with their own working links; anyone else a copy
/// whose links name no subscriber (id 0) and so change nothing. Nothing is recorded.
pub async fn test_send(
    pool: &PgPool,
    settings: &Settings,
    now: DateTime<Utc>,
    to: &SubscriberEmail,
) -> anyhow::Result<Next<TestCopy>> {
    let (content, rendered) = match render_next(pool, settings, now).await? {
        Next::Issue(next) => next,
        Next::Skipped(reason) => return Ok(Next::Skipped(reason)),
    };
    let subscriber = subscribers::find(pool, to).await?;
    let recipient = match &subscriber {
        Some(row) => Recipient {
            subscriber_id: row.subscriber_id,
            email: row.email.clone(),
            name: row.name.clone(),
        },
        None => Recipient {
            subscriber_id: 0,
            email: to.to_string(),
            name: None,
        },
    };
    let message = rendered.message(&recipient)?;
    send_single(settings, message, &format!("test-issue{}", content.number))
        .await
        .with_context(|| format!("sending to {to} failed"))?;
    Ok(Next::Issue(TestCopy {
        number: content.number,
        own_copy: subscriber.is_some(),
    }))
}

/// A rendered preview.
pub struct Preview {
    /// The issue as it would go out.
    pub content: IssueContent,
    /// Rendered once.
    pub rendered: RenderedIssue,
    /// The files written: .html, .txt, .eml.
    pub files: Vec<PathBuf>,
}

/// The recipient shown in previews: no real subscriber's data lands in preview files.
pub fn sample_recipient() -> Recipient {
    Recipient {
        subscriber_id: 0,
        email: "reader@example.com".into(),
        name: Some("Sample Reader".into()),
    }
}

/// What the next slot holds: an issue, or the reason it would be skipped (no content, a
/// paused schedule…): an answer, not an error.
#[derive(Debug)]
pub enum Next<T> {
    /// The next issue.
    Issue(T),
    /// The next slot would be skipped, and why.
    Skipped(String),
}

/// The next issue (stored if its slot already has one, else as it would be composed now),
/// rendered; nothing is written.
pub async fn render_next(
    pool: &PgPool,
    settings: &Settings,
    now: DateTime<Utc>,
) -> anyhow::Result<Next<(IssueContent, RenderedIssue)>> {
    let slot = next_slot(pool, settings, now).await?;
    let content = match issues::find_by_slot(pool, slot).await? {
        Some(issue) => match stored_content(pool, &issue).await? {
            Some(c) => c,
            None => return Ok(Next::Skipped(issue.status_reason.unwrap_or_default())),
        },
        None => {
            let mut conn = pool.acquire().await?;
            match plan(&mut conn, settings, slot).await?.plan {
                Plan::Skip(reason) => return Ok(Next::Skipped(reason)),
                Plan::Compose(items) => IssueContent {
                    number: issues::next_number(&mut conn).await?,
                    slot,
                    items: items.into_iter().map(|c| c.item).collect(),
                },
            }
        }
    };
    let keys = token_keys(settings, pool).await?;
    let rendered = render::render_issue(
        &settings.newsletter,
        &keys,
        settings.schedule.cron.zone(),
        &content,
        &settings.bounces.address,
    )?;
    Ok(Next::Issue((content, rendered)))
}

/// Renders the next issue into `out` as `.html`, `.txt` and `.eml` without writing anything to
/// the database.
pub async fn preview(
    pool: &PgPool,
    settings: &Settings,
    now: DateTime<Utc>,
    out: &Path,
) -> anyhow::Result<Next<Preview>> {
    let (content, rendered) = match render_next(pool, settings, now).await? {
        Next::Issue(next) => next,
        Next::Skipped(reason) => return Ok(Next::Skipped(reason)),
    };
    let who = sample_recipient();
    crate::files::create_dir(out).with_context(|| format!("{}: cannot create", out.display()))?;
    let stem = out.join(format!("issue-{}", content.number));
    let files = vec![
        stem.with_extension("html"),
        stem.with_extension("txt"),
        stem.with_extension("eml"),
    ];
    let eml = rendered.message(&who)?.formatted();
    for (path, bytes) in files.iter().zip([
        rendered.html_for(&who).into_bytes(),
        rendered.text_for(&who).into_bytes(),
        eml,
    ]) {
        crate::files::write(path, &bytes)
            .with_context(|| format!("{}: cannot write", path.display()))?;
    }
    Ok(Next::Issue(Preview {
        content,
        rendered,
        files,
    }))
}
