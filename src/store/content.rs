//! SQL for the content store: `tip` and `article`.

use chrono::{DateTime, Utc};
use sqlx::PgPool;

use crate::domain::{NewArticle, NewTip};

/// A tip as stored.
#[derive(Debug, Clone, sqlx::FromRow, serde::Serialize)]
pub struct TipRow {
    pub tip_id: i64,
    /// One-line title.
    pub title: String,
    /// Markdown body.
    pub body: String,
    /// Theme tags.
    pub tags: Vec<String>,
    /// Where the idea came from.
    pub source_url: Option<String>,
    /// False once retired.
    pub active: bool,
    /// How many issues carried it.
    pub times_sent: i32,
    /// When it was last sent.
    pub last_sent_at: Option<DateTime<Utc>>,
    pub created_at: DateTime<Utc>,
}

/// An article as stored.
#[derive(Debug, Clone, sqlx::FromRow, serde::Serialize)]
pub struct ArticleRow {
    pub article_id: i64,
    /// One-line title.
    pub title: String,
    /// http(s) link.
    pub url: String,
    /// Short summary.
    pub summary: String,
    pub author: Option<String>,
    pub published_at: DateTime<Utc>,
    pub created_at: DateTime<Utc>,
    /// The number of the issue it went out in.
    pub sent_in: Option<i32>,
    /// The number of the issue that considered it, picked or left out (`None` for none yet,
    /// and for a skipped slot).
    pub considered_by: Option<i32>,
    /// Whether an issue (or a skipped slot) has considered it: an article no issue has
    /// considered is still to come, unless it is dated before the next issue's window.
    pub considered: bool,
}

/// Stores a tip; `None` when a tip with the same title (any letter case) is already stored, so
/// importing the same folder twice adds nothing.
pub async fn insert_tip<'e, E>(conn: E, tip: &NewTip) -> sqlx::Result<Option<i64>>
where
    E: sqlx::Executor<'e, Database = sqlx::Postgres>,
{
    sqlx::query_scalar(
        "INSERT INTO tip (title, body, tags, source_url) VALUES ($1, $2, $3, $4) \
         ON CONFLICT DO NOTHING RETURNING tip_id",
    )
    .bind(tip.title.as_str())
    .bind(tip.body.as_str())
    .bind(&tip.tags)
    .bind(tip.source_url.as_ref().map(|u| u.as_str()))
    .fetch_optional(conn)
    .await
}

/// Tips in id order; retired ones only when `include_retired`.
pub async fn list_tips(pool: &PgPool, include_retired: bool) -> sqlx::Result<Vec<TipRow>> {
    sqlx::query_as(
        "SELECT tip_id, title, body, tags, source_url, active, times_sent, last_sent_at, \
         created_at FROM tip WHERE active OR $1 ORDER BY tip_id",
    )
    .bind(include_retired)
    .fetch_all(pool)
    .await
}

/// Retires a tip so rotation never picks it again; false when there is no such tip.
pub async fn retire_tip(pool: &PgPool, tip_id: i64) -> sqlx::Result<bool> {
    let n = sqlx::query("UPDATE tip SET active = false WHERE tip_id = $1")
        .bind(tip_id)
        .execute(pool)
        .await?
        .rows_affected();
    Ok(n == 1)
}

/// Stores an article; `None` when its URL is already stored.
pub async fn insert_article<'e, E>(conn: E, article: &NewArticle) -> sqlx::Result<Option<i64>>
where
    E: sqlx::Executor<'e, Database = sqlx::Postgres>,
{
    sqlx::query_scalar(
        "INSERT INTO article (title, url, summary, author, published_at) \
         VALUES ($1, $2, $3, $4, $5) ON CONFLICT DO NOTHING RETURNING article_id",
    )
    .bind(article.title.as_str())
    .bind(article.url.as_str())
    .bind(&article.summary)
    .bind(article.author.as_deref())
    .bind(article.published_at)
    .fetch_optional(conn)
    .await
}

/// Articles, newest first.
pub async fn list_articles(pool: &PgPool) -> sqlx::Result<Vec<ArticleRow>> {
    sqlx::query_as(
        "SELECT a.article_id, a.title, a.url, a.summary, a.author, a.published_at, a.created_at, \
                (SELECT min(i.number) FROM issue_item ii JOIN issue i USING (issue_id) \
                 WHERE ii.article_id = a.article_id) AS sent_in, \
                ci.number AS considered_by, c.article_id IS NOT NULL AS considered \
         FROM article a \
         LEFT JOIN article_considered c ON c.article_id = a.article_id \
         LEFT JOIN issue ci ON ci.issue_id = c.issue_id \
         ORDER BY a.published_at DESC, a.article_id DESC",
    )
    .fetch_all(pool)
    .await
}

/// A tip or an article ready to store: what [`insert_all`] takes.
pub trait NewContent: Sync {
    /// Stores it; `None` when it is already stored.
    fn insert(
        &self,
        conn: &mut sqlx::PgConnection,
    ) -> impl Future<Output = sqlx::Result<Option<i64>>> + Send;
}

impl NewContent for NewTip {
    fn insert(
        &self,
        conn: &mut sqlx::PgConnection,
    ) -> impl Future<Output = sqlx::Result<Option<i64>>> + Send {
        insert_tip(conn, self)
    }
}

impl NewContent for NewArticle {
    fn insert(
        &self,
        conn: &mut sqlx::PgConnection,
    ) -> impl Future<Output = sqlx::Result<Option<i64>>> + Send {
        insert_article(conn, self)
    }
}

/// Stores every item in one transaction, so an import is all or nothing; returns how many were
/// new (the rest were stored already).
pub async fn insert_all<T: NewContent>(pool: &PgPool, items: &[T]) -> sqlx::Result<usize> {
    let mut tx = pool.begin().await?;
    let mut added = 0;
    for item in items {
        if item.insert(&mut tx).await?.is_some() {
            added += 1;
        }
    }
    tx.commit().await?;
    Ok(added)
}
