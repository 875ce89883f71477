//! Where a request came from: the client's address, as the layer reads it for keys with an
//! [`AllowedIps`](crate::policy::AllowedIps).
//!
//! The address comes from the connection, which the server, not the request, knows. Each
//! stack hands it to the request in its own extension, and the layer reads the first it finds:
//!
//! | stack | how it provides the address |
//! | --- | --- |
//! | any (a hand-built hyper or tower stack) | a [`ClientAddr`] extension you insert per connection |
//! | axum (feature `axum`) | `axum::extract::ConnectInfo<SocketAddr>`: serve with `into_make_service_with_connect_info::<SocketAddr>()` |
//! | tonic (feature `tonic`) | `tonic::transport::server::TcpConnectInfo`, which tonic's `Server` inserts (plain TCP; with TLS, insert a [`ClientAddr`]) |
//!
//! Behind reverse proxies the connection's address is the proxy's. Name the proxies with
//! [`ApiKeyLayerBuilder::trusted_proxies`](crate::ApiKeyLayerBuilder::trusted_proxies): when
//! the connection comes from one of them, the client's address is the rightmost
//! `X-Forwarded-For` entry that is not a trusted proxy. Without trusted proxies,
//! `X-Forwarded-For` is ignored: any client can write it.
//!
//! A key with an allowlist, on a stack that provides no address, is refused (fail closed),
//! and the layer logs a warning once.
//!
//! ```
//! use std::net::{IpAddr, Ipv4Addr};
//! use tower_api_key::ClientAddr;
//!
//! // In a hand-built stack, per connection (e.g. with tower-http's `AddExtensionLayer`):
//! let mut request = http::Request::new(());
//! request
//!     .extensions_mut()
//!     .insert(ClientAddr(IpAddr::V4(Ipv4Addr::new(203, 0, 113, 9))));
//! ```

use std::net::IpAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use http::{Extensions, HeaderMap, HeaderName};

use crate::policy::Cidr;

/// The address of the client a request came from, as a request extension: what a stack
/// without one of the layer's known connection extensions inserts per connection. Takes
/// precedence over the others.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ClientAddr(pub IpAddr);

/// `X-Forwarded-For`: the addresses a request passed through, the client's first, each
/// proxy appending the address it received the request from.
static X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");

/// Most `X-Forwarded-For` entries read from the right before giving up (no address).
const MAX_HOPS: usize = 32;

/// How the layer finds a request's client address: from the connection, and through the
/// proxies it trusts.
#[derive(Debug, Default)]
pub(crate) struct AddressSource {
    trusted_proxies: Option<Arc<[Cidr]>>,
    /// Whether a request without an address was named in a warning.
    warned: AtomicBool,
}

impl AddressSource {
    /// Reads `X-Forwarded-For` when the connection comes from one of `proxies`; with none,
    /// never.
    pub(crate) fn trusting(proxies: impl IntoIterator<Item = Cidr>) -> Self {
        let proxies: Arc<[Cidr]> = proxies.into_iter().collect();
        Self {
            trusted_proxies: (!proxies.is_empty()).then_some(proxies),
            warned: AtomicBool::new(false),
        }
    }

    /// The client's address, or `None` if the stack provides none, or if a trusted proxy's
    /// `X-Forwarded-For` is unreadable (not ASCII, an entry that is not an address, more
    /// than 32 entries to read).
    /// The first request without one logs a warning (once per layer): the stack, or its
    /// proxies, need fixing.
    pub(crate) fn client(&self, headers: &HeaderMap, extensions: &Extensions) -> Option<IpAddr> {
        let client = connection_address(extensions).and_then(|peer| {
            let peer = peer.to_canonical();
            match &self.trusted_proxies {
                Some(proxies) => through_proxies(peer, headers, proxies),
                None => Some(peer),
            }
        });
        if client.is_none() && !self.warned.swap(true, Ordering::Relaxed) {
            tracing::warn!(
                "a key with allowed addresses was refused: the request carries no client \
                 address (see tower_api_key::client_addr for how each stack provides one) \
                 or an X-Forwarded-For from a trusted proxy that can't be read"
            );
        }
        client
    }
}

/// The connection's remote address, from the first extension that holds one.
fn connection_address(extensions: &Extensions) -> Option<IpAddr> {
    if let Some(ClientAddr(address)) = extensions.get::<ClientAddr>() {
        return Some(*address);
    }
    #[cfg(feature = "axum")]
    if let Some(info) = extensions.get::<axum::extract::ConnectInfo<std::net::SocketAddr>>() {
        return Some(info.0.ip());
    }
    #[cfg(feature = "tonic")]
    if let Some(address) = extensions
        .get::<tonic::transport::server::TcpConnectInfo>()
        .and_then(tonic::transport::server::TcpConnectInfo::remote_addr)
    {
        return Some(address.ip());
    }
    None
}

/// The rightmost address that is not a trusted proxy: `peer` if it isn't one, else the
/// `X-Forwarded-For` entries read from the right (the last header line first). If every
/// entry is a trusted proxy, the leftmost.
fn through_proxies(peer: IpAddr, headers: &HeaderMap, proxies: &[Cidr]) -> Option<IpAddr> {
    let trusted = |address: IpAddr| proxies.iter().any(|proxy| proxy.contains(address));
    if !trusted(peer) {
        return Some(peer);
    }
    let mut client = peer;
    let mut hops = 0;
    for line in headers.get_all(&X_FORWARDED_FOR).iter().rev() {
        let line = line.to_str().ok()?;
        for entry in line.rsplit(',') {
            let entry = entry.trim_matches([' ', '\t']);
            if entry.is_empty() {
                continue; // "a, , b" or a trailing comma: nothing was appended
            }
            hops += 1;
            if hops > MAX_HOPS {
                return None;
            }
            client = forwarded_address(entry)?.to_canonical();
            if !trusted(client) {
                return Some(client);
            }
        }
    }
    Some(client)
}

/// One `X-Forwarded-For` entry: an address, with or without a port (`203.0.113.9:4711`,
/// `[2001:db8::1]:4711`, `[2001:db8::1]`).
fn forwarded_address(entry: &str) -> Option<IpAddr> {
    if let Ok(address) = entry.parse::<IpAddr>() {
        return Some(address);
    }
    if let Some(rest) = entry.strip_prefix('[') {
        let (address, tail) = rest.split_once(']')?;
        let port_ok = tail.is_empty() || tail.strip_prefix(':').is_some_and(is_port);
        if !port_ok {
            return None;
        }
        return address.parse::<std::net::Ipv6Addr>().ok().map(IpAddr::V6);
    }
    let (address, port) = entry.rsplit_once(':')?;
    if !is_port(port) {
        return None;
    }
    address.parse::<std::net::Ipv4Addr>().ok().map(IpAddr::V4)
}

/// A port number, 1 to 65535, in digits only.
fn is_port(text: &str) -> bool {
    text.bytes().all(|b| b.is_ascii_digit()) && text.parse::<u16>().is_ok_and(|port| port > 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(text: &str) -> IpAddr {
        text.parse().expect("an address")
    }

    fn source(proxies: &[&str]) -> AddressSource {
        AddressSource::trusting(proxies.iter().map(|p| p.parse::<Cidr>().expect("a block")))
    }

    fn from(peer: &str, forwarded: &[&str]) -> (HeaderMap, Extensions) {
        let mut headers = HeaderMap::new();
        for line in forwarded {
            headers.append(&X_FORWARDED_FOR, line.parse().expect("a header value"));
        }
        let mut extensions = Extensions::new();
        extensions.insert(ClientAddr(ip(peer)));
        (headers, extensions)
    }

    #[test]
    fn without_trusted_proxies_forwarded_for_is_ignored() {
        let (headers, extensions) = from("198.51.100.1", &["203.0.113.9"]);
        assert_eq!(
            source(&[]).client(&headers, &extensions),
            Some(ip("198.51.100.1"))
        );
    }

    #[test]
    fn no_connection_address_is_no_address() {
        assert_eq!(
            source(&[]).client(&HeaderMap::new(), &Extensions::new()),
            None
        );
    }

    #[test]
    fn a_peer_that_is_not_a_trusted_proxy_is_the_client() {
        let (headers, extensions) = from("198.51.100.1", &["203.0.113.9"]);
        assert_eq!(
            source(&["10.0.0.0/8"]).client(&headers, &extensions),
            Some(ip("198.51.100.1"))
        );
    }

    #[test]
    fn the_rightmost_untrusted_entry_is_the_client() {
        let proxies = source(&["10.0.0.0/8", "2001:db8:ffff::/48"]);
        // A client's own forged entry on the left is passed over.
        let (headers, extensions) = from("10.0.0.1", &["192.0.2.66, 203.0.113.9, 10.0.0.7"]);
        assert_eq!(
            proxies.client(&headers, &extensions),
            Some(ip("203.0.113.9"))
        );
        // Several header lines read as one list, the last line last.
        let (headers, extensions) = from("10.0.0.1", &["192.0.2.66", "203.0.113.9, 10.0.0.7"]);
        assert_eq!(
            proxies.client(&headers, &extensions),
            Some(ip("203.0.113.9"))
        );
        let (headers, extensions) = from("10.0.0.1", &["203.0.113.9", "10.0.0.7"]);
        assert_eq!(
            proxies.client(&headers, &extensions),
            Some(ip("203.0.113.9"))
        );
        // Ports and brackets, and IPv4-mapped peers.
        let (headers, extensions) = from("::ffff:10.0.0.1", &["[2001:db8::9]:4711"]);
        assert_eq!(
            proxies.client(&headers, &extensions),
            Some(ip("2001:db8::9"))
        );
        let (headers, extensions) = from("10.0.0.1", &["203.0.113.9:4711,"]);
        assert_eq!(
            proxies.client(&headers, &extensions),
            Some(ip("203.0.113.9"))
        );
    }

    #[test]
    fn all_trusted_is_the_leftmost_and_none_forwarded_is_the_proxy() {
        let proxies = source(&["10.0.0.0/8"]);
        let (headers, extensions) = from("10.0.0.1", &["10.1.1.1, 10.2.2.2"]);
        assert_eq!(proxies.client(&headers, &extensions), Some(ip("10.1.1.1")));
        let (headers, extensions) = from("10.0.0.1", &[]);
        assert_eq!(proxies.client(&headers, &extensions), Some(ip("10.0.0.1")));
    }

    #[test]
    fn an_unreadable_forwarded_for_through_a_trusted_proxy_is_no_address() {
        let proxies = source(&["10.0.0.0/8"]);
        for bad in [
            "unknown",
            "203.0.113.9:port",
            "[2001:db8::1",
            "203.0.113.9:123456",
            "203.0.113.9:99999",
            "203.0.113.9:0",
            "203.0.113.9:+80",
            "[2001:db8::1]:70000",
        ] {
            let (headers, extensions) = from("10.0.0.1", &[bad]);
            assert_eq!(proxies.client(&headers, &extensions), None, "{bad:?}");
        }
        // Empty entries are not hops: a value with many commas still reads.
        let commas = format!("203.0.113.9{}", ",".repeat(4 * MAX_HOPS));
        let (headers, extensions) = from("10.0.0.1", &[&commas]);
        assert_eq!(
            proxies.client(&headers, &extensions),
            Some(ip("203.0.113.9"))
        );
        let long = vec!["10.9.9.9"; MAX_HOPS + 1].join(", ");
        let (headers, extensions) = from("10.0.0.1", &[&long]);
        assert_eq!(proxies.client(&headers, &extensions), None);
        let mut headers = HeaderMap::new();
        headers.insert(
            &X_FORWARDED_FOR,
            http::HeaderValue::from_bytes(b"203.0.113.9\xff").expect("opaque bytes"),
        );
        let (_, extensions) = from("10.0.0.1", &[]);
        assert_eq!(proxies.client(&headers, &extensions), None);
        // The entry beyond an untrusted one is never read.
        let (headers, extensions) = from("10.0.0.1", &["garbage, 203.0.113.9"]);
        assert_eq!(
            proxies.client(&headers, &extensions),
            Some(ip("203.0.113.9"))
        );
    }
}
