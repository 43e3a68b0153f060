//! Who is asking: the client address (behind `http.trusted_proxies` only), the key sign-up
//! limits count it under, the per-client sign-up limiter, and the same-origin check of the form.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv6Addr, SocketAddr};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use axum::extract::{ConnectInfo, FromRequestParts};
use axum::http::HeaderMap;
use axum::http::request::Parts;
use ipnet::IpNet;

use super::AppState;

/// The client's address: the TCP peer, or, when the peer is a trusted proxy, the address that
/// the proxies' `Forwarded` (else `X-Forwarded-For`) names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ClientIp(pub IpAddr);

impl FromRequestParts<AppState> for ClientIp {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(
        parts: &mut Parts,
        app: &AppState,
    ) -> Result<Self, Self::Rejection> {
        // Set by `Server` on every request; a router driven without it (not done) counts as
        // one anonymous client rather than failing.
        let peer = parts
            .extensions
            .get::<ConnectInfo<SocketAddr>>()
            .map_or(IpAddr::from([0, 0, 0, 0]), |c| c.0.ip());
        Ok(ClientIp(client_ip(
            peer,
            &parts.headers,
            &app.settings.http.trusted_proxies,
        )))
    }
}

/// Connections open per client, so that one client cannot take every slot of
/// `http.max_connections` (a few hundred keep-alive connections from one host, each asking
/// something now and then, would hold them all). A client is a [`limit_key`] of the TCP
/// peer. A trusted proxy, which carries everyone's requests, is not limited, nor is a loopback
/// peer: a reverse proxy on this host (the usual set-up) connecting over 127.0.0.1 or ::1 may
/// keep many connections open, and whoever runs there is trusted anyway.
pub struct PerClient {
    limit: u32,
    trusted: Vec<IpNet>,
    open: Mutex<HashMap<IpAddr, u32>>,
}

/// One connection counted by [`PerClient::admit`], for as long as it is kept.
pub struct Admitted {
    counted: Option<(std::sync::Arc<PerClient>, IpAddr)>,
}

impl PerClient {
    pub fn new(limit: u32, trusted: Vec<IpNet>) -> std::sync::Arc<Self> {
        std::sync::Arc::new(Self {
            limit,
            trusted,
            open: Mutex::new(HashMap::new()),
        })
    }

    /// Counts a new connection from `peer`; `None` when that client has `limit` open already.
    pub fn admit(self: &std::sync::Arc<Self>, peer: IpAddr) -> Option<Admitted> {
        let peer = canonical(peer);
        if peer.is_loopback() || is_trusted(&self.trusted, peer) {
            return Some(Admitted { counted: None });
        }
        let key = limit_key(peer);
        let mut open = self.open.lock().unwrap_or_else(|e| e.into_inner());
        let n = open.entry(key).or_default();
        if *n >= self.limit {
            return None;
        }
        *n += 1;
        Some(Admitted {
            counted: Some((self.clone(), key)),
        })
    }
}

impl Drop for Admitted {
    fn drop(&mut self) {
        if let Some((per_client, key)) = self.counted.take() {
            let mut open = per_client.open.lock().unwrap_or_else(|e| e.into_inner());
            if let Some(n) = open.get_mut(&key) {
                *n = n.saturating_sub(1);
                if *n == 0 {
                    open.remove(&key);
                }
            }
        }
    }
}

/// Walks the forwarding chain from our side: each hop we trust vouches for the one before it;
/// the first hop we do not trust is the client. What a client writes into the headers itself
/// sits further left and is never reached unless every hop after it is trusted.
pub fn client_ip(peer: IpAddr, headers: &HeaderMap, trusted: &[IpNet]) -> IpAddr {
    let peer = canonical(peer);
    if !is_trusted(trusted, peer) {
        return peer;
    }
    let forwarded = forwarded_for(headers);
    let chain = if forwarded.is_empty() {
        x_forwarded_for(headers)
    } else {
        forwarded
    };
    let mut client = peer;
    for hop in chain.iter().rev() {
        if !is_trusted(trusted, client) {
            break;
        }
        match parse_node(hop) {
            Some(ip) => client = canonical(ip),
            None => break,
        }
    }
    client
}

/// Whether `ip` is one of the trusted proxies.
fn is_trusted(trusted: &[IpNet], ip: IpAddr) -> bool {
    trusted.iter().any(|net| net.contains(&ip))
}

/// What sign-up limits count under: an IPv4 address, or an IPv6 address's /64, since one
/// host or household gets a whole /64 and could otherwise take a fresh address per request.
pub fn limit_key(ip: IpAddr) -> IpAddr {
    match canonical(ip) {
        IpAddr::V6(v6) => {
            let mut seg = v6.segments();
            seg[4..].fill(0);
            IpAddr::V6(Ipv6Addr::from(seg))
        }
        v4 => v4,
    }
}

fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
    }
}

/// The `for=` values of every `Forwarded` header (RFC 7239), in order.
fn forwarded_for(headers: &HeaderMap) -> Vec<String> {
    headers
        .get_all("forwarded")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|element| {
            element.split(';').find_map(|pair| {
                let (k, v) = pair.split_once('=')?;
                k.trim()
                    .eq_ignore_ascii_case("for")
                    .then(|| v.trim().trim_matches('"').to_owned())
            })
        })
        .collect()
}

fn x_forwarded_for(headers: &HeaderMap) -> Vec<String> {
    headers
        .get_all("x-forwarded-for")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(|s| s.trim().to_owned())
        .collect()
}

/// `192.0.2.1`, `192.0.2.1:4711`, `[2001:db8::1]:4711` or `2001:db8::1`; anything else
/// (`unknown`, obfuscated names) is not an address.
fn parse_node(node: &str) -> Option<IpAddr> {
    if let Ok(ip) = node.parse() {
        return Some(ip);
    }
    if let Ok(sa) = node.parse::<SocketAddr>() {
        return Some(sa.ip());
    }
    node.strip_prefix('[')
        .and_then(|rest| rest.split(']').next())
        .and_then(|inner| inner.parse().ok())
}

/// Whether a browser posted the form from one of our pages. A browser always sends `Origin`
/// with a POST (`null` from sandboxed or privacy-stripped contexts, which we refuse); a
/// request without it comes from a non-browser client, which could forge any header anyway,
/// so the per-client and per-address limits are what hold it back.
pub fn same_origin(headers: &HeaderMap, ours: &str, also: &[String]) -> bool {
    match headers.get("origin").map(|v| v.to_str()) {
        None => true,
        Some(Ok(origin)) => {
            let origin = origin.trim().trim_end_matches('/');
            origin.eq_ignore_ascii_case(ours) || also.iter().any(|o| origin.eq_ignore_ascii_case(o))
        }
        Some(Err(_)) => false,
    }
}

/// Per-client limit on sign-up requests, counted under [`limit_key`].
#[derive(Debug)]
pub struct SignupLimiter {
    per_hour: u32,
    seen: Mutex<HashMap<IpAddr, (Instant, u32)>>,
}

impl SignupLimiter {
    /// `per_hour` requests per client per hour.
    pub fn new(per_hour: u32) -> Self {
        Self {
            per_hour,
            seen: Mutex::new(HashMap::new()),
        }
    }

    /// Counts a request from `ip`; false when it is over the limit.
    pub fn allow(&self, ip: IpAddr) -> bool {
        let Ok(mut seen) = self.seen.lock() else {
            return false;
        };
        let now = Instant::now();
        if seen.len() > 100_000 {
            seen.retain(|_, (start, _)| now.duration_since(*start) < Duration::from_secs(3600));
        }
        let entry = seen.entry(limit_key(ip)).or_insert((now, 0));
        if now.duration_since(entry.0) >= Duration::from_secs(3600) {
            *entry = (now, 0);
        }
        entry.1 += 1;
        entry.1 <= self.per_hour
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(*k, v.parse().unwrap());
        }
        h
    }

    fn nets(list: &[&str]) -> Vec<IpNet> {
        list.iter().map(|n| n.parse().unwrap()).collect()
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn an_untrusted_peer_is_the_client_whatever_it_claims() {
        let h = headers(&[
            ("x-forwarded-for", "203.0.113.9"),
            ("forwarded", "for=198.51.100.1"),
        ]);
        assert_eq!(
            client_ip(ip("192.0.2.7"), &h, &nets(&["10.0.0.0/8"])),
            ip("192.0.2.7")
        );
        assert_eq!(client_ip(ip("192.0.2.7"), &h, &[]), ip("192.0.2.7"));
    }

    #[test]
    fn a_trusted_proxy_names_the_client_and_a_forged_entry_to_its_left_is_ignored() {
        let trusted = nets(&["10.0.0.0/8"]);
        let h = headers(&[("x-forwarded-for", "6.6.6.6, 203.0.113.9, 10.1.1.1")]);
        assert_eq!(client_ip(ip("10.0.0.1"), &h, &trusted), ip("203.0.113.9"));
    }

    #[test]
    fn forwarded_wins_over_x_forwarded_for_and_ports_and_brackets_are_understood() {
        let trusted = nets(&["127.0.0.1/32"]);
        let h = headers(&[
            ("x-forwarded-for", "198.51.100.1"),
            ("forwarded", "for=\"[2001:db8::1]:4711\";proto=https"),
        ]);
        assert_eq!(client_ip(ip("127.0.0.1"), &h, &trusted), ip("2001:db8::1"));
        let h = headers(&[("forwarded", "for=192.0.2.60:80;by=203.0.113.43")]);
        assert_eq!(client_ip(ip("127.0.0.1"), &h, &trusted), ip("192.0.2.60"));
    }

    #[test]
    fn garbage_in_the_chain_stops_at_the_last_trusted_hop() {
        let trusted = nets(&["127.0.0.1/32"]);
        let h = headers(&[("x-forwarded-for", "unknown")]);
        assert_eq!(client_ip(ip("127.0.0.1"), &h, &trusted), ip("127.0.0.1"));
    }

    #[test]
    fn ipv6_clients_count_by_their_slash_64_and_mapped_v4_as_v4() {
        assert_eq!(limit_key(ip("2001:db8:1:2:aaaa::1")), ip("2001:db8:1:2::"));
        assert_eq!(limit_key(ip("2001:db8:1:2:bbbb::9")), ip("2001:db8:1:2::"));
        assert_ne!(limit_key(ip("2001:db8:1:3::1")), ip("2001:db8:1:2::"));
        assert_eq!(limit_key(ip("::ffff:192.0.2.1")), ip("192.0.2.1"));
    }

    #[test]
    fn the_form_may_come_only_from_our_origins() {
        let ours = "https://news.example.com";
        let also = vec!["https://www.example.com".to_owned()];
        assert!(same_origin(&headers(&[]), ours, &also));
        assert!(same_origin(
            &headers(&[("origin", "https://news.example.com")]),
            ours,
            &also
        ));
        assert!(same_origin(
            &headers(&[("origin", "https://www.example.com")]),
            ours,
            &also
        ));
        assert!(!same_origin(
            &headers(&[("origin", "https://evil.example")]),
            ours,
            &also
        ));
        assert!(!same_origin(&headers(&[("origin", "null")]), ours, &also));
        assert!(!same_origin(
            &headers(&[("origin", "http://news.example.com")]),
            ours,
            &also
        ));
    }
}
