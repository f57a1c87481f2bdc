//! Who is announcing: the holder a peer id is bound to, a report is counted for, and a ban
//! is set on. With `--auth`, the token (its entry in the permissions file); in open mode,
//! the request's source address, normalised: an IPv4-mapped IPv6 address is its IPv4
//! address, and an IPv6 address stands for its /64 (one host or one LAN picks any address
//! of its /64 at will, so a finer grain would let one holder pose as many).

use std::fmt;
use std::net::{IpAddr, Ipv6Addr};
use std::sync::Arc;

/// The holder behind an announce. Cheap to clone (a token's name is shared).
#[derive(Clone, Debug)]
pub(super) enum Identity {
    /// A token of the permissions file: its name for messages, the start of its digest to
    /// tell apart two entries that share a name.
    Token { name: Arc<str>, key: [u8; 8] },
    /// A source address in open mode (see [`network`]).
    Net(IpAddr),
}

impl PartialEq for Identity {
    fn eq(&self, other: &Identity) -> bool {
        match (self, other) {
            (Identity::Token { key: a, .. }, Identity::Token { key: b, .. }) => a == b,
            (Identity::Net(a), Identity::Net(b)) => a == b,
            _ => false,
        }
    }
}

impl Eq for Identity {}

impl std::hash::Hash for Identity {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        match self {
            Identity::Token { key, .. } => (0u8, key).hash(state),
            Identity::Net(ip) => (1u8, ip).hash(state),
        }
    }
}

impl Identity {
    /// A stable text for the identity, as the Redis-backed swarms keep a peer id's holder
    /// (`t:` and the token's digest prefix, or `n:` and the network).
    pub(super) fn key_text(&self) -> String {
        match self {
            Identity::Token { key, .. } => format!("t:{}", hex::encode(key)),
            Identity::Net(ip) => format!("n:{ip}"),
        }
    }

    /// The identity of an open-mode announce from `ip`.
    pub(super) fn of_addr(ip: IpAddr) -> Identity {
        Identity::Net(network(ip))
    }
}

impl fmt::Display for Identity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Identity::Token { name, .. } => write!(f, "token {name:?}"),
            Identity::Net(IpAddr::V4(ip)) => write!(f, "address {ip}"),
            Identity::Net(IpAddr::V6(ip)) => write!(f, "network {ip}/64"),
        }
    }
}

/// The network an address stands for: an IPv4 address (mapped forms unwrapped) as itself,
/// an IPv6 address as its /64 (the rest zeroed).
pub(super) fn network(ip: IpAddr) -> IpAddr {
    match ip.to_canonical() {
        IpAddr::V4(v4) => IpAddr::V4(v4),
        IpAddr::V6(v6) => {
            let s = v6.segments();
            IpAddr::V6(Ipv6Addr::new(s[0], s[1], s[2], s[3], 0, 0, 0, 0))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(text: &str) -> IpAddr {
        text.parse().unwrap()
    }

    #[test]
    fn addresses_are_normalised_to_what_one_holder_controls() {
        assert_eq!(network(ip("192.0.2.7")), ip("192.0.2.7"));
        assert_eq!(network(ip("::ffff:192.0.2.7")), ip("192.0.2.7"));
        assert_eq!(network(ip("2001:db8:1:2:3:4:5:6")), ip("2001:db8:1:2::"));
        assert_eq!(
            Identity::of_addr(ip("2001:db8:1:2::1")),
            Identity::of_addr(ip("2001:db8:1:2:ffff::9")),
            "one /64 is one holder"
        );
        assert_ne!(
            Identity::of_addr(ip("2001:db8:1:2::1")),
            Identity::of_addr(ip("2001:db8:1:3::1"))
        );
        assert_eq!(
            Identity::of_addr(ip("::ffff:10.0.0.1")),
            Identity::of_addr(ip("10.0.0.1"))
        );
        assert_ne!(
            Identity::of_addr(ip("10.0.0.1")),
            Identity::of_addr(ip("10.0.0.2"))
        );
        assert_eq!(
            Identity::of_addr(ip("2001:db8::1")).to_string(),
            "network 2001:db8::/64"
        );
    }

    #[test]
    fn tokens_are_told_apart_by_their_digest_not_their_name() {
        let token = |name: &str, key| Identity::Token {
            name: name.into(),
            key: [key; 8],
        };
        assert_eq!(token("a", 1), token("renamed", 1));
        assert_ne!(token("a", 1), token("a", 2));
        assert_ne!(token("a", 1), Identity::of_addr(ip("10.0.0.1")));
        assert_eq!(token("ci", 1).to_string(), "token \"ci\"");
    }
}
