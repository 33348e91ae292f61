//! The address of the client behind a request.
//!
//! Behind an ingress every connection comes from the ingress, so per-client limits (sign-in
//! throttling, anonymous-failure sampling) need the address the ingress saw. That address is in
//! `X-Forwarded-For`, which anyone can also send: it is believed only when the direct peer is
//! one of the configured `trusted_proxies`, and only as far back as the chain of trusted hops
//! goes (each trusted proxy appends the address it saw, so the first untrusted entry from the
//! right is the real client; entries left of it were written by the client and may be forged).

use std::net::{IpAddr, Ipv4Addr, SocketAddr};

use http::HeaderMap;

/// One trusted network: an address and a prefix length (`10.0.0.0/8`, `::1/128`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Net {
    addr: IpAddr,
    prefix: u8,
}

impl Net {
    fn parse(s: &str) -> Result<Net, String> {
        let s = s.trim();
        let (ip, prefix) = match s.split_once('/') {
            Some((ip, p)) => (ip, Some(p)),
            None => (s, None),
        };
        let addr: IpAddr = ip
            .parse()
            .map_err(|_| format!("`{s}` is not an IP address or CIDR (like 10.0.0.0/8)"))?;
        let addr = addr.to_canonical();
        let max = if addr.is_ipv4() { 32 } else { 128 };
        let prefix = match prefix {
            None => max,
            Some(p) => match p.parse::<u8>() {
                Ok(n) if n <= max => n,
                _ => return Err(format!("`{s}`: the prefix length must be 0-{max}")),
            },
        };
        Ok(Net { addr, prefix })
    }

    fn contains(&self, ip: IpAddr) -> bool {
        match (self.addr, ip.to_canonical()) {
            (IpAddr::V4(net), IpAddr::V4(ip)) => {
                let mask = u32::MAX
                    .checked_shl(32 - u32::from(self.prefix))
                    .unwrap_or(0);
                u32::from(net) & mask == u32::from(ip) & mask
            }
            (IpAddr::V6(net), IpAddr::V6(ip)) => {
                let mask = u128::MAX
                    .checked_shl(128 - u32::from(self.prefix))
                    .unwrap_or(0);
                u128::from(net) & mask == u128::from(ip) & mask
            }
            _ => false,
        }
    }
}

/// The config's `trusted_proxies`: addresses or CIDRs whose `X-Forwarded-For` is believed.
/// Parsed (and so validated) when the config loads; accepts a TOML list or, for the
/// `FAIRGATE_TRUSTED_PROXIES` variable, one comma-separated string.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TrustedProxies {
    nets: Vec<Net>,
}

impl TrustedProxies {
    /// Parses each entry; the error names the bad one.
    pub fn parse<S: AsRef<str>>(entries: &[S]) -> Result<TrustedProxies, String> {
        let nets = entries
            .iter()
            .map(|e| e.as_ref().trim())
            .filter(|e| !e.is_empty())
            .map(Net::parse)
            .collect::<Result<Vec<_>, _>>()?;
        Ok(TrustedProxies { nets })
    }

    pub fn is_empty(&self) -> bool {
        self.nets.is_empty()
    }

    pub fn contains(&self, ip: IpAddr) -> bool {
        self.nets.iter().any(|n| n.contains(ip))
    }
}

impl<'de> serde::Deserialize<'de> for TrustedProxies {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(serde::Deserialize)]
        #[serde(untagged)]
        enum Raw {
            List(Vec<String>),
            Csv(String),
        }
        let entries = match Raw::deserialize(d)? {
            Raw::List(v) => v,
            Raw::Csv(s) => s.split(',').map(str::to_owned).collect(),
        };
        TrustedProxies::parse(&entries).map_err(serde::de::Error::custom)
    }
}

/// The address when the connection's peer is unknown (a router called without a socket, as
/// in tests): loopback, so per-client limits still apply to one well-known key.
pub const UNKNOWN_PEER: IpAddr = IpAddr::V4(Ipv4Addr::LOCALHOST);

/// The client's address: the peer's, or, when the peer is a trusted proxy, the right-most
/// `X-Forwarded-For` entry that is not itself a trusted proxy. A malformed header is ignored
/// as a whole (the peer is answered), since a half-read chain could name anyone.
pub fn client_addr(
    headers: &HeaderMap,
    peer: Option<SocketAddr>,
    trusted: &TrustedProxies,
) -> IpAddr {
    let peer = peer.map_or(UNKNOWN_PEER, |p| p.ip().to_canonical());
    if trusted.is_empty() || !trusted.contains(peer) {
        return peer;
    }
    let mut hops = Vec::new();
    for value in headers.get_all("x-forwarded-for") {
        let Ok(text) = value.to_str() else {
            return peer;
        };
        for entry in text.split(',') {
            match parse_hop(entry) {
                Some(ip) => hops.push(ip),
                None => return peer,
            }
        }
    }
    // Every hop trusted: the left-most is as far as anyone can see.
    let mut found = peer;
    for ip in hops.into_iter().rev() {
        found = ip;
        if !trusted.contains(ip) {
            break;
        }
    }
    found
}

/// One `X-Forwarded-For` entry: `1.2.3.4`, `1.2.3.4:567`, `::1`, `[::1]` or `[::1]:567`.
fn parse_hop(entry: &str) -> Option<IpAddr> {
    let e = entry.trim();
    if let Ok(ip) = e.parse::<IpAddr>() {
        return Some(ip.to_canonical());
    }
    if let Ok(sa) = e.parse::<SocketAddr>() {
        return Some(sa.ip().to_canonical());
    }
    let inner = e.strip_prefix('[')?.strip_suffix(']')?;
    inner.parse::<IpAddr>().ok().map(|ip| ip.to_canonical())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn trusted(list: &[&str]) -> TrustedProxies {
        TrustedProxies::parse(list).unwrap()
    }

    fn xff(values: &[&str]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for v in values {
            h.append("x-forwarded-for", v.parse().unwrap());
        }
        h
    }

    fn peer(s: &str) -> Option<SocketAddr> {
        Some(s.parse().unwrap())
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn parses_addresses_and_cidrs() {
        let t = trusted(&["10.0.0.0/8", "192.168.1.7", "fd00::/8", "::1"]);
        assert!(t.contains(ip("10.200.3.4")));
        assert!(!t.contains(ip("11.0.0.1")));
        assert!(t.contains(ip("192.168.1.7")));
        assert!(!t.contains(ip("192.168.1.8")));
        assert!(t.contains(ip("fd12::5")));
        assert!(t.contains(ip("::1")));
        assert!(!t.contains(ip("fe80::1")));
        // An IPv4 peer seen on a dual-stack socket.
        assert!(t.contains(ip("::ffff:10.1.2.3")));
        let all = trusted(&["0.0.0.0/0"]);
        assert!(all.contains(ip("8.8.8.8")));
        assert!(!all.contains(ip("::2")));
    }

    #[test]
    fn rejects_bad_entries_naming_them() {
        for bad in ["10.0.0.0/33", "ten", "10.0.0.0/x", "::/129", "1.2.3.4/"] {
            let e = TrustedProxies::parse(&[bad]).unwrap_err();
            assert!(e.contains(bad), "{e}");
        }
    }

    #[test]
    fn untrusted_peer_ignores_forwarded_for() {
        let t = trusted(&["10.0.0.1"]);
        let h = xff(&["1.2.3.4"]);
        assert_eq!(client_addr(&h, peer("9.9.9.9:5000"), &t), ip("9.9.9.9"));
        // No trusted proxies at all: never believed.
        let none = TrustedProxies::default();
        assert_eq!(
            client_addr(&h, peer("10.0.0.1:5000"), &none),
            ip("10.0.0.1")
        );
    }

    #[test]
    fn trusted_peer_walks_from_the_right() {
        let t = trusted(&["10.0.0.0/8"]);
        // Client forged the first entry; the ingress appended the real address.
        let h = xff(&["6.6.6.6, 1.2.3.4, 10.0.0.7"]);
        assert_eq!(client_addr(&h, peer("10.0.0.1:80"), &t), ip("1.2.3.4"));
        // Several header lines form one list, in order.
        let h = xff(&["6.6.6.6", "1.2.3.4:5555", "10.0.0.7"]);
        assert_eq!(client_addr(&h, peer("10.0.0.1:80"), &t), ip("1.2.3.4"));
        let h = xff(&["[2001:db8::1]:443"]);
        assert_eq!(client_addr(&h, peer("10.0.0.1:80"), &t), ip("2001:db8::1"));
        // All hops trusted: the left-most.
        let h = xff(&["10.1.1.1, 10.2.2.2"]);
        assert_eq!(client_addr(&h, peer("10.0.0.1:80"), &t), ip("10.1.1.1"));
        // No header: the peer.
        assert_eq!(
            client_addr(&HeaderMap::new(), peer("10.0.0.1:80"), &t),
            ip("10.0.0.1")
        );
    }

    #[test]
    fn malformed_forwarded_for_means_the_peer() {
        let t = trusted(&["10.0.0.0/8"]);
        for bad in ["1.2.3.4, nonsense", "", "1.2.3.4,,", "unknown"] {
            let h = xff(&[bad]);
            assert_eq!(
                client_addr(&h, peer("10.0.0.1:80"), &t),
                ip("10.0.0.1"),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn missing_peer_is_loopback() {
        let t = TrustedProxies::default();
        assert_eq!(client_addr(&xff(&["1.2.3.4"]), None, &t), UNKNOWN_PEER);
        // ... and loopback may be configured as a trusted proxy.
        let t = trusted(&["127.0.0.1"]);
        assert_eq!(client_addr(&xff(&["1.2.3.4"]), None, &t), ip("1.2.3.4"));
    }

    #[test]
    fn deserializes_list_or_comma_string() {
        #[derive(serde::Deserialize)]
        struct C {
            t: TrustedProxies,
        }
        let c: C = toml::from_str("t = [\"10.0.0.0/8\", \"::1\"]").unwrap();
        assert!(c.t.contains(ip("10.3.3.3")));
        let c: C = toml::from_str("t = \"10.0.0.0/8, 192.168.0.1\"").unwrap();
        assert!(c.t.contains(ip("192.168.0.1")));
        assert!(toml::from_str::<C>("t = [\"bogus\"]").is_err());
    }
}
