//! Consent: double opt-in (confirmation requests and confirmations), unsubscribes by link and
//! complaints, each recorded with its evidence.

use sqlx::PgPool;

use super::{COLUMNS, SUPPRESSION_KEY, SubscriberRow, find, is_erased, record_event};
use crate::domain::{EventKind, SubscriberEmail, SubscriberName, SubscriberStatus};

/// What a confirmation request leads to.
#[derive(Debug)]
pub enum ConfirmRequest {
    /// Send a confirmation email with this nonce.
    Send {
        subscriber_id: i64,
        /// Bound into the link; a newer request makes older links useless.
        nonce: i64,
        /// Where they stand until they click: `pending`, or (invited back by the operator)
        /// still `unsubscribed`.
        status: SubscriberStatus,
    },
    /// Already receiving the digest: nothing to confirm.
    AlreadyActive,
    /// Suppressed after bounces or a complaint: never mailed again from a form.
    Suppressed(SubscriberStatus),
    /// Erased on request and `allow_erased` was not given.
    Erased,
    /// The form asked for this address within `http.signup_resend_after`: one mail is enough.
    AskedRecently,
}

/// Who asks for a confirmation mail, which decides what may be mailed.
#[derive(Debug, Clone, Copy)]
pub enum Asker {
    /// The operator (`subscribers add --confirm`): may invite an address that unsubscribed,
    /// and one erased on request with `allow_erased`.
    Operator {
        /// The person asked to come back after an erasure.
        allow_erased: bool,
    },
    /// The public sign-up form, which anyone can fill in with anyone's address: never mails
    /// an address that unsubscribed (or bounced, or complained), and mails one address at most
    /// once per `resend_after`. An erased address may come back: its owner must click.
    Form {
        /// How long one address's confirmation mail stands before another may go.
        resend_after: std::time::Duration,
    },
}

impl Asker {
    /// Kept as consent evidence.
    pub fn method(self) -> &'static str {
        match self {
            Asker::Operator { .. } => "cli",
            Asker::Form { .. } => "web",
        }
    }
}

/// Records a double opt-in request: a new address becomes `pending`; a pending one (or, for
/// the operator, an unsubscribed one) gets a fresh nonce (an unsubscribed subscriber stays
/// unsubscribed until they click).
pub async fn request_confirmation(
    pool: &PgPool,
    email: &SubscriberEmail,
    name: Option<&SubscriberName>,
    asker: Asker,
) -> sqlx::Result<ConfirmRequest> {
    let method = asker.method();
    let mut tx = pool.begin().await?;
    let nonce = fastrand::i64(1..i64::MAX);
    let existing = find(&mut *tx, email).await?;
    let (id, status) = match (existing, asker) {
        (Some(row), _) if row.status == SubscriberStatus::Active => {
            return Ok(ConfirmRequest::AlreadyActive);
        }
        (Some(row), Asker::Form { resend_after }) if row.status == SubscriberStatus::Pending => {
            let recent: bool = sqlx::query_scalar(
                "SELECT coalesce(confirm_sent_at > now() - $2 * interval '1 second', false) \
                 FROM subscriber WHERE subscriber_id = $1 FOR UPDATE",
            )
            .bind(row.subscriber_id)
            .bind(resend_after.as_secs_f64())
            .fetch_one(&mut *tx)
            .await?;
            if recent {
                return Ok(ConfirmRequest::AskedRecently);
            }
            (row.subscriber_id, row.status)
        }
        (Some(row), Asker::Operator { .. })
            if matches!(
                row.status,
                SubscriberStatus::Pending | SubscriberStatus::Unsubscribed
            ) =>
        {
            (row.subscriber_id, row.status)
        }
        (Some(row), _) => return Ok(ConfirmRequest::Suppressed(row.status)),
        (None, _) => {
            let allow_erased = match asker {
                Asker::Operator { allow_erased } => allow_erased,
                Asker::Form { .. } => true,
            };
            if is_erased(&mut tx, email).await? && !allow_erased {
                return Ok(ConfirmRequest::Erased);
            }
            let id: Option<i64> = sqlx::query_scalar(
                "INSERT INTO subscriber (email, name, status, consent_source) \
                 VALUES ($1, $2, 'pending', $3) ON CONFLICT DO NOTHING RETURNING subscriber_id",
            )
            .bind(email.as_str())
            .bind(name.map(SubscriberName::as_str))
            .bind(method)
            .fetch_optional(&mut *tx)
            .await?;
            // A concurrent request for the same address won: treat it as pending.
            match id {
                Some(id) => {
                    record_event(
                        &mut tx,
                        id,
                        EventKind::Subscribed,
                        method,
                        Some("pending confirmation"),
                    )
                    .await?;
                    (id, SubscriberStatus::Pending)
                }
                None => return Ok(ConfirmRequest::AlreadyActive),
            }
        }
    };
    // The newest request's name goes with its link, the only one that works: a stranger's
    // earlier sign-up does not name the owner who signs up after. The operator's request
    // without a name keeps the one stored.
    sqlx::query(
        "UPDATE subscriber SET confirm_nonce = $2, confirm_sent_at = now(), \
                name = CASE WHEN $3 THEN $4 ELSE coalesce($4, name) END \
         WHERE subscriber_id = $1",
    )
    .bind(id)
    .bind(nonce)
    .bind(matches!(asker, Asker::Form { .. }))
    .bind(name.map(SubscriberName::as_str))
    .execute(&mut *tx)
    .await?;
    record_event(&mut tx, id, EventKind::ConfirmationSent, method, None).await?;
    tx.commit().await?;
    Ok(ConfirmRequest::Send {
        subscriber_id: id,
        nonce,
        status,
    })
}

/// What a click on a confirmation link did.
#[derive(Debug, PartialEq, Eq)]
pub enum Confirmation {
    /// Now active.
    Confirmed,
    /// The link was used already, superseded, or predates an unsubscribe: nothing changed.
    Stale,
}

/// The stored name of a subscriber whose outstanding confirmation is `nonce` (`None`: the
/// link was used or replaced).
pub async fn pending_name(
    pool: &PgPool,
    subscriber_id: i64,
    nonce: i64,
) -> sqlx::Result<Option<Option<String>>> {
    sqlx::query_scalar(
        "SELECT name FROM subscriber WHERE subscriber_id = $1 AND confirm_nonce = $2",
    )
    .bind(subscriber_id)
    .bind(nonce)
    .fetch_optional(pool)
    .await
}

/// Confirms a double opt-in when `nonce` is the outstanding one and the request is newer than
/// any unsubscribe; records the consent evidence (`detail`: e.g. the client address). `name`:
/// `Some` is the name the person confirmed with (`Some(None)`: none), `None` keeps the stored.
pub async fn confirm(
    pool: &PgPool,
    subscriber_id: i64,
    nonce: i64,
    name: Option<Option<&SubscriberName>>,
    method: &str,
    detail: Option<&str>,
) -> sqlx::Result<Confirmation> {
    let mut tx = pool.begin().await?;
    let was: Option<(String, String)> = sqlx::query_as(
        "WITH old AS (SELECT subscriber_id, status FROM subscriber WHERE subscriber_id = $1 \
                      FOR UPDATE) \
         UPDATE subscriber s SET status = 'active', confirmed_at = now(), consent_at = now(), \
                unsubscribed_at = NULL, confirm_nonce = NULL, confirm_sent_at = NULL, \
                name = CASE WHEN $3 THEN $4 ELSE s.name END \
         FROM old WHERE s.subscriber_id = old.subscriber_id AND s.confirm_nonce = $2 \
           AND (s.status = 'pending' OR (s.status = 'unsubscribed' \
                AND s.confirm_sent_at > coalesce(s.unsubscribed_at, '-infinity'))) \
         RETURNING old.status, s.email",
    )
    .bind(subscriber_id)
    .bind(nonce)
    .bind(name.is_some())
    .bind(name.flatten().map(SubscriberName::as_str))
    .fetch_optional(&mut *tx)
    .await?;
    let Some((old_status, email)) = was else {
        return Ok(Confirmation::Stale);
    };
    let kind = if old_status == "unsubscribed" {
        EventKind::Resubscribed
    } else {
        EventKind::Confirmed
    };
    record_event(&mut tx, subscriber_id, kind, method, detail).await?;
    // Confirmed by the person themselves: an earlier erasure no longer blocks the address.
    sqlx::query(sqlx::AssertSqlSafe(format!(
        "DELETE FROM suppression WHERE email_sha256 = {SUPPRESSION_KEY}"
    )))
    .bind(email)
    .execute(&mut *tx)
    .await?;
    tx.commit().await?;
    Ok(Confirmation::Confirmed)
}

/// The subscriber a link points at, if they still exist.
pub async fn by_id(pool: &PgPool, subscriber_id: i64) -> sqlx::Result<Option<SubscriberRow>> {
    sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "SELECT {COLUMNS} FROM subscriber WHERE subscriber_id = $1"
    )))
    .bind(subscriber_id)
    .fetch_optional(pool)
    .await
}

/// Unsubscribes through a link (`one-click` or `page`); repeating it changes nothing.
/// Returns false when there is no such subscriber.
pub async fn unsubscribe_by_link(
    pool: &PgPool,
    subscriber_id: i64,
    method: &str,
) -> sqlx::Result<bool> {
    let mut tx = pool.begin().await?;
    let exists: Option<String> =
        sqlx::query_scalar("SELECT status FROM subscriber WHERE subscriber_id = $1 FOR UPDATE")
            .bind(subscriber_id)
            .fetch_optional(&mut *tx)
            .await?;
    let Some(status) = exists else {
        return Ok(false);
    };
    if matches!(status.as_str(), "active" | "pending") {
        sqlx::query(
            "UPDATE subscriber SET status = 'unsubscribed', unsubscribed_at = now(), \
             confirm_nonce = NULL WHERE subscriber_id = $1",
        )
        .bind(subscriber_id)
        .execute(&mut *tx)
        .await?;
        record_event(
            &mut tx,
            subscriber_id,
            EventKind::Unsubscribed,
            method,
            None,
        )
        .await?;
    }
    tx.commit().await?;
    Ok(true)
}

/// Records a spam complaint (an ARF report): the subscriber is unsubscribed and suppressed
/// (status `complained`), once.
pub async fn record_complaint(
    pool: &PgPool,
    subscriber_id: i64,
    detail: &str,
) -> sqlx::Result<bool> {
    let mut tx = pool.begin().await?;
    let changed = sqlx::query(
        "UPDATE subscriber SET status = 'complained', unsubscribed_at = coalesce(unsubscribed_at, now()) \
         WHERE subscriber_id = $1 AND status <> 'complained'",
    )
    .bind(subscriber_id)
    .execute(&mut *tx)
    .await?
    .rows_affected();
    if changed == 1 {
        record_event(
            &mut tx,
            subscriber_id,
            EventKind::Complained,
            "complaint",
            Some(detail),
        )
        .await?;
    }
    tx.commit().await?;
    Ok(changed == 1)
}
