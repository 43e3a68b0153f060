//! Link tokens for unsubscribe and confirmation: HMAC-SHA256 over the purpose and subscriber id,
//! with a key id so a secret can be rotated while links in old issues keep working.

use std::fmt;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use hmac::{Hmac, KeyInit, Mac};
use sha2::{Digest, Sha256};

/// What a token allows; part of the signed data, so an unsubscribe token cannot confirm.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Purpose {
    /// `/unsubscribe/{token}` and the List-Unsubscribe headers.
    Unsubscribe,
    /// `/confirm/{token}` for double opt-in.
    Confirm,
    /// The VERP return path of one delivery.
    Bounce,
    /// The Message-ID of one subscriber's copy of an issue.
    MessageId,
    /// The List-Unsubscribe mailto address (`bounces+u.<tag>@…`).
    UnsubscribeMail,
}

impl Purpose {
    fn tag(self) -> &'static [u8] {
        match self {
            Self::Unsubscribe => b"unsubscribe",
            Self::Confirm => b"confirm",
            Self::Bounce => b"bounce",
            Self::MessageId => b"message-id",
            Self::UnsubscribeMail => b"unsubscribe-mail",
        }
    }
}

/// Bytes of MAC kept in a token: 128 bits, unguessable, and a short link.
const MAC_LEN: usize = 16;
/// Bytes of MAC in a VERP tag: 96 bits keeps the local part under 64 characters.
const BOUNCE_MAC_LEN: usize = 12;
/// Secrets shorter than this are refused.
pub const MIN_SECRET_LEN: usize = 32;

/// One signing key and its public id.
#[derive(Clone)]
pub struct TokenKey {
    kid: String,
    secret: Vec<u8>,
}

impl TokenKey {
    /// A key from secret bytes; `None` when the secret is too short to be safe.
    pub fn new(secret: &[u8]) -> Option<Self> {
        if secret.len() < MIN_SECRET_LEN {
            return None;
        }
        // The id says which secret signed a token without revealing anything usable about it.
        let digest = Sha256::digest(secret);
        let kid = digest[..3].iter().map(|b| format!("{b:02x}")).collect();
        Some(Self {
            kid,
            secret: secret.to_vec(),
        })
    }

    fn mac(&self, purpose: Purpose, subscriber_id: i64, nonce: Option<i64>) -> Hmac<Sha256> {
        let mut mac = <Hmac<Sha256> as KeyInit>::new_from_slice(&self.secret)
            .expect("HMAC accepts keys of any length");
        mac.update(purpose.tag());
        mac.update(b":");
        mac.update(&subscriber_id.to_be_bytes());
        if let Some(n) = nonce {
            mac.update(b":");
            mac.update(&n.to_be_bytes());
        }
        mac
    }
}

impl fmt::Debug for TokenKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "TokenKey({}, [REDACTED])", self.kid)
    }
}

/// Lower-case hex.
fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Bytes from hex digits; `None` for anything else (multi-byte characters included).
pub(crate) fn unhex(s: &str) -> Option<Vec<u8>> {
    if !s.len().is_multiple_of(2) || !s.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).ok())
        .collect()
}

/// A positive number written the one way we write it (no sign, no leading zeros).
fn canonical(s: &str) -> Option<i64> {
    let n: i64 = s.parse().ok().filter(|&n| n > 0)?;
    (n.to_string() == s).then_some(n)
}

/// The current signing key and older ones still accepted.
#[derive(Debug, Clone)]
pub struct TokenKeys {
    current: TokenKey,
    previous: Vec<TokenKey>,
}

impl TokenKeys {
    /// Signs with `current`; verifies with it and every key in `previous`.
    pub fn new(current: TokenKey, previous: Vec<TokenKey>) -> Self {
        Self { current, previous }
    }

    /// A token for `subscriber_id`: `<key id>.<id>.<mac>`, URL-safe.
    pub fn sign(&self, purpose: Purpose, subscriber_id: i64) -> String {
        self.sign_parts(purpose, subscriber_id, None)
    }

    /// A confirmation token bound to one request: `<key id>.<id>.<nonce>.<mac>`.
    pub fn sign_confirm(&self, subscriber_id: i64, nonce: i64) -> String {
        self.sign_parts(Purpose::Confirm, subscriber_id, Some(nonce))
    }

    fn sign_parts(&self, purpose: Purpose, subscriber_id: i64, nonce: Option<i64>) -> String {
        let tag = self
            .current
            .mac(purpose, subscriber_id, nonce)
            .finalize()
            .into_bytes();
        let nonce = nonce.map(|n| format!("{n}.")).unwrap_or_default();
        format!(
            "{}.{}.{nonce}{}",
            self.current.kid,
            subscriber_id,
            URL_SAFE_NO_PAD.encode(&tag[..MAC_LEN])
        )
    }

    /// The VERP tag of one delivery, `<key id>.<issue>.<subscriber>.<mac>`: lower-case hex, so
    /// it survives mail systems that fold the case of local parts, and short enough for one.
    pub fn sign_bounce(&self, issue_id: i64, subscriber_id: i64) -> String {
        let tag = self
            .current
            .mac(Purpose::Bounce, subscriber_id, Some(issue_id))
            .finalize()
            .into_bytes();
        format!(
            "{}.{issue_id}.{subscriber_id}.{}",
            self.current.kid,
            hex(&tag[..BOUNCE_MAC_LEN])
        )
    }

    /// The tag of a subscriber's List-Unsubscribe mailto address, `u.<key id>.<subscriber>.<mac>`:
    /// lower-case hex like the VERP tag, since mail systems may fold a local part's case.
    pub fn sign_unsubscribe_mail(&self, subscriber_id: i64) -> String {
        let tag = self
            .current
            .mac(Purpose::UnsubscribeMail, subscriber_id, None)
            .finalize()
            .into_bytes();
        format!(
            "u.{}.{subscriber_id}.{}",
            self.current.kid,
            hex(&tag[..BOUNCE_MAC_LEN])
        )
    }

    /// The subscriber a genuine mailto tag names, signed by any key.
    pub fn verify_unsubscribe_mail(&self, tag: &str) -> Option<i64> {
        let tag = tag.to_ascii_lowercase();
        let parts: Vec<&str> = tag.split('.').collect();
        let ["u", kid, sub, mac] = parts.as_slice() else {
            return None;
        };
        let sub = canonical(sub)?;
        let bytes = unhex(mac).filter(|b| b.len() == BOUNCE_MAC_LEN)?;
        let key = std::iter::once(&self.current)
            .chain(&self.previous)
            .find(|k| k.kid == *kid)?;
        key.mac(Purpose::UnsubscribeMail, sub, None)
            .verify_truncated_left(&bytes)
            .ok()?;
        Some(sub)
    }

    /// The local part of the Message-ID of issue `number` as sent to `subscriber_id`:
    /// `issue<n>.s<id>.<mac>`. The same for every copy of that message (a re-send after a crash
    /// is recognisable), and unguessable, so a forged complaint cannot name someone else's.
    pub fn sign_message_id(&self, number: i32, subscriber_id: i64) -> String {
        let tag = self
            .current
            .mac(Purpose::MessageId, subscriber_id, Some(i64::from(number)))
            .finalize()
            .into_bytes();
        format!(
            "issue{number}.s{subscriber_id}.{}",
            hex(&tag[..BOUNCE_MAC_LEN])
        )
    }

    /// The (issue number, subscriber) of a genuine Message-ID local part, signed by any key.
    pub fn verify_message_id(&self, local: &str) -> Option<(i32, i64)> {
        let rest = local.to_ascii_lowercase();
        let rest = rest.strip_prefix("issue")?;
        let (number, rest) = rest.split_once(".s")?;
        let (sub, mac) = rest.split_once('.')?;
        let number: i32 = canonical(number)?.try_into().ok()?;
        let sub = canonical(sub)?;
        let bytes = unhex(mac).filter(|b| b.len() == BOUNCE_MAC_LEN)?;
        std::iter::once(&self.current)
            .chain(&self.previous)
            .find(|k| {
                k.mac(Purpose::MessageId, sub, Some(i64::from(number)))
                    .verify_truncated_left(&bytes)
                    .is_ok()
            })
            .map(|_| (number, sub))
    }

    /// The (issue, subscriber) of a genuine VERP tag.
    pub fn verify_bounce(&self, tag: &str) -> Option<(i64, i64)> {
        let tag = tag.to_ascii_lowercase();
        let parts: Vec<&str> = tag.split('.').collect();
        let [kid, issue, sub, mac] = parts.as_slice() else {
            return None;
        };
        let (issue, sub) = (canonical(issue)?, canonical(sub)?);
        let bytes = unhex(mac).filter(|b| b.len() == BOUNCE_MAC_LEN)?;
        let key = std::iter::once(&self.current)
            .chain(&self.previous)
            .find(|k| k.kid == *kid)?;
        key.mac(Purpose::Bounce, sub, Some(issue))
            .verify_truncated_left(&bytes)
            .ok()?;
        Some((issue, sub))
    }

    /// The subscriber id a genuine token names; `None` for anything forged, altered,
    /// truncated or signed with an unknown key. The MAC comparison is constant-time.
    pub fn verify(&self, purpose: Purpose, token: &str) -> Option<i64> {
        self.verify_parts(purpose, token, false).map(|(id, _)| id)
    }

    /// The subscriber id and request nonce of a genuine confirmation token.
    pub fn verify_confirm(&self, token: &str) -> Option<(i64, i64)> {
        self.verify_parts(Purpose::Confirm, token, true)
            .and_then(|(id, n)| Some((id, n?)))
    }

    fn verify_parts(
        &self,
        purpose: Purpose,
        token: &str,
        with_nonce: bool,
    ) -> Option<(i64, Option<i64>)> {
        let parts: Vec<&str> = token.split('.').collect();
        let (kid, id, nonce, tag) = match (with_nonce, parts.as_slice()) {
            (false, [kid, id, tag]) => (*kid, *id, None, *tag),
            (true, [kid, id, nonce, tag]) => (*kid, *id, Some(*nonce), *tag),
            _ => return None,
        };
        let number = |s: &str| -> Option<i64> {
            let n: i64 = s.parse().ok().filter(|&n| n > 0)?;
            // "+5" or "05" would otherwise alias a valid number.
            (n.to_string() == s).then_some(n)
        };
        let id = number(id)?;
        let nonce = match nonce {
            Some(n) => Some(number(n)?),
            None => None,
        };
        let tag = URL_SAFE_NO_PAD.decode(tag).ok()?;
        if tag.len() != MAC_LEN {
            return None;
        }
        let key = std::iter::once(&self.current)
            .chain(&self.previous)
            .find(|k| k.kid == kid)?;
        key.mac(purpose, id, nonce)
            .verify_truncated_left(&tag)
            .ok()?;
        Some((id, nonce))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn keys() -> TokenKeys {
        TokenKeys::new(TokenKey::new(&[7u8; 32]).unwrap(), vec![])
    }

    #[test]
    fn a_token_round_trips_for_its_purpose_only() {
        let k = keys();
        let t = k.sign(Purpose::Unsubscribe, 42);
        assert_eq!(k.verify(Purpose::Unsubscribe, &t), Some(42));
        let id = k.sign_message_id(3, 42);
        assert!(
            id.starts_with("issue3.s42.") && id.len() == "issue3.s42.".len() + 24,
            "{id}"
        );
        assert_eq!(k.verify_message_id(&id), Some((3, 42)));
        assert_eq!(k.verify_message_id(&id.replace(".s42.", ".s43.")), None);
        assert_eq!(
            k.verify_message_id("issue3.s42"),
            None,
            "the guessable old form"
        );
        // Multi-byte characters where hex digits belong are refused, never sliced.
        let tag = k.sign_bounce(3, 42);
        let (head, mac) = tag.rsplit_once('.').unwrap();
        let multibyte = format!("{head}.é{}", &mac[2..]);
        assert_eq!(multibyte.len(), tag.len());
        assert_eq!(k.verify_bounce(&multibyte), None);
        assert_eq!(
            k.verify_message_id(&format!("issue3.s42.é{}", &mac[2..])),
            None
        );
        assert_eq!(k.verify(Purpose::Confirm, &t), None);
    }

    #[test]
    fn altered_truncated_and_forged_tokens_fail() {
        let k = keys();
        let t = k.sign(Purpose::Unsubscribe, 42);
        let mut flipped = t.clone().into_bytes();
        let last = flipped.len() - 1;
        flipped[last] = if flipped[last] == b'A' { b'B' } else { b'A' };
        let flipped = String::from_utf8(flipped).unwrap();
        for bad in [
            flipped.as_str(),
            &t[..t.len() - 1],
            "",
            "...",
            &t.replace(".42.", ".43."),
            &t.replace(".42.", ".042."),
        ] {
            assert_eq!(k.verify(Purpose::Unsubscribe, bad), None, "{bad}");
        }
        let other = TokenKeys::new(TokenKey::new(&[8u8; 32]).unwrap(), vec![]);
        assert_eq!(other.verify(Purpose::Unsubscribe, &t), None);
    }

    #[test]
    fn confirmation_tokens_carry_their_nonce() {
        let k = keys();
        let t = k.sign_confirm(5, 77);
        assert_eq!(k.verify_confirm(&t), Some((5, 77)));
        assert_eq!(k.verify_confirm(&t.replace(".77.", ".78.")), None);
        assert_eq!(k.verify(Purpose::Confirm, &t), None);
        assert_eq!(k.verify_confirm(&k.sign(Purpose::Unsubscribe, 5)), None);
    }

    #[test]
    fn bounce_tags_verify_in_any_letter_case_and_reject_forgeries() {
        let k = keys();
        let t = k.sign_bounce(3, 41);
        assert_eq!(k.verify_bounce(&t), Some((3, 41)));
        assert_eq!(k.verify_bounce(&t.to_ascii_uppercase()), Some((3, 41)));
        assert_eq!(k.verify_bounce(&t.replace(".41.", ".42.")), None);
        let forged = format!("{}0", &t[..t.len() - 1]);
        assert!(forged == t || k.verify_bounce(&forged).is_none());
        assert!(format!("bounces+{t}").len() <= 64, "fits a local part");
    }

    #[test]
    fn old_keys_keep_verifying_after_rotation() {
        let old = TokenKey::new(&[1u8; 40]).unwrap();
        let t = TokenKeys::new(old.clone(), vec![]).sign(Purpose::Unsubscribe, 9);
        let rotated = TokenKeys::new(TokenKey::new(&[2u8; 40]).unwrap(), vec![old]);
        assert_eq!(rotated.verify(Purpose::Unsubscribe, &t), Some(9));
        assert!(TokenKey::new(b"short").is_none());
        assert!(!format!("{rotated:?}").contains("[1, 1"));
    }
}
