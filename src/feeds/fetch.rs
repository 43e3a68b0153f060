//! Fetching a feed over HTTP, safely: http(s) only; every address a name resolves to, and
//! every address in a URL, must be public unless `feeds.allow_private` (no reaching the
//! database, the metadata service or the admin pages behind the firewall through a feed URL,
//! redirects included); at most 5 redirects, each checked again; a time limit for the whole
//! request and a cap on the (decompressed) body; conditional GET with the stored ETag and
//! Last-Modified, so an unchanged feed costs a 304; `Retry-After` reported back.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use reqwest::header::{self, HeaderMap};
use url::Url;

/// Redirects followed at most (issue 19: five).
pub const MAX_REDIRECTS: usize = 5;

/// What the last fetch told us about the feed, sent back so the server can answer 304.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Validators {
    pub etag: Option<String>,
    pub last_modified: Option<String>,
}

/// A fetch that worked.
#[derive(Debug)]
pub enum Fetched {
    /// 304: nothing changed since the validators were given.
    NotModified,
    /// The feed's bytes, the URL they came from after redirects, and its new validators.
    Body {
        bytes: Vec<u8>,
        url: Url,
        validators: Validators,
    },
}

/// Why a fetch failed, each in one line (stored with the feed and shown in `feeds list`).
#[derive(Debug, thiserror::Error)]
pub enum FetchError {
    #[error("{0}: only http and https feeds are fetched")]
    NotHttp(String),
    #[error(
        "{0}: a private, loopback or link-local address; set feeds.allow_private = true to fetch it"
    )]
    Private(String),
    #[error("more than {MAX_REDIRECTS} redirects")]
    TooManyRedirects,
    #[error("a redirect without a usable Location")]
    BadRedirect,
    #[error("answered {status}")]
    Status {
        status: u16,
        /// What the server asked for with `Retry-After`.
        retry_after: Option<Duration>,
    },
    #[error("larger than feeds.max_bytes ({0} bytes)")]
    TooLarge(usize),
    #[error("no answer within {0:?}")]
    Timeout(Duration),
    #[error("{0}")]
    Http(String),
}

/// Whether `ip` is one digestif may fetch from without `feeds.allow_private`: not loopback,
/// private (RFC 1918, unique local), link-local or site-local, CGNAT, unspecified, multicast,
/// documentation, benchmarking, reserved or broadcast. An IPv6 address that carries an IPv4
/// one (mapped, IPv4-compatible, NAT64's well-known prefix, 6to4) is judged by that IPv4
/// address: on a host behind DNS64/NAT64, `64:ff9b::a00:5` reaches 10.0.0.5. Local NAT64
/// prefixes and Teredo, whose IPv4 end cannot be read off, are refused.
pub fn is_public(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => {
            let [a, b, c, _] = v4.octets();
            !(v4.is_loopback()
                || v4.is_private()
                || v4.is_link_local()
                || v4.is_unspecified()
                || v4.is_multicast()
                || v4.is_broadcast()
                || v4.is_documentation()
                || a == 0
                || a >= 240
                || (a == 100 && (64..128).contains(&b))
                || (a == 198 && (18..20).contains(&b))
                // IETF protocol assignments; 192.0.2.0/24 is documentation. The rest of
                // 192.0.0.0/16 is public (WordPress.com's sites are in 192.0.78.0/24).
                || (a == 192 && b == 0 && c == 0))
        }
        IpAddr::V6(v6) => {
            let seg = v6.segments();
            let octets = v6.octets();
            let embedded = |at: usize| {
                std::net::Ipv4Addr::new(octets[at], octets[at + 1], octets[at + 2], octets[at + 3])
            };
            if let Some(v4) = v6.to_ipv4_mapped() {
                return is_public(IpAddr::V4(v4));
            }
            // IPv4-compatible (::a.b.c.d, deprecated) and NAT64's well-known 64:ff9b::/96.
            if seg[..6] == [0; 6] && !v6.is_loopback() && !v6.is_unspecified()
                || seg[..6] == [0x64, 0xff9b, 0, 0, 0, 0]
            {
                return is_public(IpAddr::V4(embedded(12)));
            }
            // 6to4: 2002:AABB:CCDD::/48 is the IPv4 host AA.BB.CC.DD.
            if seg[0] == 0x2002 {
                return is_public(IpAddr::V4(embedded(2)));
            }
            let first = seg[0];
            !(v6.is_loopback()
                || v6.is_unspecified()
                || v6.is_multicast()
                || (first & 0xfe00) == 0xfc00
                || (first & 0xffc0) == 0xfe80
                || (first & 0xffc0) == 0xfec0
                || first == 0x64 && seg[1] == 0xff9b
                || first == 0x2001 && seg[1] == 0
                || first == 0x2001 && seg[1] == 0x0db8)
        }
    }
}

/// The resolver every connection goes through: it refuses names that resolve to a non-public
/// address, and the addresses it checked are the ones connected to (no second lookup that a
/// hostile DNS server could answer differently).
struct PublicOnly;

impl reqwest::dns::Resolve for PublicOnly {
    fn resolve(&self, name: reqwest::dns::Name) -> reqwest::dns::Resolving {
        Box::pin(async move {
            let host = name.as_str().to_owned();
            let addrs: Vec<SocketAddr> =
                tokio::net::lookup_host((host.as_str(), 0)).await?.collect();
            if let Some(bad) = addrs.iter().find(|a| !is_public(a.ip())) {
                return Err(format!(
                    "{host} resolves to {}: a private, loopback or link-local address; set feeds.allow_private = true to fetch it",
                    bad.ip()
                )
                .into());
            }
            Ok(Box::new(addrs.into_iter()) as reqwest::dns::Addrs)
        })
    }
}

/// Fetches feeds; one per process (it keeps connections for the feeds of one host).
pub struct Fetcher {
    client: reqwest::Client,
    timeout: Duration,
    max_bytes: usize,
    allow_private: bool,
}

impl Fetcher {
    /// `user_agent` names digestif and the newsletter (`newsletter.base_url`), so a feed's
    /// owner can see who fetches it.
    pub fn new(
        timeout: Duration,
        max_bytes: usize,
        allow_private: bool,
        user_agent: &str,
    ) -> anyhow::Result<Self> {
        let _ = rustls::crypto::ring::default_provider().install_default();
        let mut builder = reqwest::Client::builder()
            .user_agent(user_agent)
            .connect_timeout(timeout)
            .timeout(timeout)
            // Redirects are followed by hand, each target checked like the first URL.
            .redirect(reqwest::redirect::Policy::none())
            // A proxy would resolve names itself, past the address check.
            .no_proxy();
        if !allow_private {
            builder = builder.dns_resolver(Arc::new(PublicOnly));
        }
        Ok(Self {
            client: builder.build()?,
            timeout,
            max_bytes,
            allow_private,
        })
    }

    /// GETs the feed at `url`, following at most [`MAX_REDIRECTS`] redirects.
    pub async fn get(&self, url: &Url, validators: &Validators) -> Result<Fetched, FetchError> {
        // `feeds.timeout` is for the whole fetch: each redirect gets what is left of it, or
        // six hops of a slow server would take six times as long.
        let deadline = tokio::time::Instant::now() + self.timeout;
        let mut url = url.clone();
        for _ in 0..=MAX_REDIRECTS {
            self.check(&url)?;
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            if left.is_zero() {
                return Err(FetchError::Timeout(self.timeout));
            }
            let mut request = self.client.get(url.clone()).timeout(left);
            if let Some(etag) = &validators.etag {
                request = request.header(header::IF_NONE_MATCH, etag);
            }
            if let Some(since) = &validators.last_modified {
                request = request.header(header::IF_MODIFIED_SINCE, since);
            }
            let mut response = request.send().await.map_err(|e| self.error(&e))?;
            let status = response.status();
            if status.is_redirection() && status != reqwest::StatusCode::NOT_MODIFIED {
                let next = response
                    .headers()
                    .get(header::LOCATION)
                    .and_then(|l| l.to_str().ok())
                    .and_then(|l| url.join(l).ok())
                    .ok_or(FetchError::BadRedirect)?;
                url = next;
                continue;
            }
            if status == reqwest::StatusCode::NOT_MODIFIED {
                return Ok(Fetched::NotModified);
            }
            if !status.is_success() {
                return Err(FetchError::Status {
                    status: status.as_u16(),
                    retry_after: retry_after(response.headers()),
                });
            }
            let validators = Validators {
                etag: text(response.headers(), header::ETAG),
                last_modified: text(response.headers(), header::LAST_MODIFIED),
            };
            let mut bytes = Vec::new();
            while let Some(chunk) = response.chunk().await.map_err(|e| self.error(&e))? {
                if bytes.len() + chunk.len() > self.max_bytes {
                    return Err(FetchError::TooLarge(self.max_bytes));
                }
                bytes.extend_from_slice(&chunk);
            }
            return Ok(Fetched::Body {
                bytes,
                url,
                validators,
            });
        }
        Err(FetchError::TooManyRedirects)
    }

    /// The scheme, and an address written in the URL itself (which no resolver sees).
    fn check(&self, url: &Url) -> Result<(), FetchError> {
        if !matches!(url.scheme(), "http" | "https") {
            return Err(FetchError::NotHttp(url.as_str().to_owned()));
        }
        let ip = match url.host() {
            Some(url::Host::Ipv4(ip)) => Some(IpAddr::V4(ip)),
            Some(url::Host::Ipv6(ip)) => Some(IpAddr::V6(ip)),
            _ => None,
        };
        match ip {
            Some(ip) if !self.allow_private && !is_public(ip) => {
                Err(FetchError::Private(url.as_str().to_owned()))
            }
            _ => Ok(()),
        }
    }

    fn error(&self, e: &reqwest::Error) -> FetchError {
        if e.is_timeout() {
            return FetchError::Timeout(self.timeout);
        }
        FetchError::Http(crate::domain::one_line(&crate::fetch::reason(e)))
    }
}

fn text(headers: &HeaderMap, name: header::HeaderName) -> Option<String> {
    headers
        .get(name)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned)
}

/// `Retry-After` in seconds or as an HTTP date, capped at a week.
fn retry_after(headers: &HeaderMap) -> Option<Duration> {
    let value = headers.get(header::RETRY_AFTER)?.to_str().ok()?.trim();
    let wait = match value.parse::<u64>() {
        Ok(secs) => Duration::from_secs(secs),
        Err(_) => {
            let at = chrono::DateTime::parse_from_rfc2822(value).ok()?;
            (at.to_utc() - chrono::Utc::now())
                .to_std()
                .unwrap_or_default()
        }
    };
    Some(wait.min(Duration::from_secs(7 * 86400)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_public_addresses_pass() {
        for private in [
            "127.0.0.1",
            "10.1.2.3",
            "172.16.0.1",
            "192.168.1.1",
            "169.254.169.254",
            "100.64.0.1",
            "0.0.0.0",
            "::1",
            "fd00::1",
            "fe80::1",
            "::ffff:127.0.0.1",
            // Addresses that reach an IPv4 host by another road, or ranges never public.
            "64:ff9b::a00:5",
            "64:ff9b:1::1",
            "2002:0a00:0005::1",
            "::10.0.0.5",
            "fec0::1",
            "2001:0:4136:e378:8000:63bf:3fff:fdd2",
            "198.18.0.1",
            "240.0.0.1",
            "192.0.0.9",
        ] {
            assert!(!is_public(private.parse().unwrap()), "{private}");
        }
        for public in [
            "93.184.216.34",
            "1.1.1.1",
            "2606:4700:4700::1111",
            // A NAT64 or 6to4 address of a public IPv4 host is public.
            "64:ff9b::5db8:d822",
            "2002:5db8:d822::1",
            "192.0.78.9",
        ] {
            assert!(is_public(public.parse().unwrap()), "{public}");
        }
    }
}
