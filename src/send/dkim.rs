//! DKIM signing (rsa-sha256, optionally also ed25519-sha256, relaxed/relaxed) over every
//! header RFC 8058 and the mailbox providers want signed, List-Unsubscribe and Content-Type
//! included; and the DNS records to publish.
//!
//! Why not lettre's DKIM: it signs the message's header map before serialisation, where a
//! multipart message has no Content-Type yet, so a signature over Content-Type never verifies.
//! This module signs the serialised bytes, exactly what the receiver sees. RSA signatures are
//! ring's (twice as fast as the `rsa` crate's, which only reads the PEM file and derives
//! the public key here), Ed25519 ones `ed25519-dalek`'s; dkimpy checks both in tests.

use std::path::Path;

use anyhow::{Context, anyhow};
use base64::Engine;
use ed25519_dalek::Signer as _;
use lettre::Message;
use rsa::pkcs1::{DecodeRsaPrivateKey, EncodeRsaPrivateKey};
use rsa::pkcs8::EncodePublicKey;
use sha2::{Digest, Sha256};

use crate::config::DkimSettings;

/// Headers covered by the signature, in this order, and whether each is over-signed. lettre's
/// default set leaves out the List-* headers, which RFC 8058 requires to be signed for
/// one-click unsubscribe. An over-signed name is listed once more than the message has it
/// (RFC 6376 §5.4.2), which signs its absence: a From, Subject, Reply-To or List-Unsubscribe
/// added in transit (where a client might show the added one) breaks the signature. Reply-To
/// is listed even when the message has none, for the same reason. So are MIME-Version and
/// Content-Type: a Content-Type added on top of a signed copy, which a client reading the
/// first one honours, would show the message as its source or hide a part.
const SIGNED: [(&str, bool); 11] = [
    ("From", true),
    ("Reply-To", true),
    ("To", false),
    ("Subject", true),
    ("Date", false),
    ("Message-ID", false),
    ("List-Id", false),
    ("List-Unsubscribe", true),
    ("List-Unsubscribe-Post", true),
    ("MIME-Version", true),
    ("Content-Type", true),
];

enum Key {
    Rsa(Box<ring::signature::RsaKeyPair>),
    Ed25519(Box<ed25519_dalek::SigningKey>),
}

struct SigningKey {
    selector: String,
    key: Key,
}

/// Signs messages; holds the private keys, so its Debug output shows nothing of them.
pub struct Signer {
    domain: String,
    /// ring asks for one; PKCS#1 v1.5 padding never draws from it.
    rng: ring::rand::SystemRandom,
    keys: Vec<SigningKey>,
    /// The TXT records to publish, for `doctor`.
    records: Vec<(String, String)>,
}

impl std::fmt::Debug for Signer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Signer([REDACTED])")
    }
}

fn read_key(path: &Path, what: &str) -> anyhow::Result<String> {
    // The error names the file; the contents never appear in a message.
    std::fs::read_to_string(path)
        .with_context(|| format!("{what}: {}: cannot read the key", path.display()))
}

impl Signer {
    /// Loads the keys when `dkim.enabled`; a key that cannot be read or parsed fails here,
    /// at start-up, naming the file.
    pub fn load(d: &DkimSettings) -> anyhow::Result<Option<Self>> {
        if !d.enabled {
            return Ok(None);
        }
        let b64 = base64::engine::general_purpose::STANDARD;
        let pem = read_key(&d.key_file, "dkim.key_file")?;
        let rsa_key = rsa::RsaPrivateKey::from_pkcs1_pem(&pem).map_err(|_| {
            anyhow!(
                "dkim.key_file: {}: not a PKCS#1 RSA private key (make one with `openssl genrsa -traditional 2048`)",
                d.key_file.display()
            )
        })?;
        let public = rsa_key.to_public_key().to_public_key_der().map_err(|_| {
            anyhow!(
                "dkim.key_file: {}: cannot derive the public key",
                d.key_file.display()
            )
        })?;
        // ring signs with the same key; it refuses keys under 2048 bits, as RFC 8301 advises.
        let signing = rsa_key
            .to_pkcs1_der()
            .ok()
            .and_then(|der| ring::signature::RsaKeyPair::from_der(der.as_bytes()).ok())
            .ok_or_else(|| {
                anyhow!(
                    "dkim.key_file: {}: cannot sign with this key (use an RSA key of 2048 to 4096 bits)",
                    d.key_file.display()
                )
            })?;
        let mut records = vec![(
            format!("{}._domainkey.{}", d.selector, d.domain),
            format!("v=DKIM1; k=rsa; p={}", b64.encode(public.as_bytes())),
        )];
        let mut keys = Vec::new();
        if let Some(path) = &d.ed25519_key_file {
            let seed = read_key(path, "dkim.ed25519_key_file")?;
            let bytes: [u8; 32] = b64
                .decode(seed.trim())
                .ok()
                .and_then(|b| b.try_into().ok())
                .ok_or_else(|| {
                    anyhow!(
                        "dkim.ed25519_key_file: {}: not the base64 of a 32-byte Ed25519 seed",
                        path.display()
                    )
                })?;
            let key = ed25519_dalek::SigningKey::from_bytes(&bytes);
            records.push((
                format!("{}._domainkey.{}", d.ed25519_selector, d.domain),
                format!(
                    "v=DKIM1; k=ed25519; p={}",
                    b64.encode(key.verifying_key().as_bytes())
                ),
            ));
            keys.push(SigningKey {
                selector: d.ed25519_selector.clone(),
                key: Key::Ed25519(Box::new(key)),
            });
        }
        keys.push(SigningKey {
            selector: d.selector.clone(),
            key: Key::Rsa(Box::new(signing)),
        });
        Ok(Some(Self {
            domain: d.domain.clone(),
            rng: ring::rand::SystemRandom::new(),
            keys,
            records,
        }))
    }

    /// The DNS TXT records to publish: (name, value).
    pub fn dns_records(&self) -> &[(String, String)] {
        &self.records
    }

    /// Serialises the message and puts one DKIM-Signature header per key on top.
    pub fn sign(&self, message: Message) -> Vec<u8> {
        let raw = message.formatted();
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        let (head, body) = split(&raw);
        let mut hasher = Sha256::new();
        relaxed_body(body, |piece| hasher.update(piece));
        let body_hash = base64::engine::general_purpose::STANDARD.encode(hasher.finalize());
        let fields = header_fields(head);
        let mut canonical = String::new();
        let mut names = Vec::new();
        for (name, oversign) in SIGNED {
            // Verifiers take same-named fields from the bottom up, one per listing.
            let mut instances = fields
                .iter()
                .rev()
                .filter(|(n, _)| n.eq_ignore_ascii_case(name));
            let signed: Vec<_> = if oversign {
                instances.collect()
            } else {
                instances.next().into_iter().collect()
            };
            for value in signed {
                push_relaxed_header(&mut canonical, &value.0, &value.1);
                canonical.push_str("\r\n");
                names.push(name.to_ascii_lowercase());
            }
            if oversign {
                names.push(name.to_ascii_lowercase());
            }
        }
        let mut out = Vec::with_capacity(raw.len() + 1024);
        for key in &self.keys {
            let algorithm = match key.key {
                Key::Rsa(_) => "rsa-sha256",
                Key::Ed25519(_) => "ed25519-sha256",
            };
            let unsigned = format!(
                "v=1; a={algorithm}; c=relaxed/relaxed; d={}; s={}; t={now}; h={}; bh={body_hash}; b=",
                self.domain,
                key.selector,
                names.join(":")
            );
            let mut hashed = canonical.clone();
            push_relaxed_header(&mut hashed, "DKIM-Signature", &unsigned);
            let signature = match &key.key {
                Key::Rsa(k) => {
                    let mut signature = vec![0; k.public().modulus_len()];
                    // Cannot fail for a key ring accepted and a buffer of its modulus length;
                    // an empty signature would just not verify.
                    match k.sign(
                        &ring::signature::RSA_PKCS1_SHA256,
                        &self.rng,
                        hashed.as_bytes(),
                        &mut signature,
                    ) {
                        Ok(()) => signature,
                        Err(_) => Vec::new(),
                    }
                }
                Key::Ed25519(k) => k
                    .sign(&Sha256::digest(hashed.as_bytes()))
                    .to_bytes()
                    .to_vec(),
            };
            let b = base64::engine::general_purpose::STANDARD.encode(signature);
            out.extend_from_slice(fold(&format!("DKIM-Signature: {unsigned}{b}")).as_bytes());
        }
        out.extend_from_slice(&raw);
        out
    }
}

/// Splits a serialised message at the blank line.
fn split(raw: &[u8]) -> (&[u8], &[u8]) {
    match raw.windows(4).position(|w| w == b"\r\n\r\n") {
        Some(i) => (&raw[..i + 2], &raw[i + 4..]),
        None => (raw, &[]),
    }
}

/// The header fields as (name, value with its folding), in order.
fn header_fields(head: &[u8]) -> Vec<(String, String)> {
    let text = String::from_utf8_lossy(head);
    let mut fields: Vec<(String, String)> = Vec::new();
    for line in text.split("\r\n") {
        if line.starts_with(' ') || line.starts_with('\t') {
            if let Some(last) = fields.last_mut() {
                last.1.push_str("\r\n");
                last.1.push_str(line);
            }
        } else if let Some((name, value)) = line.split_once(':') {
            fields.push((name.to_owned(), value.to_owned()));
        }
    }
    fields
}

/// RFC 6376 §3.4.2, appended to `out`: lower-case name, unfolded value, runs of white space
/// as one space, none at either end.
fn push_relaxed_header(out: &mut String, name: &str, value: &str) {
    out.extend(name.trim().chars().map(|c| c.to_ascii_lowercase()));
    out.push(':');
    let unfolded = value.replace("\r\n", "");
    let mut words = unfolded.split([' ', '\t']).filter(|w| !w.is_empty());
    if let Some(first) = words.next() {
        out.push_str(first);
        for w in words {
            out.push(' ');
            out.push_str(w);
        }
    }
}

/// RFC 6376 §3.4.4, handed to `put` a line at a time (the body hash never needs the whole
/// canonical body): no white space at line ends, runs of it as one space, no empty lines at
/// the end, and a final CRLF. Octets, not text: lines end at CRLF only, and whatever else is
/// in a line passes through as it is.
fn relaxed_body(body: &[u8], mut put: impl FnMut(&[u8])) {
    let mut line = Vec::with_capacity(128);
    // Empty lines seen and not yet handed on: only a non-empty line after them does.
    let mut blank = 0usize;
    let mut rest = body;
    loop {
        // Only CRLF ends a line; a lone LF or CR is part of it.
        let (raw, next) = match memchr::memmem::find(rest, b"\r\n") {
            Some(i) => (&rest[..i], Some(&rest[i + 2..])),
            None => (rest, None),
        };
        line.clear();
        let mut in_space = false;
        for &b in raw {
            if b == b' ' || b == b'\t' {
                in_space = true;
            } else {
                if in_space {
                    line.push(b' ');
                    in_space = false;
                }
                line.push(b);
            }
        }
        if line.is_empty() {
            blank += 1;
        } else {
            for _ in 0..blank {
                put(b"\r\n");
            }
            blank = 0;
            line.extend_from_slice(b"\r\n");
            put(&line);
        }
        match next {
            Some(n) => rest = n,
            None => break,
        }
    }
}

/// Folds a long header line after `;` so no line exceeds 998 octets (the b= value stays whole
/// or is split at 76 characters, which relaxed canonicalisation ignores).
fn fold(line: &str) -> String {
    let mut out = String::new();
    for (i, part) in line.split("; ").enumerate() {
        if i > 0 {
            out.push_str(";\r\n ");
        }
        if part.len() > 76 && part.starts_with("b=") {
            let chunks: Vec<&str> = part
                .as_bytes()
                .chunks(76)
                .map(|c| std::str::from_utf8(c).unwrap_or(""))
                .collect();
            out.push_str(&chunks.join("\r\n "));
        } else {
            out.push_str(part);
        }
    }
    out.push_str("\r\n");
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn body(raw: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        relaxed_body(raw, |piece| out.extend_from_slice(piece));
        out
    }

    fn header(name: &str, value: &str) -> String {
        let mut out = String::new();
        push_relaxed_header(&mut out, name, value);
        out
    }

    #[test]
    fn relaxed_canonicalisation_follows_rfc_6376() {
        assert_eq!(
            header("Subject", " Hello \r\n  world\t "),
            "subject:Hello world"
        );
        assert_eq!(body(b"a  b \r\n\r\nc\r\n\r\n\r\n"), b"a b\r\n\r\nc\r\n");
        // RFC 6376 §3.4.4: a body without a final CRLF gets one; an empty one stays empty.
        assert_eq!(body(b"x"), b"x\r\n");
        assert_eq!(body(b""), b"");
        assert_eq!(body(b" \r\n\t\r\n"), b"");
    }

    /// The canonicalisation this module had before it streamed (whole strings at a time;
    /// dkimpy verified it): the streaming one must agree with it on any ASCII body, which is
    /// every body digestif sends (7bit, quoted-printable or base64).
    fn relaxed_body_before(body: &[u8]) -> Vec<u8> {
        let text = String::from_utf8_lossy(body);
        let mut lines: Vec<String> = text
            .split("\r\n")
            .map(|l| {
                let mut out = String::with_capacity(l.len());
                let mut in_space = false;
                for c in l.chars() {
                    if c == ' ' || c == '\t' {
                        in_space = true;
                    } else {
                        if in_space {
                            out.push(' ');
                            in_space = false;
                        }
                        out.push(c);
                    }
                }
                out
            })
            .collect();
        while lines.last().is_some_and(String::is_empty) {
            lines.pop();
        }
        let mut out = Vec::with_capacity(body.len());
        for l in lines {
            out.extend_from_slice(l.as_bytes());
            out.extend_from_slice(b"\r\n");
        }
        out
    }

    #[test]
    fn streaming_body_canonicalisation_agrees_with_the_one_before() {
        let pieces: [&[u8]; 10] = [
            b"a", b"word", b" ", b"  ", b"\t", b"\r\n", b"\r", b"\n", b"=20", b".",
        ];
        let mut rng = fastrand::Rng::with_seed(16);
        for _ in 0..5_000 {
            let raw: Vec<u8> = (0..rng.usize(0..40))
                .flat_map(|_| pieces[rng.usize(0..pieces.len())].iter().copied())
                .collect();
            assert_eq!(
                body(&raw),
                relaxed_body_before(&raw),
                "{:?}",
                String::from_utf8_lossy(&raw)
            );
        }
    }

    #[test]
    fn folding_keeps_lines_short() {
        let long = format!("DKIM-Signature: v=1; a=rsa-sha256; b={}", "A".repeat(400));
        assert!(
            fold(&long)
                .lines()
                .all(|l| l.len() <= 998 && l.len() <= 100)
        );
    }
}
