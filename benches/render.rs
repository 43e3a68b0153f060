//! Per-message render cost (criterion): what each delivery pays on top of the once-per-issue
//! rendering — filling in the greeting and unsubscribe link, building the lettre message,
//! serialising it, and DKIM-signing it when that is on.

use std::hint::black_box;

use chrono::{DateTime, Utc};
use criterion::{Criterion, criterion_group, criterion_main};
use digestif::config::Settings;
use digestif::domain::{TokenKey, TokenKeys};
use digestif::render::{self, IssueContent, Item, ItemKind, Recipient};
use digestif::send::dkim::Signer;

fn content() -> IssueContent {
    let at = |s: &str| {
        DateTime::parse_from_rfc3339(s)
            .map(|t| t.with_timezone(&Utc))
            .ok()
    };
    let tip = |t: &str| Item {
        kind: ItemKind::Tip,
        title: t.into(),
        body: "Pick a library you call every day and read its **core module**. You will find \
               bugs, idioms and [design notes](https://example.com/notes).\n\n- one\n- two\n\n\
               Use `git log -p` on the file you read."
            .repeat(2),
        url: Some("https://example.org/source".into()),
        author: None,
        published_at: None,
    };
    let mut items = vec![tip("First tip"), tip("Second tip"), tip("Third tip")];
    for i in 0..5 {
        items.push(Item {
            kind: ItemKind::Article,
            title: format!("Article {i}"),
            body: "A one-sentence summary of why this article is worth reading.".into(),
            url: Some(format!("https://example.com/articles/{i}")),
            author: Some("Ann Author".into()),
            published_at: at("2026-11-20T08:30:00Z"),
        });
    }
    IssueContent {
        number: 12,
        slot: at("2026-11-30T08:00:00Z").unwrap_or_default(),
        items,
    }
}

fn bench(c: &mut Criterion) {
    let settings = Settings::from_toml(&format!(
        "[dkim]\nenabled = true\nkey_file = \"{}/tests/fixtures/dkim-test-rsa.pem\"\n",
        env!("CARGO_MANIFEST_DIR")
    ))
    .expect("settings");
    let keys = TokenKeys::new(TokenKey::new(&[7u8; 32]).expect("key"), vec![]);
    let content = content();
    let zone = settings.schedule.cron.zone();
    let rendered = render::render_issue(
        &settings.newsletter,
        &keys,
        zone,
        &content,
        &settings.bounces.address,
    )
    .expect("render");
    let signer = Signer::load(&settings.dkim)
        .expect("dkim")
        .expect("enabled");
    let who = Recipient {
        subscriber_id: 4242,
        email: "reader@example.org".into(),
        name: Some("Ada Reader".into()),
    };

    c.bench_function("render issue (once per issue)", |b| {
        b.iter(|| {
            render::render_issue(
                &settings.newsletter,
                &keys,
                zone,
                black_box(&content),
                &settings.bounces.address,
            )
        })
    });
    c.bench_function("message per subscriber (DKIM off)", |b| {
        b.iter(|| rendered.message(black_box(&who)).map(|m| m.formatted()))
    });
    c.bench_function("message per subscriber (DKIM rsa-sha256)", |b| {
        b.iter(|| rendered.message(black_box(&who)).map(|m| signer.sign(m)))
    });
    // The signature alone, over a message of one short line: the denominator of issue 16's
    // signing bound (cores ÷ this), without the canonicalisation of a whole issue.
    let tiny = lettre::Message::builder()
        .from("a@example.com".parse().expect("from"))
        .to("b@example.org".parse().expect("to"))
        .subject("x")
        .body("x".to_owned())
        .expect("message");
    c.bench_function("one RSA-2048 signature (one-line message)", |b| {
        b.iter(|| signer.sign(black_box(tiny.clone())))
    });
}

criterion_group!(benches, bench);
criterion_main!(benches);
